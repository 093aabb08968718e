"""Each node's copy of the moderation state (issue #16 item 4): bans, mutes and slow-mode
delays are read from the node's own copy, not from Redis on every event, and a change made on
one node holds on the other as soon as the REST call that made it returned.

Two real plugbus nodes on one real redis-server; what Redis was asked is read from its own
``INFO commandstats``.
"""

from __future__ import annotations

import asyncio
import math
import time

from conftest import refused_connect, wait_disconnected
from test_errors import assert_error_shape
from test_moderation_redis import nodes, rest, send, user  # noqa: F401 (nodes: a fixture)


async def redis_calls(redis_url: str, *commands: str) -> dict[str, int]:
    """How often Redis ran each of ``commands`` so far."""
    from redis import asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in commands}


async def warm(client, room: str) -> None:
    """Send until the node's copy holds the sender's state: the copy fills only once the node
    follows the history feed, which its first ``XREAD`` reply starts."""
    for i in range(3):
        assert (await send(client, room, f"warm-up {i}"))["ok"]
        await asyncio.sleep(0.05)


async def test_a_warm_node_reads_no_moderation_state_from_redis_per_event(
    nodes,  # noqa: F811
    connect,
    redis_server,
):
    a, _ = nodes({"slow_mode": {"rooms": {"other": 5}}})
    ada_a = await user(connect, a, "ada", "r")
    await warm(ada_a, "r")
    before = await redis_calls(redis_server.url, "mget", "hget", "get", "evalsha")
    started = time.monotonic()
    for i in range(40):
        assert (await send(ada_a, "r", f"m{i}"))["ok"]
    # the nodes' own periodic reads (heartbeat checks, an MGET a second each) meanwhile
    periodic = 2 + 2 * math.ceil(time.monotonic() - started)
    after = await redis_calls(redis_server.url, "mget", "hget", "get", "evalsha")
    appends = after["evalsha"] - before["evalsha"]
    # the events themselves still went through Redis: one append each
    assert appends >= 40, (before, after)
    # Without the copy: two MGETs (ban, mute) and one HGET (the room's delay) per message,
    # 80 and 40 here. What is left is the nodes' periodic reads and the append script's own
    # HGET of the clock (Redis counts a script's commands).
    assert after["mget"] - before["mget"] <= min(periodic, 20), (before, after)
    assert after["hget"] - before["hget"] - appends <= min(periodic, 20), (before, after)
    assert after["get"] - before["get"] <= min(periodic, 20), (before, after)


async def test_mutes_and_delays_set_on_one_node_hold_on_the_other_once_the_call_returned(
    nodes,  # noqa: F811
    connect,
):
    a, b = nodes()
    ada_a = await user(connect, a, "ada", "r")
    slow_a = await user(connect, a, "ada")  # her second connection, for the slow rooms
    await warm(ada_a, "r")
    for round in range(5):
        mute = await rest(b, "POST", "/moderation/mutes", json={"kind": "identity", "value": "ada"})
        assert mute.status_code == 201, mute.text
        ack = await send(ada_a, "r", f"muted {round}")  # at once: no wait, no retry
        assert_error_shape(ack["error"], "message_rejected")
        assert ack["error"]["details"]["rule"] == "mute"
        lifted = await rest(b, "DELETE", f"/moderation/mutes/{mute.json()['id']}")
        assert lifted.status_code == 200, lifted.text
        assert (await send(ada_a, "r", f"unmuted {round}"))["ok"]

        # a room of its own per round: her clock in a slow room outlives its delay
        room = f"slow{round}"
        assert (await slow_a.call("join-room", {"room": room}))["ok"] is True
        assert (await send(slow_a, room, "no delay yet"))["ok"]  # node A keeps "none"
        delay = await rest(b, "PUT", f"/moderation/slow-mode/{room}", json={"seconds": 30})
        assert delay.status_code == 200, delay.text
        assert (await send(slow_a, room, "first"))["ok"]
        ack = await send(slow_a, room, "second")
        assert_error_shape(ack["error"], "rate_limited")
        assert ack["error"]["details"]["seconds"] == 30
        delay = await rest(b, "PUT", f"/moderation/slow-mode/{room}", json={"seconds": 0})
        assert delay.status_code == 200, delay.text
        assert (await send(slow_a, room, "free again"))["ok"]


async def test_a_ban_on_one_node_refuses_a_reconnect_on_the_other_at_once(
    nodes,  # noqa: F811
    connect,
):
    a, b = nodes()
    ada_a = await user(connect, a, "ada", "r")
    await warm(ada_a, "r")
    # her state is in node A's copy (her connection's events read it): now ban her on B
    ban = await rest(b, "POST", "/moderation/bans", json={"kind": "identity", "value": "ada"})
    assert ban.status_code == 201, ban.text
    error = await refused_connect(a, auth={"user_id": "ada"})
    assert error["data"]["details"]["rule"] == "ban"
    await wait_disconnected(ada_a)
    lifted = await rest(b, "DELETE", f"/moderation/bans/{ban.json()['id']}")
    assert lifted.status_code == 200, lifted.text
    back = await user(connect, a, "ada", "r")
    assert (await send(back, "r", "back"))["ok"]


async def test_after_a_redis_restart_the_copy_is_rebuilt_and_changes_still_reach_every_node(
    nodes,  # noqa: F811
    connect,
    redis_server,
):
    a, b = nodes()
    ada_a = await user(connect, a, "ada", "r")
    await warm(ada_a, "r")
    redis_server.stop()
    redis_server.start()

    async def passes() -> bool:
        return bool((await send(ada_a, "r", "after the restart")).get("ok"))

    deadline = asyncio.get_running_loop().time() + 15
    while not await passes():
        assert asyncio.get_running_loop().time() < deadline, "node A never recovered"
        await asyncio.sleep(0.1)
    await warm(ada_a, "r")

    async def muted() -> int:
        resp = await rest(b, "POST", "/moderation/mutes", json={"kind": "identity", "value": "ada"})
        return resp.status_code

    deadline = asyncio.get_running_loop().time() + 15
    while await muted() != 201:  # node B's pool may meet the restart on this call
        assert asyncio.get_running_loop().time() < deadline, "node B never recovered"
        await asyncio.sleep(0.1)
    ack = await send(ada_a, "r", "muted now")
    assert_error_shape(ack["error"], "message_rejected")
    assert ack["error"]["details"]["rule"] == "mute"
