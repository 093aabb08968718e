"""The benchmark's stand-alone tools run and print well-formed figures.

``bench/echo_path.py`` (the echoed event's CPU per stage, in process),
``bench/connect_path.py`` (plugbus's CPU per Socket.IO CONNECT, in process) and
``bench/conn_cost.py`` (CPU and memory per websocket connection, against a real
``plugbus serve``) are not part of ``bench/run.sh``, so nothing else runs them. This runs each
on a tiny configuration and checks the shape of what it prints, never the figures' size:
timing does not go into the test suite.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _positive(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_echo_path_reports_every_stage_per_event() -> None:
    out = subprocess.run(
        [sys.executable, "bench/echo_path.py", "--events", "200", "--repeat", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "µs of process CPU per event" in out, out
    stages = {m[1]: float(m[2]) for m in re.finditer(r"(?m)^(\w+)\s+([\d.]+)$", out)}
    for stage in ("door", "dispatch", "parse", "moderate", "handle", "emit"):
        assert _positive(stages.get(stage)), f"no figure for {stage!r} in:\n{out}"


def test_connect_path_reports_the_cpu_of_one_connect() -> None:
    out = subprocess.run(
        [sys.executable, "bench/connect_path.py", "--connections", "300", "--repeat", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    found = re.search(r"^([\d.]+) µs of thread CPU per CONNECT$", out, re.M)
    assert found is not None and _positive(float(found[1])), out


def test_conn_cost_measures_connections_against_a_real_server() -> None:
    out = subprocess.run(
        [sys.executable, "bench/conn_cost.py", "--clients", "30", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["clients"] == 30
    assert result["alive"] == 30 and result["greetings"] == 30
    for key in ("connects_per_s", "handshake_p50_ms", "handshake_p99_ms"):
        assert _positive(result[key]), (key, result)
    # /proc counts CPU in 10 ms ticks: 30 connections may well take less than one
    cpu = result["server_cpu_us_per_connection"]
    assert isinstance(cpu, int | float) and math.isfinite(cpu) and cpu >= 0, result
    assert isinstance(result["rss_per_connection_kb"], int | float)
