"""Moderation shared through Redis: two plugbus nodes on one real redis-server.

Every test starts a fresh redis-server (the ``redis_server`` fixture) and two plugbus processes
with ``server.backend`` set to it, so the moderation store is shared in Redis (``store:
auto``). Clients say who they are with ``auth={"user_id": ...}`` (the extra-rule fixture plugin
stands in for authentication), so bans, mutes, flood buckets and slow-mode clocks follow a user
from node to node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Server, refused_connect, serve_together, start_server, wait_disconnected
from test_errors import assert_error_shape, assert_problem

TESTS = Path(__file__).resolve().parent
PYTHONPATH = {"PYTHONPATH": str(TESTS)}


def node_config(redis_url: str, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """A node on ``redis_url`` with the identity stand-in and these moderation settings."""
    return {
        "server": {"backend": redis_url},
        "plugins": {
            "modules": {"extra_rule": "fixture_plugins.extra_rule"},
            "settings": {"moderation": settings or {}},
        },
    }


@pytest.fixture
def nodes(serve, redis_server) -> Callable[..., tuple[Server, Server]]:
    """``nodes(settings)`` -> two running nodes sharing ``redis_server``."""

    def _start(settings: dict[str, Any] | None = None) -> tuple[Server, Server]:
        config = node_config(redis_server.url, settings)
        a, b = serve_together(serve, config, config, env=PYTHONPATH)
        return a, b

    return _start


async def rest(server: Server, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url) as http:
        return await http.request(method, path, **kwargs)


async def user(connect, server: Server, user_id: str | None, room: str | None = None):
    """A connected client (with identity ``user_id``), in ``room`` if given."""
    auth = {"user_id": user_id} if user_id else None
    client = await connect(server, wait_welcome=True, auth=auth)
    if room is not None:
        assert (await client.call("join-room", {"room": room}))["ok"] is True
    return client


async def send(client, room: str, message: str) -> dict[str, Any]:
    return await client.call("send-message", {"message": message, "roomID": room})  # type: ignore[no-any-return]


async def eventually(check: Callable[[], Any], timeout: float = 10) -> Any:
    """Await ``check()`` until it returns something truthy (or raise its last failure)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await check()
            if result:
                return result
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout} s")
        await asyncio.sleep(0.05)


# -- bans -----------------------------------------------------------------------------------


async def test_ban_on_one_node_holds_on_the_other_and_lifting_there_lifts_everywhere(
    nodes, connect
):
    a, b = nodes()
    ada_b = await user(connect, b, "ada")
    bob_b = await user(connect, b, "bob")
    resp = await rest(
        a,
        "POST",
        "/moderation/bans",
        json={"kind": "identity", "value": "ada", "reason": "spamming"},
    )
    assert resp.status_code == 201, resp.text
    ban = resp.json()
    assert ban["disconnected"] == []  # nothing of ada's on node A ...
    await wait_disconnected(ada_b)  # ... but node B closed her live connection
    assert bob_b.sio.connected

    for node in (b, a):
        error = await refused_connect(node, auth={"user_id": "ada"})
        assert error["message"] == "you are banned (reason: spamming)"
        assert error["data"]["code"] == "connection_denied"
        assert error["data"]["details"]["rule"] == "ban"
        assert error["data"]["details"]["kind"] == "identity"
    assert [x["id"] for x in (await rest(b, "GET", "/moderation/bans")).json()] == [ban["id"]]

    lifted = await rest(b, "DELETE", f"/moderation/bans/{ban['id']}")
    assert lifted.status_code == 200 and lifted.json()["value"] == "ada"
    assert (await user(connect, a, "ada")).sio.connected
    assert (await rest(a, "GET", "/moderation/bans")).json() == []
    assert_problem(await rest(a, "DELETE", f"/moderation/bans/{ban['id']}"), 404, "not_found")

    log = (await rest(a, "GET", "/moderation/log")).json()
    assert [(e["rule"], e["action"], e["target"]) for e in log] == [
        ("ban", "ban", "identity:ada"),
        ("ban", "refuse", "identity:ada"),
        ("ban", "refuse", "identity:ada"),
        ("ban", "unban", "identity:ada"),
    ]


async def test_a_new_ban_replaces_the_old_one_on_every_node(nodes, connect):
    a, b = nodes()
    first = (
        await rest(
            a,
            "POST",
            "/moderation/bans",
            json={"kind": "identity", "value": "ada", "reason": "one"},
        )
    ).json()
    second = (
        await rest(
            b,
            "POST",
            "/moderation/bans",
            json={"kind": "identity", "value": "ada", "reason": "two"},
        )
    ).json()
    for node in (a, b):
        assert [x["id"] for x in (await rest(node, "GET", "/moderation/bans")).json()] == [
            second["id"]
        ]
    assert_problem(await rest(a, "DELETE", f"/moderation/bans/{first['id']}"), 404, "not_found")
    assert "two" in (await refused_connect(a, auth={"user_id": "ada"}))["message"]


# -- mutes ----------------------------------------------------------------------------------


async def test_mute_on_one_node_refuses_sends_on_the_other(nodes, connect):
    a, b = nodes()
    ada_a = await user(connect, a, "ada", "r")
    ada_b = await user(connect, b, "ada", "r")
    bob_b = await user(connect, b, "bob", "r")
    mute = (
        await rest(
            a,
            "POST",
            "/moderation/mutes",
            json={"kind": "identity", "value": "ada", "reason": "calm down"},
        )
    ).json()
    for client in (ada_b, ada_a):
        ack = await send(client, "r", "hello?")
        assert_error_shape(ack["error"], "message_rejected")
        assert ack["error"]["details"]["rule"] == "mute"
        assert "calm down" in ack["error"]["message"]
    assert (await send(bob_b, "r", "bob still talks"))["ok"]
    assert [m["id"] for m in (await rest(b, "GET", "/moderation/mutes")).json()] == [mute["id"]]

    assert (await rest(b, "DELETE", f"/moderation/mutes/{mute['id']}")).status_code == 200
    assert (await send(ada_a, "r", "back on A"))["ok"]
    assert (await send(ada_b, "r", "back on B"))["ok"]


async def test_a_mute_by_connection_ends_with_the_connection(nodes, connect, redis_server):
    a, b = nodes()
    anon = await user(connect, a, None)
    sid = anon.sio.get_sid()
    assert (
        await rest(a, "POST", "/moderation/mutes", json={"kind": "connection", "value": sid})
    ).status_code == 201
    assert [m["value"] for m in (await rest(b, "GET", "/moderation/mutes")).json()] == [sid]
    await anon.sio.disconnect()
    await eventually(lambda: _is_empty(rest(b, "GET", "/moderation/mutes")))


async def _is_empty(response) -> bool:
    return (await response).json() == []


# -- expiry ---------------------------------------------------------------------------------


async def test_sanctions_expire_by_duration_on_every_node(nodes, connect, redis_server):
    a, b = nodes()
    ban = (
        await rest(
            a,
            "POST",
            "/moderation/bans",
            json={"kind": "identity", "value": "ada", "reason": "cool off", "duration": 1},
        )
    ).json()
    mute = (
        await rest(
            b, "POST", "/moderation/mutes", json={"kind": "identity", "value": "bob", "duration": 1}
        )
    ).json()
    assert ban["expires_at"] is not None and mute["expires_at"] is not None
    error = await refused_connect(b, auth={"user_id": "ada"})
    assert "cool off" in error["message"] and "until" in error["message"]
    assert error["data"]["details"]["expires_at"] == ban["expires_at"]
    bob_a = await user(connect, a, "bob")
    assert (await send(bob_a, "r", "hi"))["error"]["details"]["rule"] == "mute"

    # Redis itself lets them lapse: the keys carry a TTL.
    from redis import asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        keys = sorted([k async for k in client.scan_iter("plugbus:moderation:sanction:*")])
        assert keys == [
            "plugbus:moderation:sanction:ban:identity:ada",
            "plugbus:moderation:sanction:mute:identity:bob",
        ]
        for key in keys:
            assert 0 < await client.pttl(key) <= 1000
    finally:
        await client.aclose()

    await asyncio.sleep(1.2)
    assert (await user(connect, b, "ada")).sio.connected
    assert (await send(bob_a, "r", "hi again"))["ok"]
    for node in (a, b):
        assert (await rest(node, "GET", "/moderation/bans")).json() == []
        assert (await rest(node, "GET", "/moderation/mutes")).json() == []
    assert_problem(await rest(b, "DELETE", f"/moderation/bans/{ban['id']}"), 404, "not_found")


# -- flood ----------------------------------------------------------------------------------


async def test_flood_counts_one_identity_across_nodes(nodes, connect):
    a, b = nodes({"flood": {"burst": 3, "rate": 0.5}, "rules": {"flood": {"enabled": True}}})
    ada_a = await user(connect, a, "ada")
    ada_b = await user(connect, b, "ada")
    for client, text in ((ada_a, "one"), (ada_b, "two"), (ada_a, "three")):
        assert (await send(client, "r", text))["ok"], text
    for client in (ada_b, ada_a):
        ack = await send(client, "r", "one too many")
        assert_error_shape(ack["error"], "rate_limited")
        details = ack["error"]["details"]
        assert details["rule"] == "flood" and details["burst"] == 3
        assert 0 < details["retry_after"] <= 2.01
    # Another user, and connections without an identity, have buckets of their own.
    bob_b = await user(connect, b, "bob")
    anon_a, anon_b = await user(connect, a, None), await user(connect, b, None)
    for client in (bob_b, anon_a, anon_b):
        assert (await send(client, "r", "my own bucket"))["ok"]
    # The bucket refills (0.5 a second): ada may send once more after about two seconds.
    await asyncio.sleep(details["retry_after"] + 0.1)
    assert (await send(ada_b, "r", "calm now"))["ok"]
    assert (await send(ada_a, "r", "and again"))["error"]["code"] == "rate_limited"


# -- slow mode ------------------------------------------------------------------------------


async def test_slow_mode_set_on_one_node_applies_on_the_other(nodes, connect):
    a, b = nodes()
    resp = await rest(a, "PUT", "/moderation/slow-mode/slow", json={"seconds": 30})
    assert resp.json() == {"room": "slow", "seconds": 30}
    assert (await rest(b, "GET", "/moderation/slow-mode")).json() == {
        "seconds": 0,
        "rooms": {"slow": 30},
    }
    ada_a = await user(connect, a, "ada", "slow")
    ada_b = await user(connect, b, "ada", "slow")
    bob_b = await user(connect, b, "bob", "slow")
    assert (await send(ada_b, "slow", "one"))["ok"]
    for client in (ada_b, ada_a):  # her clock runs on every node
        ack = await send(client, "slow", "two")
        assert_error_shape(ack["error"], "rate_limited")
        details = ack["error"]["details"]
        assert (
            details["rule"] == "slow_mode"
            and details["room"] == "slow"
            and details["seconds"] == 30
        )
        assert 28 < details["retry_after"] <= 30
    assert (await send(bob_b, "slow", "bob's turn"))["ok"]
    assert (await send(ada_a, "slow-free", "elsewhere"))["ok"]

    assert (
        await rest(b, "PUT", "/moderation/slow-mode/slow", json={"seconds": 0})
    ).status_code == 200
    assert (await send(ada_a, "slow", "three"))["ok"]
    assert (await rest(a, "GET", "/moderation/slow-mode")).json()["rooms"] == {"slow": 0}


async def test_config_seeds_slow_mode_without_overwriting_run_time_changes(
    serve, redis_server, connect
):
    config = node_config(redis_server.url, {"slow_mode": {"rooms": {"lobby": 30, "hall": 5}}})
    a = serve(config, env=PYTHONPATH)
    assert (await rest(a, "GET", "/moderation/slow-mode")).json()["rooms"] == {
        "lobby": 30,
        "hall": 5,
    }
    assert (
        await rest(a, "PUT", "/moderation/slow-mode/lobby", json={"seconds": 2})
    ).status_code == 200
    # A node started later with the same config leaves the run-time change alone.
    b = serve(config, env=PYTHONPATH)
    for node in (a, b):
        assert (await rest(node, "GET", "/moderation/slow-mode")).json()["rooms"] == {
            "lobby": 2,
            "hall": 5,
        }


# -- the log --------------------------------------------------------------------------------


async def test_log_on_one_node_shows_decisions_made_on_the_other(nodes, connect):
    a, b = nodes({"max_length": 10, "log_size": 3})
    ada_a = await user(connect, a, "ada")
    sid = ada_a.sio.get_sid()
    assert (await send(ada_a, "r", "far too long for this"))["error"]["details"][
        "rule"
    ] == "max_length"
    [entry] = (await rest(b, "GET", "/moderation/log")).json()
    assert (entry["rule"], entry["action"], entry["sid"], entry["user"]) == (
        "max_length",
        "refuse",
        sid,
        "ada",
    )
    assert entry["event"] == "send-message" and "the limit is 10" in entry["reason"]
    # Capped at log_size, whichever node adds.
    bob_b = await user(connect, b, "bob")
    for client in (ada_a, bob_b, ada_a):
        await send(client, "r", "much too long again")
    log = (await rest(a, "GET", "/moderation/log")).json()
    assert [e["user"] for e in log] == ["ada", "bob", "ada"]
    assert len((await rest(b, "GET", "/moderation/log", params={"limit": 2})).json()) == 2


# -- store selection ------------------------------------------------------------------------


def test_store_redis_without_a_redis_backend_stops_start_up(tmp_path):
    config = {"plugins": {"settings": {"moderation": {"store": "redis"}}}}
    with pytest.raises(RuntimeError) as info:
        start_server(tmp_path, config)
    message = str(info.value)
    assert "plugins.settings.moderation.store: 'redis' needs a shared backend" in message
    assert "server.backend is 'memory'" in message


async def test_store_memory_keeps_moderation_per_node_even_with_redis(serve, redis_server, connect):
    config = node_config(redis_server.url, {"store": "memory"})
    a, b = serve(config, env=PYTHONPATH), serve(config, env=PYTHONPATH)
    assert (
        await rest(a, "POST", "/moderation/bans", json={"kind": "identity", "value": "ada"})
    ).status_code == 201
    assert (await user(connect, b, "ada")).sio.connected
    assert (await rest(b, "GET", "/moderation/bans")).json() == []
    assert (await refused_connect(a, auth={"user_id": "ada"}))["message"] == "you are banned"


# -- a Redis outage -------------------------------------------------------------------------


async def test_redis_outage_refuses_clearly_and_moderation_works_again_after(
    nodes, connect, redis_server
):
    a, b = nodes()
    ada_a = await user(connect, a, "ada", "r")
    redis_server.stop()
    try:
        ack = await send(ada_a, "r", "anyone there?")
        assert_error_shape(ack["error"], "moderation_unavailable")
        assert "Redis" in ack["error"]["message"]
        body = assert_problem(
            await rest(b, "POST", "/moderation/bans", json={"kind": "identity", "value": "eve"}),
            503,
            "moderation_unavailable",
        )
        assert "try again" in body["detail"]
        assert_problem(await rest(a, "GET", "/moderation/log"), 503, "moderation_unavailable")
        error = await refused_connect(b, auth={"user_id": "cy"})
        assert error["data"]["code"] == "moderation_unavailable"
    finally:
        redis_server.start()

    # redis-py reconnects on the next command: the same nodes work again.
    async def message_passes() -> bool:
        return bool((await send(ada_a, "r", "back")).get("ok"))

    await eventually(message_passes)
    resp = await eventually(
        lambda: _created(
            rest(b, "POST", "/moderation/bans", json={"kind": "identity", "value": "eve"})
        )
    )
    assert resp.json()["value"] == "eve"
    assert "banned" in (await refused_connect(a, auth={"user_id": "eve"}))["message"]
    assert (await user(connect, b, "cy")).sio.connected

    # Both nodes listen for ban notices again: a ban on B closes a live connection on A.
    from redis import asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:

        async def both_subscribed() -> bool:
            [(_, count)] = await client.pubsub_numsub("plugbus:moderation:bans")
            return count == 2

        await eventually(both_subscribed)
    finally:
        await client.aclose()
    dan_a = await user(connect, a, "dan")
    assert (
        await rest(b, "POST", "/moderation/bans", json={"kind": "identity", "value": "dan"})
    ).status_code == 201
    await wait_disconnected(dan_a)


async def _created(response) -> httpx.Response | None:
    resp = await response
    return resp if resp.status_code == 201 else None


# -- one contract, two stores ---------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def store(request, tmp_path):
    """The moderation plugin's ModerationStore (log_size 3) on the store a node would give it:
    in memory, or in a fresh redis-server — in this process."""
    from plugbus.core.backend import Backend
    from plugbus.plugins.moderation import ModerationStore

    if request.param == "memory":
        backend = Backend("memory")
    else:
        backend = Backend(request.getfixturevalue("redis_server").url)
    await backend.start()
    try:
        yield ModerationStore(backend.store("moderation"), 3)
    finally:
        await backend.stop()


def sanction(
    type: str, kind: str, value: str, *, id: str, duration: float | None = None, at: float = 0
):
    from datetime import UTC, datetime, timedelta

    from plugbus.plugins.moderation import Sanction

    now = datetime.now(UTC) + timedelta(seconds=at)
    return Sanction(
        id=id,
        type=type,
        kind=kind,
        value=value,
        created_at=now,
        expires_at=now + timedelta(seconds=duration) if duration else None,
    )


async def test_both_stores_keep_sanctions_alike(store):
    assert await store.add_sanction(sanction("ban", "identity", "ada", id="b1")) is None
    assert await store.add_sanction(sanction("ban", "address", "10.0.0.1", id="b2", at=1)) is None
    assert await store.add_sanction(sanction("mute", "identity", "ada", id="m1")) is None
    replaced = await store.add_sanction(sanction("ban", "identity", "ada", id="b3", at=2))
    assert replaced is not None and replaced.id == "b1"
    assert [s.id for s in await store.sanctions("ban")] == ["b2", "b3"]
    found = await store.find_sanction(
        "ban", [("connection", "x"), ("identity", "ada"), ("address", "10.0.0.1")]
    )
    assert found is not None and found.id == "b3"  # the first target that has one
    assert await store.find_sanction("ban", [("identity", "bob")]) is None
    assert await store.lift_sanction("ban", "b1") is None  # replaced: gone
    assert await store.lift_sanction("mute", "b3") is None  # wrong type
    lifted = await store.lift_sanction("ban", "b3")
    assert lifted is not None and lifted.value == "ada"
    assert await store.lift_sanction("ban", "b3") is None
    assert [s.id for s in await store.sanctions("ban")] == ["b2"]
    assert [s.id for s in await store.sanctions("mute")] == ["m1"]

    await store.add_sanction(sanction("mute", "connection", "sid1", id="m2"))
    await store.add_sanction(sanction("mute", "address", "10.0.0.2", id="m3", duration=0.3))
    assert {s.id for s in await store.sanctions("mute")} == {"m1", "m2", "m3"}
    await store.forget_connection("sid1")
    await asyncio.sleep(0.4)
    assert [s.id for s in await store.sanctions("mute")] == ["m1"]
    assert await store.find_sanction("mute", [("address", "10.0.0.2")]) is None
    assert await store.lift_sanction("mute", "m3") is None


async def test_both_stores_count_buckets_and_slow_mode_alike(store):
    for _ in range(2):
        assert await store.take_token("identity:ada", 2, 10.0) == 0
    wait = await store.take_token("identity:ada", 2, 10.0)
    assert 0 < wait <= 0.1
    assert await store.take_token("identity:bob", 2, 10.0) == 0
    await asyncio.sleep(wait + 0.02)
    assert await store.take_token("identity:ada", 2, 10.0) == 0

    await store.seed_slow_mode({"lobby": 5, "hall": 1})
    await store.set_slow_mode("lobby", 2)
    await store.seed_slow_mode({"lobby": 5, "hall": 1})  # a second node starting: no overwrite
    assert await store.slow_mode() == {"lobby": 2, "hall": 1}
    assert (
        await store.slow_mode_delay("hall") == 1 and await store.slow_mode_delay("nowhere") is None
    )
    assert await store.slow_mode_wait("connection:s1", "lobby", 2) == 0
    await store.message_sent("connection:s1", "lobby")
    assert 1.9 < await store.slow_mode_wait("connection:s1", "lobby", 2) <= 2
    assert await store.slow_mode_wait("connection:s1", "hall", 1) == 0
    assert await store.slow_mode_wait("connection:s2", "lobby", 2) == 0
    await store.forget_connection("s1")
    assert await store.slow_mode_wait("connection:s1", "lobby", 2) == 0


async def test_both_stores_cap_the_log(store):
    from datetime import UTC, datetime

    from plugbus.plugins.moderation import LogEntry

    for i in range(5):
        await store.append_log(
            LogEntry(time=datetime.now(UTC), rule="r", action="refuse", reason=str(i))
        )
    assert [e.reason for e in await store.log(100)] == ["2", "3", "4"]
    assert [e.reason for e in await store.log(2)] == ["3", "4"]
    assert await store.log(0) == []
