"""Issue #18's fault table, each row a bounded test: two real nodes sharing one real
redis-server, subscribers of one room on both nodes, a publisher on node A sending numbered
``send-message`` events with acks while the fault is injected. Every row asserts: no message
that was acknowledged is lost, none arrives twice, each publisher's messages arrive in order,
refusals are quick and say why, and presence converges within its bound."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio
from conftest import (
    RedisServer,
    assert_problem,
    assert_refused,
    deep_merge,
    free_port,
    serve_together,
    settle,
)
from tcp_proxy import TcpProxy

ROOM = "faults"
#: What a publish refused for an unreachable backend may say (moderation reads its store
#: before the message reaches history, and says so in its own words).
UNAVAILABLE = {"backend_unavailable", "store_unavailable", "moderation_unavailable"}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """The suite's redis-server with the persistence docs/deployment.md asks for
    (``appendonly yes``, ``appendfsync everysec``): what Redis holds — history, sessions, the
    offset clock — outlives a Redis restart, as in production."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(free_port(), directory, appendonly=True, appendfsync="everysec")
    server.start()
    yield server
    server.stop()


def config(redis: RedisServer) -> dict[str, Any]:
    return {
        "server": {
            "backend": redis.url,
            "presence_ttl": 3,
            "recovery": {"clients": "all"},
            "drain_seconds": 0.5,
            "shutdown_timeout": 2,
        }
    }


@dataclass
class Subscriber:
    """A plain python-socketio client in ROOM, recording each message with its arrival time."""

    sio: socketio.AsyncClient
    got: list[tuple[float, str]] = field(default_factory=list)

    @classmethod
    async def join(cls, url: str) -> Subscriber:
        sub = cls(socketio.AsyncClient(reconnection=False))

        def on_message(*args: Any) -> None:
            sub.got.append((time.monotonic(), args[0]))

        sub.sio.on("receive-message", on_message)
        await sub.sio.connect(url, transports=["websocket"], auth={"recovery": False})
        ack = await sub.sio.call("join-room", {"room": ROOM}, timeout=5)
        assert ack["ok"] is True, ack
        return sub

    def bodies(self) -> list[str]:
        return [body for _, body in self.got]


@dataclass
class Publisher:
    """Numbered ``send-message`` events with acks, one in flight, ~``rate`` per second."""

    sio: socketio.AsyncClient
    prefix: str
    acked: list[tuple[float, str]] = field(default_factory=list)
    refused: list[tuple[float, str, str, float]] = field(default_factory=list)

    @classmethod
    async def start(cls, url: str, prefix: str) -> Publisher:
        pub = cls(socketio.AsyncClient(reconnection=False), prefix)
        await pub.sio.connect(url, transports=["websocket"], auth={"recovery": False})
        assert (await pub.sio.call("join-room", {"room": ROOM}, timeout=5))["ok"] is True
        return pub

    async def run(self, stop: asyncio.Event, rate: float = 100) -> None:
        n = 0
        while not stop.is_set():
            body = f"{self.prefix}{n:05d}"
            n += 1
            sent = time.monotonic()
            ack = await self.sio.call("send-message", {"message": body, "roomID": ROOM}, timeout=10)
            took = time.monotonic() - sent
            if ack.get("ok"):
                self.acked.append((time.monotonic(), body))
            else:
                self.refused.append((sent, body, ack["error"]["code"], took))
            await asyncio.sleep(1 / rate)

    def acked_bodies(self) -> list[str]:
        return [body for _, body in self.acked]


async def eventually(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def assert_nothing_acked_lost(sub: Subscriber, pub: Publisher, where: str) -> None:
    """Every acked message arrived once, in the publisher's order; a refused one at most
    once (a publish refused for want of an answer may still have been stored)."""
    mine = [b for b in sub.bodies() if b.startswith(pub.prefix)]
    assert len(mine) == len(set(mine)), f"{where}: duplicates {len(mine) - len(set(mine))}"
    assert mine == sorted(mine), f"{where}: out of order"
    lost = set(pub.acked_bodies()) - set(mine)
    assert not lost, f"{where}: {len(lost)} acked messages lost, e.g. {sorted(lost)[:5]}"
    refused = {b for _, b, _, _ in pub.refused}
    assert set(mine) <= set(pub.acked_bodies()) | refused


@contextlib.asynccontextmanager
async def traffic(a_url: str, subscribers: list[Subscriber]) -> Any:
    pub = await Publisher.start(a_url, "s")
    stop = asyncio.Event()
    task = asyncio.create_task(pub.run(stop))
    try:
        yield pub
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        # everything acked reaches everyone, then nothing more follows
        total = len(pub.acked)
        for sub in subscribers:
            await eventually(
                lambda s=sub: set(pub.acked_bodies()) <= set(s.bodies()),
                10,
                f"acked messages missing: {len(set(pub.acked_bodies()) - set(sub.bodies()))}",
            )
        await asyncio.sleep(0.3)
        assert total > 0
        await pub.sio.disconnect()


async def redis_fault_row(a: Any, b: Any, fault: Any) -> tuple[Publisher, list[Subscriber], float]:
    """Run traffic through ``fault()`` (returns when Redis is back); check the row's
    invariants; return the publisher, the subscribers and when Redis was back."""
    on_a, on_b = await Subscriber.join(a.url), await Subscriber.join(b.url)
    async with traffic(a.url, [on_a, on_b]) as pub:
        await eventually(lambda: len(on_b.got) >= 20, 10, "no traffic before the fault")
        back = await fault()
        # delivery resumes within 1 s of Redis's return: something acked after it reaches B
        await eventually(
            lambda: any(t >= back for t, _ in pub.acked), 5, "no publish acked after the fault"
        )
        first_after = min(body for t, body in pub.acked if t >= back)
        await eventually(lambda: first_after in on_b.bodies(), 5, "not delivered on B")
        arrived = next(t for t, body in on_b.got if body == first_after)
        assert arrived - back < 1.0, f"cross-node delivery resumed {arrived - back:.2f} s late"
        await asyncio.sleep(0.5)
    for sub, where in ((on_a, "node A"), (on_b, "node B")):
        assert_nothing_acked_lost(sub, pub, where)
        await sub.sio.disconnect()
    return pub, [on_a, on_b], back


@pytest.fixture
def two_nodes(serve, redis_server):  # type: ignore[no-untyped-def]
    return tuple(serve_together(serve, config(redis_server), config(redis_server)))


async def test_redis_restarted_loses_nothing_acknowledged(two_nodes, redis_server) -> None:  # type: ignore[no-untyped-def]
    a, b = two_nodes

    async def restart() -> float:
        await asyncio.to_thread(redis_server.stop)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(redis_server.start)
        return time.monotonic()

    pub, _subs, _back = await asyncio.wait_for(redis_fault_row(a, b, restart), 30)
    assert {code for _, _, code, _ in pub.refused} <= UNAVAILABLE


async def test_redis_down_refuses_publishes_at_once_and_loses_nothing(
    two_nodes, redis_server
) -> None:  # type: ignore[no-untyped-def]
    a, b = two_nodes
    async with httpx.AsyncClient(base_url=a.url, timeout=5) as http:

        async def outage() -> float:
            await asyncio.to_thread(redis_server.stop)
            down_at = time.monotonic()
            # REST during the outage: a publish is refused with a 503 problem, and so are
            # presence and room reads (never a 500)
            await asyncio.sleep(0.3)
            resp = await http.post(f"/rooms/{ROOM}/messages", json={"message": "rest"})
            assert resp.status_code == 503, resp.text
            assert resp.json()["code"] in UNAVAILABLE
            for path in (f"/rooms/{ROOM}", "/rooms", f"/rooms/{ROOM}/messages"):
                resp = await http.get(path)
                assert resp.status_code == 503, (path, resp.status_code, resp.text)
            await asyncio.sleep(max(0.0, 3.5 - (time.monotonic() - down_at)))
            await asyncio.to_thread(redis_server.start)
            return time.monotonic()

        pub, _subs, _back = await asyncio.wait_for(redis_fault_row(a, b, outage), 30)
    assert len(pub.refused) >= 10, "publishes were not refused during the outage"
    assert {code for _, _, code, _ in pub.refused} <= UNAVAILABLE
    slowest = max(took for _, _, _, took in pub.refused)
    assert slowest < 1.5, f"a refusal took {slowest:.2f} s"


async def test_with_moderation_in_memory_the_publish_itself_is_refused(serve, redis_server) -> None:  # type: ignore[no-untyped-def]
    """Nothing reads Redis before the message is appended (the issue's 6,001 acked during an
    outage): the append itself refuses, with backend_unavailable, over both doors."""
    local = deep_merge(
        config(redis_server), {"plugins": {"settings": {"moderation": {"store": "memory"}}}}
    )
    a, b = serve_together(serve, local, local)
    async with httpx.AsyncClient(base_url=b.url, timeout=5) as http:

        async def outage() -> float:
            await asyncio.to_thread(redis_server.stop)
            await asyncio.sleep(0.3)
            resp = await http.post(f"/rooms/{ROOM}/messages", json={"message": "rest"})
            assert resp.status_code == 503, resp.text
            assert resp.json()["code"] == "backend_unavailable", resp.text
            await asyncio.sleep(2)
            await asyncio.to_thread(redis_server.start)
            return time.monotonic()

        pub, _subs, _back = await asyncio.wait_for(redis_fault_row(a, b, outage), 30)
    assert len(pub.refused) >= 10, "publishes were not refused during the outage"
    assert {code for _, _, code, _ in pub.refused} == {"backend_unavailable"}
    assert max(took for _, _, _, took in pub.refused) < 1.5


async def test_redis_stalled_acks_wait_at_most_a_second_and_nothing_doubles(
    two_nodes, redis_server
) -> None:  # type: ignore[no-untyped-def]
    a, b = two_nodes
    assert redis_server.proc is not None
    pid = redis_server.proc.pid

    async def stall() -> float:
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(3)
        finally:
            os.kill(pid, signal.SIGCONT)
        return time.monotonic()

    pub, _subs, _back = await asyncio.wait_for(redis_fault_row(a, b, stall), 30)
    assert {code for _, _, code, _ in pub.refused} <= UNAVAILABLE
    slowest = max((took for _, _, _, took in pub.refused), default=0.0)
    assert slowest < 2.5, f"a refusal took {slowest:.2f} s"


async def _node_loss_row(serve, redis_server, stop_b, *, redis_fault: bool = False) -> None:  # type: ignore[no-untyped-def]
    """The official client on node B (through a proxy, as behind a balancer), a plain
    subscriber on B too; B is lost mid-stream; the official client comes back on A and
    recovers every acknowledged message once, in order; B's other connection leaves
    presence within the node heartbeat's bound, and direct messages to it are refused."""
    from jsclient import JsClient

    a, b = serve_together(serve, config(redis_server), config(redis_server))
    proxy = await TcpProxy.start(b.port)
    js = await JsClient.start(proxy.url)
    stay = await Subscriber.join(a.url)
    doomed = await Subscriber.join(b.url)
    doomed_sid = doomed.sio.get_sid()
    try:
        first = await js.connect(transports=["websocket"])
        assert (await js.call("join-room", {"room": ROOM}))["ok"] is True
        async with traffic(a.url, [stay]) as pub:
            await js.wait(lambda m: m["type"] == "event", count=20)
            proxy.upstream = a.port  # the balancer sends it to A from now on
            stopping = stop_b(b)
            if asyncio.iscoroutine(stopping):
                await stopping
            lost_at = time.monotonic()
            await js.wait(lambda m: m["type"] == "connect", count=2, timeout=15)
            await asyncio.sleep(1)
        # presence: B's plain connection is gone from A's view within the node bound
        async with httpx.AsyncClient(base_url=a.url, timeout=5) as http:

            async def converged() -> bool:
                view = (await http.get(f"/rooms/{ROOM}")).json()
                return doomed_sid not in {m["sid"] for m in view["members"]}

            await eventually(converged, max(0.0, lost_at + 6 - time.monotonic()), "presence")
            assert time.monotonic() - lost_at < 6
        sender = await Publisher.start(a.url, "d")
        direct = await sender.sio.call("send-direct", {"to": doomed_sid, "message": "x"})
        assert direct["error"]["code"] == "not_found", direct
        await sender.sio.disconnect()
        again = [line for line in js.lines if line["type"] == "connect"][1]
        assert again["recovered"] is True and again["sid"] == first["sid"], again
        got = [args[0] for args in js.events("receive-message")]
        mine = [body for body in got if body.startswith("s")]
        assert len(mine) == len(set(mine)), "duplicates"
        assert mine == sorted(mine), "out of order"
        lost = set(pub.acked_bodies()) - set(mine)
        assert not lost, f"{len(lost)} acked messages lost, e.g. {sorted(lost)[:5]}"
        offsets = [
            tuple(int(p) for p in args[-1].split("-")) for args in js.events("receive-message")
        ]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
        assert_nothing_acked_lost(stay, pub, "node A")
        if redis_fault:  # refused while Redis was away, and said why
            assert {code for _, _, code, _ in pub.refused} <= UNAVAILABLE, pub.refused[:3]
        else:
            assert not pub.refused, pub.refused[:3]
    finally:
        await js.close()
        await proxy.close()
        for sub in (stay, doomed):
            with contextlib.suppress(Exception):
                await sub.sio.disconnect()


async def test_node_killed_loses_nothing_acknowledged(serve, redis_server) -> None:  # type: ignore[no-untyped-def]
    def kill(b: Any) -> None:
        b.proc.kill()

    await asyncio.wait_for(_node_loss_row(serve, redis_server, kill), 30)


async def test_redis_restarted_then_a_node_killed_while_clients_publish(
    serve, redis_server
) -> None:  # type: ignore[no-untyped-def]
    """Issue #15's reliability fault: Redis restarts mid-stream, and then one of the two nodes
    is killed, while the publisher keeps going — every acknowledged message still reaches the
    subscriber on the survivor and the official client that moves to it, once and in order."""

    async def restart_redis_then_kill(b: Any) -> None:
        await asyncio.to_thread(redis_server.stop)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(redis_server.start)
        await asyncio.sleep(0.5)  # traffic flows through the new Redis for a moment
        b.proc.kill()

    await asyncio.wait_for(
        _node_loss_row(serve, redis_server, restart_redis_then_kill, redis_fault=True), 40
    )


async def test_node_stopped_loses_nothing_acknowledged(serve, redis_server) -> None:  # type: ignore[no-untyped-def]
    def term(b: Any) -> None:
        b.proc.send_signal(signal.SIGTERM)

    await asyncio.wait_for(_node_loss_row(serve, redis_server, term), 30)


def test_a_silent_redis_stops_start_up_quickly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A listener that accepts and never answers (a stalled or firewalled Redis): start-up
    fails within a few seconds with the URL (password masked), not after 10."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        path = tmp_path / "config.yaml"
        path.write_text(f"server:\n  backend: redis://:hunter2@127.0.0.1:{port}/0\n")
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "plugbus",
                "serve",
                "--config",
                str(path),
                "--port",
                str(free_port()),
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        took = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert "cannot reach Redis at redis://:***@127.0.0.1" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert took < 5, f"start-up took {took:.1f} s to give up"


def presence_entry(redis: RedisServer, sid: str) -> dict[str, Any] | None:
    """Connection ``sid``'s presence entry, ``{node, user_id, name}``, as Redis holds it."""
    raw = redis.command("GET", f"plugbus:presence:conn:{sid}")
    return json.loads(raw) if raw else None


async def test_a_direct_message_to_a_dead_nodes_connection_is_refused_once_its_heartbeat_is_stale(
    serve, redis_server, connect
) -> None:  # type: ignore[no-untyped-def]
    """No survivor cleans up after B here (the claim is the test's), and presence entries
    last 30 s: the refusal comes from B's heartbeat alone, within its 3 s bound, over both
    doors. What was acked before is in the connection's history: its client recovers it."""
    slow_presence = deep_merge(config(redis_server), {"server": {"presence_ttl": 30}})
    a, b = serve_together(serve, slow_presence, slow_presence)
    sender = await connect(a, transports=["websocket"], auth={"recovery": False})
    doomed = await connect(b, transports=["websocket"], auth={"recovery": True})
    sid = doomed.sid
    assert (await sender.call("send-direct", {"to": sid, "message": "alive"}))["ok"] is True
    assert await doomed.wait_for("receive-message") == ["alive"]
    entry = presence_entry(redis_server, sid)
    assert entry is not None
    node_b = entry["node"]
    assert redis_server.command("SET", f"plugbus:presence:reaping:{node_b}", '"test"', "EX", "60")

    b.proc.kill()
    killed = time.monotonic()
    left_ms = int(redis_server.command("PTTL", f"plugbus:presence:alive:{node_b}"))
    assert left_ms > 500, f"B's heartbeat was nearly stale when it was killed ({left_ms} ms)"
    acked: list[str] = []
    n = 0
    while True:  # acked while B's heartbeat is fresh, then refused
        body = f"window {n:03d}"
        n += 1
        ack = await sender.call("send-direct", {"to": sid, "message": body})
        if not ack["ok"]:
            break
        acked.append(body)
        assert time.monotonic() - killed < 6, "still acked 6 s after the node died"
        await asyncio.sleep(0.1)
    stale_after = time.monotonic() - killed
    assert_refused(ack, "not_found")
    assert acked, "not even the first message after the kill was acked"
    # the bound is 3 s (the heartbeat's TTL); the rest is headroom for a loaded machine
    assert stale_after < 4.5, f"refused only {stale_after:.2f} s after the kill"
    async with httpx.AsyncClient(base_url=a.url, timeout=5) as http:
        resp = await http.post(f"/connections/{sid}/messages", json={"message": "rest"})
        assert_problem(resp, 404, "not_found")
    # the heartbeat decided: B's entry is still in presence (nobody reaped it)
    assert presence_entry(redis_server, sid) == entry

    back = await connect(
        a,
        transports=["websocket"],
        auth={"recovery": True, "pid": doomed.pid, "offset": doomed.offset},
    )
    assert back.sid == sid and back.pid == doomed.pid
    assert await back.wait_for("receive-message", len(acked)) == acked
    assert (await sender.call("send-direct", {"to": sid, "message": "back"}))["ok"] is True
    assert await back.wait_for("receive-message", len(acked) + 1) == [*acked, "back"]


async def test_a_dead_nodes_connections_leave_their_rooms_once_with_the_usual_notices(
    serve, redis_server, connect
) -> None:  # type: ignore[no-untyped-def]
    """Three nodes; B is killed with three members of a room the others share: the first
    survivor to notice (one of two) runs each connection's disconnect: user-left for the
    two without recovery at once, for the one with recovery when its window lapses, each
    once, with the room's count after it; presence lists only the survivors' members."""
    room = "lobby"
    cfg = deep_merge(
        config(redis_server),
        {
            "server": {"recovery": {"max_disconnection_s": 2}},
            "plugins": {"settings": {"rooms": {"notify_membership": True}}},
        },
    )
    a, b, c = serve_together(serve, cfg, cfg, cfg)
    plain = {"recovery": False}
    on_a = await connect(a, transports=["websocket"], auth=plain)
    on_c = await connect(c, transports=["websocket"], auth=plain)
    doomed = [
        await connect(b, transports=["websocket"], auth=plain),
        await connect(b, transports=["websocket"], auth=plain),
        await connect(b, transports=["websocket"], auth={"recovery": True}),
    ]
    recovering = doomed[2].sid
    for client in (on_a, on_c, *doomed):
        assert (await client.call("join-room", {"room": room}))["ok"] is True
    await on_a.wait_for("user-joined", 4)
    await on_c.wait_for("user-joined", 3)
    node_b = presence_entry(redis_server, doomed[0].sid)["node"]  # type: ignore[index]

    b.proc.kill()
    killed = time.monotonic()

    async def read_presence_meanwhile() -> None:
        # reads drop members whose entries expired (presence_ttl 3 s, before the clean-up
        # runs): the notices' counts must not depend on that
        async with httpx.AsyncClient(base_url=a.url, timeout=5) as http:
            while True:
                await http.get(f"/rooms/{room}")
                await asyncio.sleep(0.1)

    # each departing connection still counts until its disconnect ran (sorted sid order),
    # as a closing one does; the recovering one's notice waits for its window
    expected: dict[str, int] = {}
    count = 5
    for sid in sorted(d.sid for d in doomed):
        count -= 1
        if sid != recovering:
            expected[sid] = count
    reader = asyncio.create_task(read_presence_meanwhile())
    try:
        for client in (on_a, on_c):
            notices = (await client.wait_for("user-left", 2, timeout=10))[:2]
            assert {n["sid"]: n["count"] for n in notices} == expected, notices
    finally:
        reader.cancel()
    took = time.monotonic() - killed
    # documented: about 4 s (3 s heartbeat TTL, checked every second); headroom for load
    assert took < 8, f"user-left {took:.1f} s after the node died"
    for client in (on_a, on_c):
        notices = await client.wait_for("user-left", 3, timeout=10)
        assert notices[2] == {"room": room, "sid": recovering, "user": None, "count": 2}

    async def done() -> bool:
        nodes = redis_server.command("SMEMBERS", "plugbus:presence:nodes").split()
        return node_b not in nodes

    await eventually(done, 10, "B is still listed as a node")
    await settle(a, on_a)
    await settle(c, on_c)
    for client in (on_a, on_c):  # once each: no second survivor cleaned up after B
        assert len(client.received("user-left")) == 3
    async with httpx.AsyncClient(timeout=5) as http:
        for node in (a, c):
            view = (await http.get(f"{node.url}/rooms/{room}")).json()
            assert {m["sid"] for m in view["members"]} == {on_a.sid, on_c.sid}, view
            assert view["count"] == 2
    assert redis_server.command("EXISTS", f"plugbus:presence:conns-of:{node_b}") == "0"
