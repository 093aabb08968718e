"""The benchmark (bench/, issue 7) runs: a tiny configuration, end to end, well-formed output.

This checks that ``bench/run.sh --smoke`` starts every server, drives every workload with the
load generator and writes a JSON result and a markdown report whose figures are numbers. It
asserts nothing about speed: timing never goes into the test suite.

The Node server needs ``npm ci`` in bench/servers/node (bench/run.sh runs it when node and npm
are there). Without node the benchmark runs with plugbus and the bare baseline only — except
under CI=true, where a missing Node server is an error, never a skip.

The cluster workload (``--only cluster``: one room over two plugbus nodes sharing a real
redis-server, against one node) runs separately, with a few clients for about a second. It needs
``redis-server``; without it the cluster tests are skipped — except under CI=true, where that is
an error.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "bench" / "servers" / "node"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
NODE_INSTALL = "(cd bench/servers/node && npm ci --no-audit --no-fund --loglevel=error)"


def redis_available() -> str | None:
    return (
        None
        if shutil.which("redis-server")
        else "redis-server is not installed (scripts/test.sh installs it)"
    )


def node_available() -> str | None:
    """None when bench/run.sh can run the Node server (installing its deps if need be)."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "socket.io").is_dir() and shutil.which("npm") is None:
        return (
            f"socket.io is not installed in bench/servers/node and npm is missing: {NODE_INSTALL}"
        )
    return None


def test_node_bench_server_is_installable() -> None:
    why = node_available()
    if why is None:
        return
    if IN_CI:
        pytest.fail(f"the benchmark's Node server cannot run under CI: {why}")
    pytest.skip(f"the benchmark's Node server cannot run here: {why}")


def test_redis_server_for_the_cluster_workload_is_installed() -> None:
    why = redis_available()
    if why is None:
        return
    if IN_CI:
        pytest.fail(f"the benchmark's cluster workload cannot run under CI: {why}")
    pytest.skip(f"the benchmark's cluster workload cannot run here: {why}")


def positive(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    servers = ["plugbus", "bare"] + (["node"] if node_available() is None else [])
    # the cluster workload has a module of its own (tests/test_bench_cluster_smoke.py)
    return {"servers": servers, **run_smoke(out, ",".join(servers), "A5,B,C20,D", minutes=4)}


def run_smoke(out: Path, servers: str, only: str, *, minutes: int) -> dict[str, Any]:
    """``bench/run.sh --smoke`` for ``servers`` and workloads ``only``, writing into ``out``:
    its JSON results, markdown report, stderr and logs folder."""
    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "bench" / "run.sh"),
            "--smoke",
            "--servers",
            servers,
            "--only",
            only,
            "--out",
            str(out / "benchmarks.md"),
            "--json",
            str(out / "bench.json"),
            "--logs",
            str(out / "logs"),
            "--max-minutes",
            str(minutes),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=minutes * 60 + 120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, (
        f"bench/run.sh --smoke --only {only} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    )
    return {
        "json": json.loads((out / "bench.json").read_text()),
        "md": (out / "benchmarks.md").read_text(),
        "stderr": proc.stderr,
        "logs": out / "logs",
    }


def test_every_workload_ran_on_every_server(smoke: dict[str, Any]) -> None:
    results = smoke["json"]["results"]
    assert set(results) == {"A5", "B", "C20", "D"}
    for key, per_server in results.items():
        assert set(per_server) == set(smoke["servers"]), key
        for server, r in per_server.items():
            assert "error" not in r, f"{key} {server}: {r.get('error')}"


def test_figures_are_positive_numbers(smoke: dict[str, Any]) -> None:
    results = smoke["json"]["results"]
    for server in smoke["servers"]:
        fan = results["A5"][server]
        sat = fan["saturation"]
        assert positive(sat["deliveries_per_s"]) and positive(sat["deliveries"]), (server, sat)
        assert sat["delivered_frac"] == 1.0 and sat["refused"] == 0, (server, sat)
        # whether a rate is sustained depends on the machine's load: only its shape is checked
        assert isinstance(fan["sustained"]["best_per_s"], int | float), (server, fan["sustained"])
        assert fan["sustained"]["steps"], (server, fan["sustained"])
        for step in fan["sustained"]["steps"]:
            assert positive(step["p99_ms"]) and positive(step["delivered_frac"]), (server, step)
        assert positive(sat["gen_cpu"]) and positive(sat["wall_s"]), (server, sat)

        echo = results["B"][server]
        assert positive(echo["acks_per_s"]) and echo["refused"] == 0, (server, echo)
        assert positive(echo["rtt_p50_ms"]) and positive(echo["rtt_p99_ms"]), (server, echo)

        conn = results["C20"][server]
        assert conn["alive"] == conn["clients"] == 20, (server, conn)
        assert positive(conn["connect_s"]) and positive(conn["rss_before_kb"]), (server, conn)
        assert positive(conn["rss_after_kb"]), (server, conn)
        assert isinstance(conn["rss_per_conn_kb"], int | float), (server, conn)
        assert conn["greetings"] == 20, (server, conn)  # every server greets, as the seed's does

        rest = results["D"][server]
        assert rest["statuses"] == {"200": rest["messages"]}, (server, rest)
        assert rest["delivered_frac"] == 1.0, (server, rest)
        assert positive(rest["delivery_p50_ms"]) and positive(rest["last_p99_ms"]), (server, rest)


def test_report_is_well_formed(smoke: dict[str, Any]) -> None:
    md = smoke["md"]
    assert md.startswith("# plugbus benchmarks\n")
    for needle in (
        "- command: `bench/run.sh --smoke",
        "- machine: ",
        "- versions: ",
        "python-socketio ",
        "- load average (1, 5, 15 min): ",
        "- pinning: ",
        "## A5 ",
        "## B ",
        "## C20 ",
        "## D ",
        "## Issue 7 targets, this run",
    ):
        assert needle in md, needle
    # every table: a header, a separator, and rows with as many cells as the header
    tables: list[list[str]] = []
    current: list[str] = []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    assert len(tables) >= 5
    for t in tables:
        width = t[0].count("|")
        assert set(t[1].replace("|", "")) <= set("-: "), t[1]
        assert len(t) >= 3, t
        for row in t:
            assert row.count("|") == width, row
    for server in smoke["servers"]:
        label = {
            "plugbus": "plugbus (default plugins)",
            "bare": "bare python-socketio",
            "node": "Node socket.io",
        }[server]
        rows = [r for r in md.splitlines() if r.startswith(f"| {label} |")]
        assert len(rows) == 4, (server, rows)  # one per workload table
        assert not any("error" in r for r in rows), rows
