"""Several plugbus nodes sharing rooms and presence through a real Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import httpx
import pytest
from conftest import RedisServer, free_port, serve_together, settle
from tcp_proxy import TcpProxy


def cluster_config(redis: RedisServer, **server) -> dict:
    return {"server": {"backend": redis.url, "presence_ttl": 3, **server}}


@pytest.fixture
def two_nodes(serve, redis_server):
    # Two processes, never two apps in one: state that leaked through a module would pass
    # for state shared through Redis.
    return tuple(serve_together(serve, cluster_config(redis_server), cluster_config(redis_server)))


async def room_view(server, room: str) -> dict:
    async with httpx.AsyncClient(base_url=server.url) as http:
        return (await http.get(f"/rooms/{room}")).json()


async def test_room_messages_cross_nodes_over_socket_and_rest(two_nodes, connect):
    a, b = two_nodes
    on_a = await connect(a, wait_welcome=True)
    on_b = await connect(b, transports=["polling"], wait_welcome=True)
    outsider = await connect(b, wait_welcome=True)
    await on_a.call("join-room", {"room": "shared"})
    await on_b.call("join-room", {"room": "shared"})
    await on_a.call("send-message", {"message": "from A", "roomID": "shared"})
    assert await on_b.wait_for("receive-message") == ["from A"]
    assert await on_a.wait_for("receive-message") == ["from A"]
    async with httpx.AsyncClient(base_url=b.url) as http:
        resp = await http.post("/rooms/shared/messages", json={"message": "REST on B"})
    assert resp.status_code == 200
    assert await on_a.wait_for("receive-message", count=2) == ["from A", "REST on B"]
    # From A, through Redis after "from A"; "REST on B" was delivered on B before B answered.
    await settle(a, outsider)
    assert outsider.received("receive-message") == []


async def test_direct_message_reaches_a_connection_on_the_other_node(two_nodes, connect):
    a, b = two_nodes
    sender = await connect(a, wait_welcome=True)
    target = await connect(b, wait_welcome=True)
    ack = await sender.call("send-direct", {"to": target.sio.get_sid(), "message": "psst"})
    assert ack["ok"] is True, ack
    assert await target.wait_for("receive-message") == ["psst"]
    missing = await sender.call("send-direct", {"to": "no-such-sid", "message": "x"})
    assert missing["error"]["code"] == "not_found"


async def test_a_direct_message_sent_as_soon_as_a_connect_returns_on_another_node_arrives(
    serve, redis_server, connect
):
    """Presence has a connection before its CONNECT ack, so once the client's connect has
    returned on node B, node A finds it. B reaches Redis over a slow link (50 ms each way), so
    a presence write made after the ack would land well after A looked."""
    proxy = await TcpProxy.start(redis_server.port, delay=0.05)
    try:
        slow = {"server": {"backend": f"redis://127.0.0.1:{proxy.port}/0", "presence_ttl": 30}}
        a = await asyncio.to_thread(serve, cluster_config(redis_server, presence_ttl=30))
        b = await asyncio.to_thread(serve, slow)
        sender = await connect(a, transports=["websocket"], wait_welcome=True)
        for n in range(3):
            target = await connect(b, transports=["websocket"])
            ack = await asyncio.wait_for(
                sender.call("send-direct", {"to": target.sio.get_sid(), "message": f"now {n}"}),
                10,
            )
            assert ack["ok"] is True, ack
            assert await target.wait_for("receive-message") == [f"now {n}"]
    finally:
        await proxy.close()


async def test_presence_is_the_same_on_every_node(two_nodes, connect):
    a, b = two_nodes
    x = await connect(a, auth={"user": "xavier"})
    y = await connect(b, auth={"user": "yvonne"})
    await x.call("join-room", {"room": "lobby"})
    await y.call("join-room", {"room": "lobby"})
    view_a, view_b = await room_view(a, "lobby"), await room_view(b, "lobby")
    assert view_a == view_b
    assert view_a["count"] == 2
    assert {m["user_id"] for m in view_a["members"]} == {"xavier", "yvonne"}
    ack = await y.call("room-members", {"room": "lobby"})
    assert ack["data"]["count"] == 2
    await y.call("leave-room", {"room": "lobby"})
    assert (await room_view(a, "lobby"))["count"] == 1


async def test_a_killed_node_drops_out_of_presence(serve, redis_server, connect):
    a, b = serve_together(serve, cluster_config(redis_server), cluster_config(redis_server))
    survivor = await connect(a)
    doomed = await connect(b)
    await survivor.call("join-room", {"room": "crash"})
    await doomed.call("join-room", {"room": "crash"})
    assert (await room_view(a, "crash"))["count"] == 2
    b.kill()  # no goodbye: its entries must expire by themselves
    deadline = time.monotonic() + 10
    while (await room_view(a, "crash"))["count"] != 1:
        assert time.monotonic() < deadline, "the dead node's connection never expired"
        await asyncio.sleep(0.1)
    assert [m["sid"] for m in (await room_view(a, "crash"))["members"]] == [survivor.sio.get_sid()]


async def test_delivery_resumes_after_redis_restarts(two_nodes, redis_server, connect):
    a, b = two_nodes
    on_a = await connect(a, transports=["websocket"])
    on_b = await connect(b, transports=["websocket"])
    await on_a.call("join-room", {"room": "resilient"})
    await on_b.call("join-room", {"room": "resilient"})
    await asyncio.to_thread(redis_server.restart)
    deadline = time.monotonic() + 20
    n = 0
    while "after restart" not in list(on_b.received("receive-message")):
        assert time.monotonic() < deadline, (
            f"nothing crossed nodes after the restart: {on_b.events}"
        )
        n += 1
        await on_a.call("send-message", {"message": "after restart", "roomID": "resilient"})
        await asyncio.sleep(0.2)
    # Presence came back too: each node wrote its state again.
    deadline = time.monotonic() + 10
    while (await room_view(b, "resilient"))["count"] != 2:
        assert time.monotonic() < deadline, "presence did not recover after the Redis restart"
        await asyncio.sleep(0.1)


def test_unreachable_redis_stops_start_up_with_the_url_masked(tmp_path):
    port = free_port()  # nothing listens there
    config = tmp_path / "config.yaml"
    config.write_text(f"server:\n  backend: redis://:hunter2@127.0.0.1:{port}/0\n")
    result = subprocess.run(
        [sys.executable, "-m", "plugbus", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"server.backend: cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


async def test_server_side_operations_by_connection_id_work_from_any_node(two_nodes, connect):
    a, b = two_nodes
    watcher = await connect(a, wait_welcome=True)
    target = await connect(b, wait_welcome=True)
    sid = target.sio.get_sid()
    await watcher.call("join-room", {"room": "ops"})
    async with httpx.AsyncClient(base_url=a.url) as http:
        resp = await http.put(f"/rooms/ops/members/{sid}")  # asked on A, the connection is on B
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"room": "ops", "sid": sid, "joined": True, "rooms": ["ops"]}
        await watcher.call("send-message", {"message": "welcome aboard", "roomID": "ops"})
        assert await target.wait_for("receive-message") == ["welcome aboard"]
        left = await http.delete(f"/rooms/ops/members/{sid}")
        assert left.json()["left"] is True
        missing = await http.put("/rooms/ops/members/nobody-here")
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"
        kicked = await http.post("/moderation/kick", json={"sid": sid})
        assert kicked.status_code == 200, kicked.text
    await target.wait_disconnected()
    assert not target.sio.connected


async def test_a_greeting_changed_on_one_node_greets_on_every_node(two_nodes, connect):
    a, b = two_nodes
    async with httpx.AsyncClient(base_url=a.url) as http:
        resp = await http.put(
            "/welcome",
            json={
                "greeting": "Hello from the cluster, {sid}",
                "room_greetings": {"news": "News room"},
            },
        )
        assert resp.status_code == 200, resp.text
    async with httpx.AsyncClient(base_url=b.url) as http:
        assert (await http.get("/welcome")).json()["greeting"] == "Hello from the cluster, {sid}"
    client = await connect(b)
    assert await client.wait_for("welcome") == [f"Hello from the cluster, {client.sio.get_sid()}"]
    await client.call("join-room", {"room": "news"})
    assert (await client.wait_for("welcome", count=2))[1] == "News room"


async def test_a_burst_crosses_nodes_once_each_and_in_order(two_nodes, connect):
    # Faster than one feed read per event: node B reads the events in batches and writes each
    # recipient several frames at once (websocket) or queues them (polling); each must still
    # get every event once, in the publisher's order. Binary data takes the entry's other
    # form (JSON cannot carry it) in the middle of the burst.
    a, b = two_nodes
    publisher = await connect(a, wait_welcome=True)
    on_b = await connect(b, wait_welcome=True)
    polling_b = await connect(b, transports=["polling"], wait_welcome=True)
    for client in (publisher, on_b, polling_b):
        await client.call("join-room", {"room": "burst"})
    sent: list = [f"m{i}" for i in range(150)]
    sent[70] = b"\x00\x01 binary"
    sent[71] = {"nested": [1, {"é": None}], "n": 3.5}
    for message in sent:  # not waiting for acks: the server takes them as fast as it can
        await publisher.sio.emit("send-message", {"message": message, "roomID": "burst"})
    for client in (on_b, polling_b, publisher):
        assert await client.wait_for("receive-message", count=len(sent), timeout=20) == sent


async def test_health_says_which_redis_reply_parser_is_used(two_nodes, default_server):
    a, _b = two_nodes
    async with httpx.AsyncClient(base_url=a.url) as http:
        backend = (await http.get("/health")).json()["backend"]
    assert backend["kind"] == "redis"
    # hiredis is a dependency: the C parser, not redis-py's Python fallback
    assert backend["reply_parser"] == "hiredis"
    assert "@" not in backend["url"] or "***" in backend["url"]
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        assert (await http.get("/health")).json()["backend"] == {"kind": "memory"}
