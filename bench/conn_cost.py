"""The cost of one websocket connection (issue #16 item 3): server CPU and memory per connection.

Not part of ``run.sh``. Starts ``python -m plugbus serve`` with the benchmark's settings (log
level warning, no entry-point plugins, no rate limit or connection cap; default plugins, so
auth, welcome and presence run on every connect), connects N clients (``--concurrency``
handshakes in flight, 100 as ``run.sh``'s C workloads) with ``bench/loadgen.py``'s raw websocket
client, each timed from TCP connect to its Socket.IO ``40``, and prints one JSON line: server
CPU µs per connection (from /proc, over the connect window), VmRSS per idle connection (1 s
after the last, when the greetings have arrived: ``greetings`` counts them), handshake p50/p99,
and the load average. ``--rounds`` repeats it with a fresh server each time. A warm-up of 20
connections comes first, so first-use costs are not counted.

``--tracemalloc`` runs the server under tracemalloc instead, takes a snapshot before and after
the clients connect (SIGUSR1 to the server) and prints the growth per connection grouped by
traceback (``--frames``): what an idle connection holds. CPU figures are meaningless then.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402

ENV = {
    "PLUGBUS_SERVER__LOG_LEVEL": "warning",
    "PLUGBUS_PLUGINS__ENTRY_POINTS": "false",
    "PLUGBUS_SERVER__LIMITS__EVENTS_PER_SECOND": "0",
    "PLUGBUS_SERVER__LIMITS__MAX_CONNECTIONS": "0",
}


def _serve_traced(port: int, out_dir: str, frames: int) -> None:
    """The server under tracemalloc: each SIGUSR1 dumps the next numbered snapshot."""
    tracemalloc.start(frames)
    count = [0]

    def dump(*_: Any) -> None:
        count[0] += 1
        tracemalloc.take_snapshot().dump(os.path.join(out_dir, f"snap{count[0]}.pickle"))
        Path(out_dir, f"snap{count[0]}.done").touch()

    signal.signal(signal.SIGUSR1, dump)
    from plugbus.api.cli import main

    sys.exit(main(["serve", "--port", str(port)]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(
    port: int, traced: str | None, frames: int, cpu: int | None = None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, **ENV}
    if traced:
        cmd = [sys.executable, __file__, "--serve-traced", str(port), traced, str(frames)]
    else:
        cmd = [sys.executable, "-m", "plugbus", "serve", "--port", str(port)]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


async def _snapshot(pid: int, out_dir: str, n: int) -> tracemalloc.Snapshot:
    os.kill(pid, signal.SIGUSR1)
    done = Path(out_dir, f"snap{n}.done")
    for _ in range(600):
        if done.exists():
            return tracemalloc.Snapshot.load(os.path.join(out_dir, f"snap{n}.pickle"))
        await asyncio.sleep(0.1)
    raise RuntimeError("no snapshot")


def _user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) / loadgen.CLK_TCK, int(fields[12]) / loadgen.CLK_TCK


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _connect_all(
    target: loadgen.Target, n: int, concurrency: int
) -> tuple[list[loadgen.Client], list[float]]:
    """``n`` connected clients, ``concurrency`` at a time, and each one's handshake time (TCP
    connect to its Socket.IO ``40``, as ``Target.client`` waits for it)."""
    sem = asyncio.Semaphore(concurrency)
    clients: list[loadgen.Client] = []
    times: list[float] = []

    async def one() -> None:
        async with sem:
            t = time.perf_counter()
            clients.append(await target.client(timeout=120))
            times.append(time.perf_counter() - t)

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), 600)
    return clients, times


async def _round(args: argparse.Namespace) -> dict[str, Any]:
    port = _free_port()
    traced = tempfile.mkdtemp(prefix="conn-cost-") if args.tracemalloc else None
    proc = _start(port, traced, args.frames, args.pin[0] if args.pin else None)
    try:
        target = loadgen.Target(f"http://127.0.0.1:{port}", "raw")
        # warm-up: first-use imports and caches are not a connection's cost
        warm = await target.clients(20, concurrency=20)
        await asyncio.sleep(0.5)
        loadgen.close_all(warm)
        await asyncio.sleep(0.5)
        before = await _snapshot(proc.pid, traced, 1) if traced else None
        rss0 = loadgen.proc_rss_kb(proc.pid) or 0
        cpu0 = loadgen.proc_cpu(proc.pid) or 0.0
        user0, system0 = _user_system(proc.pid)
        spy = None
        if args.profile:
            spy = subprocess.Popen(
                [
                    shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--native",
                    "-r",
                    "200",
                    "-f",
                    "raw",
                    "-o",
                    args.profile,
                    "-p",
                    str(proc.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(1.0)
        t0 = time.perf_counter()
        clients, handshakes = await _connect_all(target, args.clients, args.concurrency)
        wall = time.perf_counter() - t0
        cpu1 = loadgen.proc_cpu(proc.pid) or 0.0
        user1, system1 = _user_system(proc.pid)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        await asyncio.sleep(1.0)  # greetings delivered, buffers settled
        rss1 = loadgen.proc_rss_kb(proc.pid) or 0
        out: dict[str, Any] = {
            "clients": args.clients,
            "alive": sum(not c.closed for c in clients),
            "greetings": sum(c.events for c in clients),
            "server_cpu_us_per_connection": round((cpu1 - cpu0) / args.clients * 1e6, 1),
            "user_system_us": [
                round((user1 - user0) / args.clients * 1e6, 1),
                round((system1 - system0) / args.clients * 1e6, 1),
            ],
            "rss_per_connection_kb": round((rss1 - rss0) / args.clients, 2),
            "connects_per_s": round(args.clients / wall, 1),
            "handshake_p50_ms": round(_pct(handshakes, 0.50) * 1e3, 1),
            "handshake_p99_ms": round(_pct(handshakes, 0.99) * 1e3, 1),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        }
        if traced and before is not None:
            after = await _snapshot(proc.pid, traced, 2)
            stats = after.compare_to(before, "traceback")
            total = sum(s.size_diff for s in stats)
            out["traced_bytes_per_connection"] = round(total / args.clients, 1)
            out["top"] = [
                {
                    "bytes_per_conn": round(s.size_diff / args.clients, 1),
                    "count_per_conn": round(s.count_diff / args.clients, 2),
                    "where": [
                        f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in s.traceback
                    ][-args.frames :],
                }
                for s in stats[: args.top]
            ]
        loadgen.close_all(clients)
        await asyncio.sleep(0.3)
        return out
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-traced":
        _serve_traced(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--tracemalloc", action="store_true")
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--top", type=int, default=25)
    p.add_argument(
        "--profile",
        metavar="PATH",
        help="py-spy raw stacks (native frames, 200 Hz) of the connect window; needs py-spy",
    )
    p.add_argument(
        "--pin",
        metavar="SERVER,GENERATOR",
        type=lambda v: [int(c) for c in v.split(",")],
        help="pin the server and this generator to these CPUs (as run.sh does: 0,1)",
    )
    args = p.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {args.pin[1]})
    for _ in range(args.rounds):
        print(json.dumps(asyncio.run(_round(args))), flush=True)


if __name__ == "__main__":
    main()
