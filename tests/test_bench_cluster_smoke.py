"""The benchmark's cluster workload (bench/run.sh --smoke --only cluster: two plugbus nodes and
a real redis-server against one node) and the disconnect-storm benchmark run end to end.

A module of its own so that the test run's workers take it beside tests/test_bench_smoke.py
rather than after it (pytest-xdist's loadscope keeps a module on one worker).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_bench_smoke import IN_CI, positive, redis_available, run_smoke

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
    return run_smoke(out, "plugbus", "cluster", minutes=2)


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
