"""What connection state recovery costs (issue 13), in one bounded run.

    .venv/bin/python bench/recovery.py [--quick] [--json PATH]

Prints a markdown report (and writes the raw results as JSON to ``bench/results/``):

* **fan-out and echo, recovery off vs on** — ``bench/loadgen.py`` against a fresh plugbus (memory
  backend) per run, alternating off, on, off, on ... (``--repeat`` runs of each; medians). *Off*: ``server.recovery.enabled: false`` and
  ``server.history.max_messages: 0`` (nothing stored). *On*: recovery for every client
  (``clients: all``, so the generator's clients get an offset with every event) and the default
  history. Fan-out: 1000 clients in one room, saturation deliveries/s; echo: 100 clients, acks/s.
  Server pinned to CPU 0, generator to CPU 1; the generator's own CPU (``gen_cpu``, 1.0 = one
  core) and the load average stand beside each figure, since the machine is shared.
* **memory per room of history** — in process for the memory backend (``tracemalloc`` over
  rooms filled with 100-byte messages), and ``INFO memory`` of a fresh redis-server for Redis
  Streams (the same rooms written through plugbus's append script).
* **reconnect storm** — two plugbus nodes sharing a fresh redis-server; N clients on node A in
  100 rooms, 10,000 messages in 50 *other* rooms' history; node A restarts (SIGINT, sessions go
  to Redis), each client's room gets one message meanwhile (published on node B), and all N
  clients reconnect at once with their ``{pid, offset}``. Reported: time until every client
  has its recovered CONNECT ack and its missed message, Redis commands per client (``INFO
  commandstats`` over the storm), node A's CPU and the storm client's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import run as harness  # noqa: E402  (bench/run.py: servers, redis, pinning, machine facts)

OFF = {
    "PLUGBUS_SERVER__RECOVERY__ENABLED": "false",
    "PLUGBUS_SERVER__HISTORY__MAX_MESSAGES": "0",
}
ON = {"PLUGBUS_SERVER__RECOVERY__CLIENTS": "all"}


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadgen(server: harness.Server, args: list[str], budget: float) -> dict[str, Any]:
    cmd = harness.pin(1) + [
        sys.executable,
        str(BENCH / "loadgen.py"),
        *args,
        "--url",
        server.url,
        "--server-pid",
        str(server.proc.pid),
        "--deadline",
        str(budget),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=budget + 30, cwd=ROOT)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1:] or p.stdout[-300:]}
    result: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return result


def off_vs_on(quick: bool, repeat: int, logdir: Path) -> dict[str, Any]:
    fanout = [
        "fanout",
        "--clients",
        "1000",
        "--duration",
        "3" if quick else "5",
        "--ladder",
        "20000",
        "--refine",
        "0",
        "--step-seconds",
        "1",
    ]
    echo = ["echo", "--clients", "100", "--duration", "3" if quick else "5"]
    out: dict[str, Any] = {"fanout": {"off": [], "on": []}, "echo": {"off": [], "on": []}}
    for name, args in (("fanout", fanout), ("echo", echo)):
        for mode in ("off", "on") * repeat:
            server = harness.start_server(
                "plugbus", 0, logdir, OFF if mode == "off" else ON, f"{name}-{mode}"
            )
            try:
                result = loadgen(server, args, 120)
            finally:
                server.stop()
            result["loadavg"] = harness.loadavg()
            out[name][mode].append(result)
            print(f"  {name} {mode}: {summary(name, result)}", file=sys.stderr)
    return out


def summary(name: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"error {r['error']}"
    if name == "fanout":
        sat = r.get("saturation") or {}
        return f"{sat.get('deliveries_per_s')} deliveries/s, gen_cpu {sat.get('gen_cpu')}"
    return f"{r.get('acks_per_s')} acks/s, gen_cpu {r.get('gen_cpu')}"


# -- memory per room ------------------------------------------------------------------------


def memory_history(rooms: int, per_room: int) -> dict[str, Any]:
    from plugbus.core.config import HistorySettings
    from plugbus.core.history import MemoryHistory

    history = MemoryHistory(HistorySettings(max_messages=per_room, max_age_s=3600))

    async def fill() -> None:
        for i in range(per_room):
            for r in range(rooms):
                text = f"{i:05d} {r:05d} ".ljust(100, "x")  # a string of its own, as real ones
                await history.append("/", "room", f"room-{r}", "receive-message", (text,), None)

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    asyncio.run(fill())
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    total = after - before
    return {
        "rooms": rooms,
        "messages_per_room": per_room,
        "bytes_per_room": round(total / rooms),
        "bytes_per_message": round(total / (rooms * per_room)),
    }


async def _redis_fill(url: str, rooms: int, per_room: int) -> dict[str, Any]:
    from redis import asyncio as aioredis

    from plugbus.core.backend import Backend
    from plugbus.core.config import HistorySettings
    from plugbus.core.history import RedisHistory

    backend = Backend(url)
    await backend.start()
    raw = aioredis.from_url(url, decode_responses=True)
    try:
        before = int((await raw.info("memory"))["used_memory"])
        history = RedisHistory(HistorySettings(max_messages=per_room, max_age_s=3600), backend)
        for i in range(per_room):
            pipe_jobs = [
                history.append(
                    "/",
                    "room",
                    f"room-{r}",
                    "receive-message",
                    (f"{i:05d} {r:05d} ".ljust(100, "x"),),
                    None,
                )
                for r in range(rooms)
            ]
            await asyncio.gather(*pipe_jobs)
        after = int((await raw.info("memory"))["used_memory"])
        one = await raw.memory_usage(history._key("/", "room", "room-0"))
        return {
            "rooms": rooms,
            "messages_per_room": per_room,
            "bytes_per_room": round((after - before) / rooms),
            "bytes_per_message": round((after - before) / (rooms * per_room)),
            "memory_usage_one_stream": one,
        }
    finally:
        await raw.aclose()
        await backend.stop()


def redis_history(rooms: int, per_room: int, logdir: Path) -> dict[str, Any]:
    redis = harness.start_redis(None, logdir)
    try:
        return asyncio.run(_redis_fill(f"redis://127.0.0.1:{redis.port}/0", rooms, per_room))
    finally:
        redis.stop()


# -- reconnect storm --------------------------------------------------------------------------


def start_node(port: int, redis_url: str, logdir: Path, name: str) -> harness.Server:
    env = dict(os.environ)
    env.update(harness.plugbus_env())
    env.update(ON)
    env["PLUGBUS_SERVER__BACKEND"] = redis_url
    log = logdir / f"{name}-{port}.log"
    with log.open("ab") as f:
        proc = subprocess.Popen(
            harness.pin(0) + [sys.executable, "-m", "plugbus", "serve", "--port", str(port)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    return harness.wait_serving(harness.Server(name, port, proc, log))


class StormClient:
    """One raw Engine.IO/Socket.IO client over ``websockets``: just enough for recovery."""

    def __init__(self, room: str) -> None:
        self.room = room
        self.sid: str | None = None
        self.pid: str | None = None
        self.offset: str | None = None
        self.recovered = False
        self.messages: list[str] = []
        self.ws: Any = None
        self.connected = asyncio.Event()
        self.acked: dict[int, asyncio.Future[Any]] = {}
        self.got_message = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None

    async def open(self, port: int, connect: dict[str, Any] | None) -> None:
        import websockets

        self.connected = asyncio.Event()
        self.got_message = asyncio.Event()
        self.ws = await websockets.connect(
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket",
            max_size=None,
            compression=None,
            open_timeout=60,
        )
        handshake = await self.ws.recv()
        assert handshake.startswith("0"), handshake
        await self.ws.send("40" + (json.dumps(connect) if connect else ""))
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                if raw == "2":
                    await self.ws.send("3")
                elif raw.startswith("40"):
                    ack = json.loads(raw[2:])
                    self.recovered = self.pid is not None and ack.get("pid") == self.pid
                    self.sid, self.pid = ack["sid"], ack.get("pid")
                    self.connected.set()
                elif raw.startswith("42["):
                    args = json.loads(raw[2:])
                    if args[0] == "receive-message":
                        self.offset = args[-1]
                        self.messages.append(args[1])
                        self.got_message.set()
                elif raw.startswith("43"):
                    i = raw.index("[")
                    fut = self.acked.pop(int(raw[2:i]), None)
                    if fut is not None and not fut.done():
                        fut.set_result(json.loads(raw[i:]))
        except Exception:
            pass

    async def call(self, n: int, event: str, data: Any) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acked[n] = fut
        await self.ws.send(f"42{n}" + json.dumps([event, data]))
        return await asyncio.wait_for(fut, 30)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()


async def _publish(port: int, items: list[tuple[str, str]]) -> None:
    """Publish (room, text) pairs on a node through one socket, acked in windows of 200."""
    pub = StormClient("-")
    await pub.open(port, {"recovery": False})
    await asyncio.wait_for(pub.connected.wait(), 30)
    n = 0
    for start in range(0, len(items), 200):
        calls = []
        for room, text in items[start : start + 200]:
            n += 1
            calls.append(pub.call(n, "send-message", {"message": text, "roomID": room}))
        await asyncio.gather(*calls)
    await pub.close()


async def _commandstats(url: str) -> dict[str, int]:
    from redis import asyncio as aioredis

    raw = aioredis.from_url(url, decode_responses=True)
    try:
        stats = await raw.info("commandstats")
    finally:
        await raw.aclose()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def _storm(clients: int, noise: int, port_a: int, port_b: int, url: str, restart: Any):
    rooms = [f"c{i % 100}" for i in range(clients)]
    storm = [StormClient(room) for room in rooms]
    for start in range(0, clients, 100):  # connect and join, 100 at a time
        batch = storm[start : start + 100]
        await asyncio.gather(*(c.open(port_a, None) for c in batch))
        await asyncio.gather(*(asyncio.wait_for(c.connected.wait(), 30) for c in batch))
        await asyncio.gather(*(c.call(1, "join-room", {"room": c.room}) for c in batch))
    await _publish(port_b, [(f"noise-{i % 50}", f"noise {i}") for i in range(noise)])
    await _publish(port_b, [(f"c{i}", "before") for i in range(100)])
    await asyncio.gather(*(asyncio.wait_for(c.got_message.wait(), 30) for c in storm))
    assert all(c.offset for c in storm)
    # node A goes down; each client room gets one message meanwhile (on node B)
    stopped = asyncio.create_task(asyncio.to_thread(restart.stop))
    await asyncio.sleep(0.5)
    await _publish(port_b, [(f"c{i}", "missed") for i in range(100)])
    await stopped
    for c in storm:
        c.messages.clear()
        await c.close()
    server_a = await asyncio.to_thread(restart.start)
    before = await _commandstats(url)
    cpu_a0, cpu_me0, t0 = cpu_of(server_a.proc.pid), time.process_time(), time.perf_counter()
    await asyncio.gather(*(c.open(port_a, {"pid": c.pid, "offset": c.offset}) for c in storm))
    await asyncio.gather(
        *(asyncio.wait_for(c.connected.wait(), 60) for c in storm),
        *(asyncio.wait_for(c.got_message.wait(), 60) for c in storm),
    )
    elapsed = time.perf_counter() - t0
    cpu_a, cpu_me = cpu_of(server_a.proc.pid) - cpu_a0, time.process_time() - cpu_me0
    after = await _commandstats(url)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta = {k: v for k, v in delta.items() if v > 0 and k not in ("info",)}
    recovered = sum(c.recovered for c in storm)
    exact = sum(c.messages == ["missed"] for c in storm)
    for c in storm:
        await c.close()
    return server_a, {
        "clients": clients,
        "noise_messages": noise,
        "recovered": recovered,
        "got_exactly_the_missed_message": exact,
        "seconds_until_all_recovered": round(elapsed, 3),
        "redis_commands_per_client": round(sum(delta.values()) / clients, 2),
        "redis_commands": dict(sorted(delta.items(), key=lambda kv: -kv[1])),
        "node_a_cpu_s": round(cpu_a, 3),
        "storm_client_cpu_s": round(cpu_me, 3),
    }


def reconnect_storm(clients: int, noise: int, logdir: Path) -> dict[str, Any]:
    redis = harness.start_redis(0, logdir)
    url = f"redis://127.0.0.1:{redis.port}/0"
    port_a, port_b = harness.free_port(), harness.free_port()
    nodes: dict[str, harness.Server] = {}
    nodes["a"] = start_node(port_a, url, logdir, "storm-a")
    nodes["b"] = start_node(port_b, url, logdir, "storm-b")

    class Restart:
        def stop(self) -> None:
            proc = nodes["a"].proc
            proc.send_signal(signal.SIGINT)
            proc.wait(60)

        def start(self) -> harness.Server:
            nodes["a"] = start_node(port_a, url, logdir, "storm-a")
            return nodes["a"]

    try:
        _server, result = asyncio.run(_storm(clients, noise, port_a, port_b, url, Restart()))
        result["loadavg"] = harness.loadavg()
        return result
    finally:
        for node in nodes.values():
            node.stop()
        redis.stop()


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 1) if values else None


def render(results: dict[str, Any]) -> str:
    lines = [
        f"Measured {results['when']} on {results['machine']['cpu']} "
        f"({results['machine']['cores']} cores, shared), commit {results['commit']}.",
        "",
    ]
    oo = results["off_vs_on"]
    lines += [
        "| workload | recovery | runs | server CPU per unit (median; per run) | throughput "
        "(median; per run) | server CPU (cores) | generator CPU (cores) | load avg (1 min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for name, key, unit, cpu_key in (
        ("fan-out, 1000 clients", "fanout", "deliveries/s", "server_cpu_us_per_delivery"),
        ("echo, 100 clients", "echo", "acks/s", "server_cpu_us_per_ack"),
    ):
        medians = {}
        for mode in ("off", "on"):
            runs = [(r.get("saturation") or {}) if key == "fanout" else r for r in oo[key][mode]]
            vals = [r.get("deliveries_per_s" if key == "fanout" else "acks_per_s") for r in runs]
            cpus = [r.get(cpu_key) for r in runs]
            medians[mode] = (median(cpus), median(vals))
            lines.append(
                f"| {name} | {mode} | {len(runs)} | {median(cpus)} µs "
                f"({', '.join(str(c) for c in cpus)}) | {median(vals)} {unit} "
                f"({', '.join(str(v) for v in vals)}) | "
                f"{', '.join(str(r.get('server_cpu')) for r in runs)} | "
                f"{', '.join(str(r.get('gen_cpu')) for r in runs)} | "
                f"{', '.join(str(r.get('loadavg', ['?'])[0]) for r in oo[key][mode])} |"
            )
        (c_off, t_off), (c_on, t_on) = medians["off"], medians["on"]
        if c_off and c_on and t_off and t_on:
            ratios.append(
                f"{key}: server CPU per unit with recovery on = {c_on / c_off:.1%} of off "
                f"(throughput bound by it: {c_off / c_on:.1%}); measured throughput "
                f"{t_on / t_off:.1%} (medians)."
            )
    lines += ["", *ratios]
    mem, red = results["memory_history"], results["redis_history"]
    lines += [
        "",
        "| history backend | rooms × messages (100-byte text) | bytes per room | bytes per message |",
        "|---|---|---|---|",
        f"| memory | {mem['rooms']} × {mem['messages_per_room']} | {mem['bytes_per_room']} | {mem['bytes_per_message']} |",
        f"| Redis Streams | {red['rooms']} × {red['messages_per_room']} | {red['bytes_per_room']} | {red['bytes_per_message']} (MEMORY USAGE of one stream: {red['memory_usage_one_stream']}) |",
    ]
    st = results["storm"]
    lines += [
        "",
        f"Reconnect storm: {st['clients']} clients recovering at once on a restarted node, "
        f"{st['noise_messages']} messages in other rooms' history: "
        f"**{st['seconds_until_all_recovered']} s** until all recovered "
        f"({st['recovered']} recovered, {st['got_exactly_the_missed_message']} got exactly "
        f"their missed message), **{st['redis_commands_per_client']} Redis commands per "
        f"client** ({', '.join(f'{k} {v}' for k, v in list(st['redis_commands'].items())[:8])}); "
        f"node A CPU {st['node_a_cpu_s']} s, storm client CPU {st['storm_client_cpu_s']} s, "
        f"load avg {st['loadavg'][0]}.",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 s measurements, 500-client storm")
    ap.add_argument("--json", help="results file (default bench/results/recovery-<time>.json)")
    ap.add_argument("--storm-clients", type=int, default=None)
    ap.add_argument(
        "--repeat", type=int, default=4, help="runs of each mode, alternating (default 4)"
    )
    ap.add_argument("--render", help="print the report of an earlier results file and stop")
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return 0
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%M%SZ")
    logdir = BENCH / "results" / f"recovery-{when}"
    logdir.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    results: dict[str, Any] = {"when": when, "machine": harness.machine(), "commit": commit}
    print("off vs on ...", file=sys.stderr)
    results["off_vs_on"] = off_vs_on(args.quick, args.repeat, logdir)
    print("memory per room ...", file=sys.stderr)
    results["memory_history"] = memory_history(1000, 100)
    results["redis_history"] = redis_history(200, 100, logdir)
    print("reconnect storm ...", file=sys.stderr)
    clients = args.storm_clients or (500 if args.quick else 1000)
    results["storm"] = reconnect_storm(clients, 10_000, logdir)
    path = Path(args.json) if args.json else BENCH / "results" / f"recovery-{when}.json"
    path.write_text(json.dumps(results, indent=1))
    print(render(results))
    print(f"\n(raw results: {path})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
