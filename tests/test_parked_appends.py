"""A connection's events overlap while they wait for their own appends (issue #16 item 4).

With a Redis backend, a ``send-message`` waits for Redis to store it before its ack. The
websocket reader starts the connection's next event while every event before it waits for
nothing but its own append (``bus.emit(..., last=True)``, the relay plugin's), so one
publisher's appends go to Redis in batches. What must not change, checked here against two
real nodes and a real redis-server: per publisher, stored order = send order = delivery order
on every node = ack order; a refused append refuses that event only; a join or leave right
after a send keeps its place; moderation counts as before; a connection that closes with events
waiting leaves the node working.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

import pytest
from conftest import RedisServer, serve_together, settle

ROOM_STREAM = "plugbus:history:1:/:r:{}"


def cluster_config(redis: RedisServer, moderation: dict[str, Any] | None = None) -> dict:
    config: dict[str, Any] = {"server": {"backend": redis.url, "presence_ttl": 3}}
    if moderation is not None:
        config["plugins"] = {"settings": {"moderation": moderation}}
    return config


@pytest.fixture
def two_nodes(serve, redis_server):
    config = cluster_config(redis_server)
    return tuple(serve_together(serve, config, config))


def script_calls(redis: RedisServer) -> int:
    """How many append-script calls (EVALSHA or EVAL) Redis ran so far."""
    return sum(
        int(line.split("calls=")[1].split(",")[0])
        for line in redis.command("INFO", "commandstats").splitlines()
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:"))
    )


def stored_messages(redis: RedisServer, room: str) -> list[Any]:
    """The messages of ``room``'s history stream, in stream order (one field of each entry is
    the JSON text of ``[event, message]``)."""
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.url)
    try:
        entries = client.xrange(ROOM_STREAM.format(room))
    finally:
        client.close()
    messages = []
    for _, fields in entries:
        texts = [v for v in fields.values() if v.startswith(b'["')]
        assert len(texts) == 1, fields
        messages.append(json.loads(texts[0])[1])
    return messages


async def send_all(client, items: list[tuple[str, dict]]) -> list[Any]:
    """Emit every ``(event, payload)`` at once (no waiting between them); the acks, in the
    order they arrived, as ``(index, ack)``."""
    acks: list[tuple[int, Any]] = []
    done = asyncio.Event()

    def answer(i: int):
        def callback(*args: Any) -> None:
            acks.append((i, args[0] if args else None))
            if len(acks) == len(items):
                done.set()

        return callback

    for i, (event, payload) in enumerate(items):
        await client.sio.emit(event, payload, callback=answer(i))
    await asyncio.wait_for(done.wait(), 20)
    return acks


async def send_stalled(redis: RedisServer, client, items: list[tuple[str, dict]]) -> list[Any]:
    """:func:`send_all` while Redis is stalled (SIGSTOP) for the first 0.4 s, well within
    the backend's 1 s command timeout: the first append waits in flight, so every event
    after it arrives while the ones before it wait — they overlap, whatever the timing."""
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        answered = asyncio.ensure_future(send_all(client, items))
        await asyncio.sleep(0.4)
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    return await answered


async def test_one_publishers_events_go_in_batches_and_keep_their_order_everywhere(
    two_nodes, redis_server, connect
):
    a, b = two_nodes
    publisher = await connect(a, wait_welcome=True)
    on_a = await connect(a, wait_welcome=True)
    on_b = await connect(b, wait_welcome=True)
    for client in (publisher, on_a, on_b):
        assert (await client.call("join-room", {"room": "r"}))["ok"] is True
    sent = [f"m{i}" for i in range(150)]
    acks = await send_all(
        publisher, [("send-message", {"message": m, "roomID": "r"}) for m in sent]
    )
    assert [i for i, _ in acks] == list(range(len(sent)))  # ack order = send order
    assert all(ack["ok"] is True for _, ack in acks), acks
    for client in (on_a, on_b):  # delivery order on every node = send order
        assert await client.wait_for("receive-message", count=len(sent), timeout=20) == sent
    assert stored_messages(redis_server, "r") == sent  # stored once each, in send order

    # While Redis is stalled (its first append in flight), the publisher's next events start
    # and queue theirs: when it wakes, one script call carries them all (one each before)
    more = [f"n{i}" for i in range(20)]
    before = script_calls(redis_server)
    acks = await send_stalled(
        redis_server, publisher, [("send-message", {"message": m, "roomID": "r"}) for m in more]
    )
    assert [i for i, _ in acks] == list(range(len(more)))
    assert all(ack["ok"] is True for _, ack in acks), acks
    assert script_calls(redis_server) - before <= 2
    for client in (on_a, on_b):
        got = await client.wait_for("receive-message", count=len(sent) + len(more), timeout=20)
        assert got == sent + more
    assert stored_messages(redis_server, "r") == sent + more


async def test_a_refused_append_refuses_that_event_and_the_later_ones_answer_for_themselves(
    two_nodes, redis_server, connect
):
    a, b = two_nodes
    publisher = await connect(a, wait_welcome=True)
    on_b = await connect(b, wait_welcome=True)
    for client in (publisher, on_b):
        assert (await client.call("join-room", {"room": "r"}))["ok"] is True
    # the stream of room "bad" holds a string: Redis refuses an event to it (WRONGTYPE),
    # alone, inside a batch of the others
    redis_server.command("SET", ROOM_STREAM.format("bad"), "not a stream")
    # (one event to each room first: what moderation reads of a room, the node keeps)
    for room in ("r", "bad"):
        await publisher.call("send-message", {"message": "warm", "roomID": room})
    # and an event without a message is refused before any append, behind the others
    items: list[tuple[str, dict]] = []
    for i in range(40):
        if i % 7 == 5:
            items.append(("send-message", {"roomID": "r"}))
        else:
            room = "bad" if i % 7 == 3 else "r"
            items.append(("send-message", {"message": f"m{i}", "roomID": room}))
    acks = await send_stalled(redis_server, publisher, items)
    assert [i for i, _ in acks] == list(range(len(items)))  # every answer in send order
    for i, ack in acks:
        if "message" not in items[i][1]:
            assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload", ack
        elif items[i][1]["roomID"] == "bad":
            assert ack["ok"] is False and ack["error"]["code"] == "backend_unavailable", ack
        else:
            assert ack["ok"] is True, ack
    good = ["warm"] + [p["message"] for _, p in items if p["roomID"] == "r" and "message" in p]
    assert await on_b.wait_for("receive-message", count=len(good), timeout=20) == good
    assert stored_messages(redis_server, "r") == good
    assert redis_server.command("TYPE", ROOM_STREAM.format("bad")).strip() == "string"


async def test_a_failed_batch_refuses_each_of_its_events_and_the_connection_goes_on(
    two_nodes, redis_server, connect
):
    a, b = two_nodes
    publisher = await connect(a, wait_welcome=True)
    on_b = await connect(b, wait_welcome=True)
    for client in (publisher, on_b):
        assert (await client.call("join-room", {"room": "r"}))["ok"] is True
    assert (await publisher.call("send-message", {"message": "warm", "roomID": "r"}))["ok"]
    # Redis stalls past the backend's 1 s command timeout: the append in flight and the ones
    # queued behind it fail together; each event gets its own refusal, in send order
    stalled = [f"s{i}" for i in range(10)]
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        acks = await send_all(
            publisher, [("send-message", {"message": m, "roomID": "r"}) for m in stalled]
        )
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    assert [i for i, _ in acks] == list(range(len(stalled)))
    assert all(ack["error"]["code"] == "backend_unavailable" for _, ack in acks), acks
    after = [f"t{i}" for i in range(10)]
    acks = await send_all(
        publisher, [("send-message", {"message": m, "roomID": "r"}) for m in after]
    )
    assert [i for i, _ in acks] == list(range(len(after)))
    assert all(ack["ok"] is True for _, ack in acks), acks
    # the batch that was on its way may have been stored when Redis woke (a refused publish
    # may still be delivered, issue #18); nothing twice, nothing out of order
    stored = stored_messages(redis_server, "r")
    assert stored[0] == "warm" and stored[-len(after) :] == after
    assert stored[1 : -len(after)] == stalled[: len(stored) - 1 - len(after)]
    assert await on_b.wait_for("receive-message", count=len(stored), timeout=20) == stored


async def test_a_join_or_leave_right_after_a_send_keeps_its_place_for_everyone_else(
    serve, redis_server, connect
):
    config = cluster_config(redis_server)
    config["plugins"] = {"settings": {"rooms": {"notify_membership": True}}}
    a, b = serve_together(serve, config, config)
    publisher = await connect(a, wait_welcome=True)
    watchers = [await connect(a, wait_welcome=True), await connect(b, wait_welcome=True)]
    for client in watchers:
        for room in ("r", "s"):
            assert (await client.call("join-room", {"room": room}))["ok"] is True
    assert (await publisher.call("join-room", {"room": "r"}))["ok"] is True
    items = [
        ("send-message", {"message": "before the join", "roomID": "r"}),
        ("join-room", {"room": "s"}),
        ("send-message", {"message": "in s", "roomID": "s"}),
        ("send-message", {"message": "in r", "roomID": "r"}),
        ("leave-room", {"room": "s"}),
        ("send-message", {"message": "after the leave", "roomID": "r"}),
    ]
    for round_ in range(3):
        for server, watcher in zip((a, b), watchers, strict=True):
            await settle(server, watcher)  # what came before this round has arrived
            watcher.events.clear()
        acks = await (
            send_stalled(redis_server, publisher, items) if round_ else send_all(publisher, items)
        )
        assert [i for i, _ in acks] == list(range(len(items)))
        assert all(ack["ok"] is True for _, ack in acks), acks
        for watcher in watchers:
            await watcher.wait_for("receive-message", count=4, timeout=10)
            await watcher.wait_for("user-left")
            seen = [
                data if name == "receive-message" else name
                for name, data in watcher.events
                if name in ("receive-message", "user-joined", "user-left")
            ]
            assert seen == [
                "before the join",
                "user-joined",
                "in s",
                "in r",
                "user-left",
                "after the leave",
            ], (round_, seen)


async def test_moderation_counts_overlapping_events_as_before(serve, redis_server, connect):
    config = cluster_config(
        redis_server,
        {
            "flood": {"burst": 8, "rate": 0.01},
            "slow_mode": {"rooms": {"slow": 60}},
            "rules": {"flood": {"enabled": True}},
        },
    )
    a, _b = serve_together(serve, config, config)
    flooder = await connect(a, wait_welcome=True)
    slow = await connect(a, wait_welcome=True)
    assert (await flooder.call("join-room", {"room": "r"}))["ok"] is True  # one of its 8
    acks = await send_stalled(
        redis_server,
        flooder,
        [("send-message", {"message": f"f{i}", "roomID": "r"}) for i in range(12)],
    )
    assert [i for i, _ in acks] == list(range(12))
    assert [ack["ok"] for _, ack in acks] == [True] * 7 + [False] * 5, acks
    assert {ack["error"]["code"] for _, ack in acks[7:]} == {"rate_limited"}
    assert (await slow.call("join-room", {"room": "slow"}))["ok"] is True
    acks = await send_stalled(
        redis_server,
        slow,
        [("send-message", {"message": f"s{i}", "roomID": "slow"}) for i in range(3)],
    )
    assert [ack["ok"] for _, ack in acks] == [True, False, False], acks
    assert {ack["error"]["code"] for _, ack in acks[1:]} == {"rate_limited"}


async def test_a_connection_closing_with_events_waiting_leaves_the_node_working(
    two_nodes, redis_server, connect
):
    a, b = two_nodes
    on_b = await connect(b, wait_welcome=True)
    assert (await on_b.call("join-room", {"room": "r"}))["ok"] is True
    for round_ in range(3):
        leaver = await connect(a, wait_welcome=True)
        assert (await leaver.call("join-room", {"room": "r"}))["ok"] is True
        for i in range(60):
            await leaver.sio.emit("send-message", {"message": f"x{round_}-{i}", "roomID": "r"})
        await leaver.sio.disconnect()
    after = await connect(a, wait_welcome=True)
    ack = await after.call("send-message", {"message": "still here", "roomID": "r"})
    assert ack["ok"] is True, ack
    # appended after everything the leavers had started (the line keeps call order): what
    # of theirs was stored is there once each, in send order, and arrived so on node B
    stored = stored_messages(redis_server, "r")
    assert stored[-1] == "still here"
    assert len(stored) == len(set(stored))
    for round_ in range(3):
        mine = [m for m in stored if m.startswith(f"x{round_}-")]
        assert mine == [f"x{round_}-{i}" for i in range(len(mine))]
    assert await on_b.wait_for("receive-message", count=len(stored), timeout=20) == stored
    await settle(b, on_b)
    assert on_b.received("receive-message") == stored


async def test_health_says_whether_events_overlap_and_a_traced_node_keeps_one_at_a_time(
    serve, redis_server, connect
):
    import httpx

    config = cluster_config(redis_server)
    plain = serve(config)
    traced = serve(config, {"PLUGBUS_TRACE_HOOKS": "1"})
    async with httpx.AsyncClient() as http:
        on = (await http.get(f"{plain.url}/health")).json()["backend"]["overlapping_appends"]
        off = (await http.get(f"{traced.url}/health")).json()["backend"]["overlapping_appends"]
    assert on == {"on": True, "unavailable_reason": None}
    assert off["on"] is False and "traced" in off["unavailable_reason"]
    # with hook calls traced, nothing overlaps: one script call per event, as before
    publisher = await connect(traced, wait_welcome=True)
    assert (await publisher.call("send-message", {"message": "warm", "roomID": "r"}))["ok"]
    before = script_calls(redis_server)
    sent = [f"m{i}" for i in range(8)]
    acks = await send_stalled(
        redis_server, publisher, [("send-message", {"message": m, "roomID": "r"}) for m in sent]
    )
    assert [i for i, _ in acks] == list(range(len(sent)))
    assert all(ack["ok"] is True for _, ack in acks), acks
    assert script_calls(redis_server) - before == len(sent)
    assert stored_messages(redis_server, "r") == ["warm", *sent]
