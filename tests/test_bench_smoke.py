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
    cmd = [
        "bash",
        str(ROOT / "bench" / "run.sh"),
        "--smoke",
        "--servers",
        ",".join(servers),
        "--only",
        "A5,B,C20,D",  # the cluster workload: its own run below
        "--out",
        str(out / "benchmarks.md"),
        "--json",
        str(out / "bench.json"),
        "--logs",
        str(out / "logs"),
        "--max-minutes",
        "4",
    ]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=360,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, (
        f"bench/run.sh --smoke exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    )
    return {
        "servers": servers,
        "json": json.loads((out / "bench.json").read_text()),
        "md": (out / "benchmarks.md").read_text(),
        "stderr": proc.stderr,
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


# --------------------------------------------------------------------------------------------
# the cluster workload: two plugbus nodes + redis-server against one node


@pytest.fixture(scope="module")
def cluster_smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    why = redis_available()
    if why is not None:
        if IN_CI:
            pytest.fail(f"the benchmark's cluster workload cannot run under CI: {why}")
        pytest.skip(f"the benchmark's cluster workload cannot run here: {why}")
    out = tmp_path_factory.mktemp("bench-cluster")
    cmd = [
        "bash",
        str(ROOT / "bench" / "run.sh"),
        "--smoke",
        "--only",
        "cluster",
        "--servers",
        "plugbus",
        "--out",
        str(out / "benchmarks.md"),
        "--json",
        str(out / "bench.json"),
        "--logs",
        str(out / "logs"),
        "--max-minutes",
        "2",
    ]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, (
        f"bench/run.sh --smoke --only cluster exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    )
    return {
        "json": json.loads((out / "bench.json").read_text()),
        "md": (out / "benchmarks.md").read_text(),
        "logs": out / "logs",
    }


def test_cluster_workload_ran_on_one_node_and_on_two(cluster_smoke: dict[str, Any]) -> None:
    results = cluster_smoke["json"]["results"]
    assert set(results) == {"cluster4"}
    assert set(results["cluster4"]) == {"single", "cluster"}
    for name, r in results["cluster4"].items():
        assert "error" not in r, f"{name}: {r.get('error')}"
        sat = r["saturation"]
        assert r["clients"] == 4, (name, r)
        assert positive(sat["deliveries_per_s"]) and positive(sat["messages_per_s"]), (name, sat)
        assert positive(sat["p50_ms"]) and positive(sat["p99_ms"]), (name, sat)
        assert positive(sat["server_cpu_us_per_delivery"]) and positive(sat["gen_cpu"]), (name, sat)
        assert sat["delivered_frac"] == 1.0 and sat["refused"] == 0, (name, sat)
        assert r["probe_messages"] >= 1 and r["sustained"]["steps"], (name, r)
    two = results["cluster4"]["cluster"]
    assert two["clients_by_node"] == [2, 2], two
    sat = two["saturation"]
    # deliveries reached clients of both nodes (the publisher is on node A: node B's come through Redis)
    assert all(positive(x) for x in sat["deliveries_per_s_by_node"]), sat
    assert all(positive(x) for x in sat["p99_ms_by_node"]), sat
    assert set(sat["cpu_by_process"]) == {"server", "node B", "redis"}, sat
    assert "clients_by_node" not in results["cluster4"]["single"]


def test_cluster_redis_was_stopped(cluster_smoke: dict[str, Any]) -> None:
    logs = sorted(cluster_smoke["logs"].glob("redis-*.log"))
    assert len(logs) == 1, logs
    assert "ready to exit" in logs[0].read_text(), logs[0].read_text()[
        -500:
    ]  # shut down on our SIGTERM


def test_cluster_report_is_well_formed(cluster_smoke: dict[str, Any]) -> None:
    md = cluster_smoke["md"]
    assert md.startswith("# plugbus benchmarks\n")
    assert "## cluster4 " in md
    assert "Pinning: node A, node B and redis-server on CPU" in md or "Pinning: none" in md
    rows = {
        label: [r for r in md.splitlines() if r.startswith(f"| {label} |")]
        for label in ("one node (memory backend)", "two nodes + Redis")
    }
    for label, found in rows.items():
        assert len(found) == 1 and "error" not in found[0], (label, found)
    header = next(r for r in md.splitlines() if r.startswith("| configuration |"))
    for found in rows.values():
        assert found[0].count("|") == header.count("|"), found
    assert "**Two nodes + Redis ÷ one node:** deliveries/s " in md


def test_disconnect_storm_benchmark_runs_and_prints_its_table() -> None:
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(root / "bench" / "disconnect_storm.py"), "50"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 50 |")]
    assert len(rows) == 1
    plain, indexed = (float(x) for x in rows[0].split("|")[2:4])
    assert plain > 0 and indexed > 0
