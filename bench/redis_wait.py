"""What a publish's Redis write costs with WAIT, and with the append-only file's fsync policies.

Starts a redis-server primary and one replica on free loopback ports (stopped by PID at the
end), then runs plugbus's own history append script (``plugbus.core.history.APPEND_SCRIPT``,
the write behind every acked room message) ``--count`` times in a row from one connection, in
each mode:

* ``plain``: the script alone (what plugbus does);
* ``wait``: the script and ``WAIT 1 <ms>`` pipelined on the same connection (WAIT counts the
  writes of the connection it is sent on), i.e. an ack only once one replica has the event;
* ``aof-everysec`` / ``aof-always``: the script alone, the primary with ``appendonly yes`` and
  that ``appendfsync`` policy.

Prints one line per mode: median and 99th-percentile latency and writes per second.

    .venv/bin/python bench/redis_wait.py [--count 2000] [--wait-ms 100]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from plugbus.core.history import APPEND_SCRIPT, pack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(directory: Path, port: int, *args: str) -> subprocess.Popen[bytes]:
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed"
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(directory)]
        + list(args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("redis-server did not start")


async def measure(port: int, count: int, wait_ms: int | None) -> list[float]:
    client = Redis(port=port)
    script = client.register_script(APPEND_SCRIPT)
    keys = ["bench:clock", "bench:stream", "bench:floor"]
    packed = pack(
        "/",
        "receive-message",
        ("a message of about forty bytes, give or take",),
        "room",
        "room",
        None,
    )
    args = [packed, 1000, 0, "bench:feed"]
    await script(keys=keys, args=args)  # loads the script
    times: list[float] = []
    try:
        for _ in range(count):
            t = time.perf_counter()
            if wait_ms is None:
                await script(keys=keys, args=args)
            else:
                pipe = client.pipeline(transaction=False)
                await script(keys=keys, args=args, client=pipe)
                pipe.execute_command("WAIT", 1, wait_ms)
                _offset, acked = await pipe.execute()
                assert acked >= 1, f"the replica did not acknowledge in time: {_offset!r} {acked!r}"
            times.append(time.perf_counter() - t)
    finally:
        await client.aclose()
    return times


async def replica_online(port: int) -> None:
    """Wait for the replica's first sync (diskless, after repl-diskless-sync-delay: 5 s)."""
    client = Redis(port=port)
    try:
        deadline = time.monotonic() + 30
        while (await client.info("replication")).get("slave0", {}).get("state") != "online":
            assert time.monotonic() < deadline, "the replica did not sync in 30 s"
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()


def report(mode: str, times: list[float]) -> None:
    ordered = sorted(times)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    print(
        f"{mode:14} median {statistics.median(times) * 1e3:6.3f} ms   p99 {p99 * 1e3:6.3f} ms   "
        f"{len(times) / sum(times):8.0f} writes/s"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--wait-ms", type=int, default=100)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            primary = free_port()
            procs.append(start(root / "primary", primary, "--appendonly", "no"))
            replica = free_port()
            procs.append(start(root / "replica", replica, "--replicaof", "127.0.0.1", str(primary)))
            await replica_online(primary)
            report("plain", await measure(primary, opts.count, None))
            report("wait", await measure(primary, opts.count, opts.wait_ms))
            for policy in ("everysec", "always"):
                port = free_port()
                proc = start(
                    root / f"aof-{policy}", port, "--appendonly", "yes", "--appendfsync", policy
                )
                procs.append(proc)
                report(f"aof-{policy}", await measure(port, opts.count, None))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
