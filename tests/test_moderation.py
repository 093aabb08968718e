"""The moderation plugin over real servers and real clients: every rule and action on both
doors, sanctions and slow mode over REST, the log, a plugin's own rule, and start-up errors.

Every test client connects from 127.0.0.1, so a ban by address reaches all of them: the tests
that make one lift it again before they end.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Server, refused_connect, retire, settle, start_server, wait_disconnected
from test_errors import assert_error_shape, assert_problem

from plugbus import ConfigError

TESTS = Path(__file__).resolve().parent
PYTHONPATH = {"PYTHONPATH": str(TESTS)}
EXTRA_RULE = {"extra_rule": "fixture_plugins.extra_rule"}
WORDS = ["darn", "heck"]


def moderation(
    settings: dict[str, Any], *, extra_rule: bool = False, **plugins: Any
) -> dict[str, Any]:
    """A config overlay with these moderation settings (and the extra-rule plugin)."""
    section: dict[str, Any] = {"settings": {"moderation": settings}, **plugins}
    if extra_rule:
        section["modules"] = EXTRA_RULE
    return {"plugins": section}


def all_actions(action: str) -> dict[str, Any]:
    """max_length 20, blocked words and no_shouting (the fixture plugin's rule), all ``action``."""
    return moderation(
        {
            "max_length": 20,
            "blocked_words": WORDS,
            "rules": {
                name: {"action": action} for name in ("max_length", "blocked_words", "no_shouting")
            },
        },
        extra_rule=True,
    )


def _module_server(tmp_path_factory: pytest.TempPathFactory, name: str, config: dict[str, Any]):
    server = start_server(tmp_path_factory.mktemp(name), config, PYTHONPATH)
    yield server
    retire(server)


@pytest.fixture(scope="module")
def refuse_server(tmp_path_factory):
    yield from _module_server(tmp_path_factory, "refuse", all_actions("refuse"))


@pytest.fixture(scope="module")
def mask_server(tmp_path_factory):
    yield from _module_server(tmp_path_factory, "mask", all_actions("mask"))


@pytest.fixture(scope="module")
def drop_server(tmp_path_factory):
    yield from _module_server(tmp_path_factory, "drop", all_actions("drop"))


async def rest_send(server: Server, door: str, room: str, message: str) -> httpx.Response:
    """Send a room message over REST: ``room`` = POST /rooms/{room}/messages, ``events`` =
    POST /events/send-message."""
    async with httpx.AsyncClient(base_url=server.url) as http:
        if door == "room":
            return await http.post(f"/rooms/{room}/messages", json={"message": message})
        return await http.post("/events/send-message", json={"message": message, "roomID": room})


async def rest(server: Server, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url) as http:
        return await http.request(method, path, **kwargs)


async def member_of(connect, server: Server, room: str, **kwargs: Any):
    client = await connect(server, wait_welcome=True, **kwargs)
    assert (await client.call("join-room", {"room": room}))["ok"] is True
    return client


async def nothing_delivered(server: Any, *clients: Any) -> None:
    """A sentinel sent after everything the test did has arrived, and no message did."""
    await settle(server, *clients)
    for client in clients:
        assert client.received("receive-message") == []


SHOUT = "STOP THIS NOW"
REFUSALS = [
    ("this message is far too long", "max_length", "the limit is 20"),
    ("oh D4RN it", "blocked_words", "blocked word"),
    (SHOUT, "no_shouting", "do not shout"),
]


# -- refuse ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("message", "rule", "fragment"), REFUSALS, ids=[r[1] for r in REFUSALS])
async def test_refuse_over_socket_ack_and_error_event(
    refuse_server, connect, message, rule, fragment
):
    sender = await member_of(connect, refuse_server, f"refuse-{rule}")
    member = await member_of(connect, refuse_server, f"refuse-{rule}")
    ack = await sender.call("send-message", {"message": message, "roomID": f"refuse-{rule}"})
    assert_error_shape(ack["error"], "message_rejected")
    assert ack["error"]["details"]["rule"] == rule
    assert ack["error"]["details"]["field"] == "message"
    assert fragment in ack["error"]["message"]
    await sender.emit("send-message", {"message": message, "roomID": f"refuse-{rule}"})
    [error] = await sender.wait_for("error")
    assert error["details"]["rule"] == rule
    await nothing_delivered(refuse_server, member, sender)
    assert (await sender.call("send-message", {"message": "fine", "roomID": f"refuse-{rule}"}))[
        "ok"
    ]
    assert await member.wait_for("receive-message") == ["fine"]


@pytest.mark.parametrize("door", ["room", "events"])
@pytest.mark.parametrize(("message", "rule", "fragment"), REFUSALS, ids=[r[1] for r in REFUSALS])
async def test_refuse_over_rest_is_a_403_problem(
    refuse_server, connect, door, message, rule, fragment
):
    member = await member_of(connect, refuse_server, "refuse-rest")
    body = assert_problem(
        await rest_send(refuse_server, door, "refuse-rest", message), 403, "message_rejected"
    )
    assert body["details"]["rule"] == rule
    assert body["details"]["field"] == "message"
    assert fragment in body["detail"]
    await nothing_delivered(refuse_server, member)


@pytest.mark.parametrize(
    ("message", "blocked"),
    [
        ("D4RN", True),
        ("dárn", True),
        ("Da\u0301rn", True),
        ("d@rn", True),
        ("DaRn!", True),
        ("what the h3ck", True),
        ("dÁrN it", True),
        ("darned", False),
        ("undarn", False),
        ("darn5", False),
        ("h e c k", False),
    ],
)
async def test_blocked_words_match_after_normalisation(refuse_server, connect, message, blocked):
    sender = await connect(refuse_server, wait_welcome=True)
    ack = await sender.call("send-message", {"message": message, "roomID": sender.sio.get_sid()})
    if blocked:
        assert ack["error"]["details"]["rule"] == "blocked_words", ack
    else:
        assert ack["ok"] is True, ack
        assert await sender.wait_for("receive-message") == [message]


# -- mask -----------------------------------------------------------------------------------

MASKED = [
    ("oh D4RN it, d@rn!", "oh **** it, ****!"),
    ("Dárn, heck", "****, ****"),
    ("Da\u0301rn", "*****"),  # a decomposed accent is masked with its letter
    ("darned but darn", "darned but ****"),
    (SHOUT, "**** **** ***"),
    ("HELLO 123 WORLD", "***** 123 *****"),
]


@pytest.mark.parametrize(("message", "delivered"), MASKED)
async def test_mask_over_socket_delivers_the_masked_text(mask_server, connect, message, delivered):
    sender = await member_of(connect, mask_server, "mask")
    member = await member_of(connect, mask_server, "mask")
    ack = await sender.call("send-message", {"message": message, "roomID": "mask"})
    assert ack["ok"] is True and ack["data"]["recipients"] == 2
    assert await member.wait_for("receive-message") == [delivered]


@pytest.mark.parametrize("door", ["room", "events"])
async def test_mask_over_rest_delivers_the_masked_text(mask_server, connect, door):
    member = await member_of(connect, mask_server, f"mask-{door}")
    resp = await rest_send(mask_server, door, f"mask-{door}", "what the HECK")
    assert resp.status_code == 200, resp.text
    assert await member.wait_for("receive-message") == ["what the ****"]


@pytest.mark.parametrize("door", ["socket", "room", "events"])
async def test_a_rule_that_cannot_mask_refuses(mask_server, connect, door):
    """max_length reports no spans: with action mask it refuses instead."""
    long = "far too long to pass through"
    if door == "socket":
        sender = await connect(mask_server, wait_welcome=True)
        ack = await sender.call("send-message", {"message": long, "roomID": "x"})
        assert ack["error"]["details"]["rule"] == "max_length"
    else:
        body = assert_problem(
            await rest_send(mask_server, door, "x", long), 403, "message_rejected"
        )
        assert body["details"]["rule"] == "max_length"


# -- drop -----------------------------------------------------------------------------------

DROPPED = ["this message is far too long", "heck", SHOUT]


@pytest.mark.parametrize("message", DROPPED)
async def test_drop_over_socket_acks_ok_and_delivers_nothing(drop_server, connect, message):
    sender = await member_of(connect, drop_server, "drop")
    member = await member_of(connect, drop_server, "drop")
    assert await sender.call("send-message", {"message": message, "roomID": "drop"}) == {
        "ok": True,
        "data": None,
    }
    await sender.emit("send-message", {"message": message, "roomID": "drop"})
    await sender.call("my-rooms")  # handled after the emit: one connection's events keep order
    await nothing_delivered(drop_server, member, sender)
    assert sender.received("error") == []


@pytest.mark.parametrize("message", DROPPED)
async def test_drop_over_rest_succeeds_and_delivers_nothing(drop_server, connect, message):
    member = await member_of(connect, drop_server, "drop-rest")
    resp = await rest_send(drop_server, "events", "drop-rest", message)
    assert resp.status_code == 200
    assert resp.json() == {"ok": True, "data": None}
    await nothing_delivered(drop_server, member)


# -- flood ----------------------------------------------------------------------------------


async def test_flood_refuses_with_retry_after_then_recovers(plugbus_server, connect):
    server = await plugbus_server(
        config=moderation({"flood": {"burst": 3, "rate": 4}, "rules": {"flood": {"enabled": True}}})
    )
    flooder = await connect(server, wait_welcome=True)
    calm = await connect(server, wait_welcome=True)
    room = flooder.sio.get_sid()
    for i in range(3):
        assert (await flooder.call("send-message", {"message": f"m{i}", "roomID": room}))["ok"]
    ack = await flooder.call("send-message", {"message": "one too many", "roomID": room})
    assert_error_shape(ack["error"], "rate_limited")
    details = ack["error"]["details"]
    assert details["rule"] == "flood"
    assert 0 < details["retry_after"] <= 0.26
    await flooder.emit("send-message", {"message": "and again", "roomID": room})
    [error] = await flooder.wait_for("error")
    assert error["code"] == "rate_limited"
    # Other connections have buckets of their own; REST events have no connection to limit.
    assert (await calm.call("send-message", {"message": "hi", "roomID": room}))["ok"]
    for _ in range(5):
        assert (await rest_send(server, "events", room, "from the back end")).status_code == 200
    await asyncio.sleep(details["retry_after"] + 0.05)
    assert (await flooder.call("send-message", {"message": "calm now", "roomID": room}))["ok"]


# -- slow mode ------------------------------------------------------------------------------


async def test_slow_mode_per_room_set_over_rest(plugbus_server, connect):
    server = await plugbus_server(config=moderation({"slow_mode": {"rooms": {"configured": 30}}}))
    assert (await rest(server, "GET", "/moderation/slow-mode")).json() == {
        "seconds": 0,
        "rooms": {"configured": 30},
    }
    resp = await rest(server, "PUT", "/moderation/slow-mode/slow", json={"seconds": 1})
    assert resp.json() == {"room": "slow", "seconds": 1}
    assert (await rest(server, "GET", "/moderation/slow-mode")).json()["rooms"] == {
        "configured": 30,
        "slow": 1,
    }

    a = await member_of(connect, server, "slow")
    b = await member_of(connect, server, "slow")
    assert (await a.call("send-message", {"message": "one", "roomID": "slow"}))["ok"]
    ack = await a.call("send-message", {"message": "two", "roomID": "slow"})
    assert_error_shape(ack["error"], "rate_limited")
    details = ack["error"]["details"]
    assert (
        details["rule"] == "slow_mode"
        and details["room"] == "slow"
        and details["field"] == "roomID"
    )
    assert 0 < details["retry_after"] <= 1
    assert "slow mode" in ack["error"]["message"]
    # Per connection and per room: b may talk in "slow", a anywhere else.
    assert (await b.call("send-message", {"message": "b here", "roomID": "slow"}))["ok"]
    assert (await a.call("send-message", {"message": "elsewhere", "roomID": "fast"}))["ok"]
    assert (await a.call("send-message", {"message": "x", "roomID": "fast"}))["ok"]
    # The refused attempt did not restart a's clock.
    await asyncio.sleep(details["retry_after"] + 0.05)
    assert (await a.call("send-message", {"message": "three", "roomID": "slow"}))["ok"]
    assert await b.wait_for("receive-message", count=3) == ["one", "b here", "three"]

    assert (
        await rest(server, "PUT", "/moderation/slow-mode/slow", json={"seconds": 0})
    ).status_code == 200
    for text in ("four", "five"):
        assert (await a.call("send-message", {"message": text, "roomID": "slow"}))["ok"]
    body = assert_problem(
        await rest(server, "PUT", "/moderation/slow-mode/slow", json={"seconds": -1}),
        422,
        "invalid_payload",
    )
    assert body["details"]["errors"][0]["loc"] == "body.seconds"


# -- mute -----------------------------------------------------------------------------------


async def test_mute_by_connection_then_unmute(plugbus_server, connect):
    server = await plugbus_server()
    muted = await member_of(connect, server, "mute")
    other = await member_of(connect, server, "mute")
    resp = await rest(
        server,
        "POST",
        "/moderation/mutes",
        json={"kind": "connection", "value": muted.sio.get_sid(), "reason": "calm down"},
    )
    assert resp.status_code == 201, resp.text
    mute = resp.json()
    assert mute["kind"] == "connection" and mute["value"] == muted.sio.get_sid()
    assert mute["reason"] == "calm down" and mute["expires_at"] is None
    assert [m["id"] for m in (await rest(server, "GET", "/moderation/mutes")).json()] == [
        mute["id"]
    ]

    ack = await muted.call("send-message", {"message": "hello?", "roomID": "mute"})
    assert_error_shape(ack["error"], "message_rejected")
    assert ack["error"]["details"]["rule"] == "mute"
    assert "calm down" in ack["error"]["message"]
    # A muted connection still reads and joins rooms; others still talk.
    assert (await muted.call("join-room", {"room": "elsewhere"}))["ok"] is True
    assert (await other.call("send-message", {"message": "you can read", "roomID": "mute"}))["ok"]
    assert await muted.wait_for("receive-message") == ["you can read"]

    lifted = await rest(server, "DELETE", f"/moderation/mutes/{mute['id']}")
    assert lifted.json()["id"] == mute["id"]
    assert (await rest(server, "GET", "/moderation/mutes")).json() == []
    assert (await muted.call("send-message", {"message": "back", "roomID": "mute"}))["ok"]
    assert await other.wait_for("receive-message", count=2) == ["you can read", "back"]
    assert_problem(
        await rest(server, "DELETE", f"/moderation/mutes/{mute['id']}"), 404, "not_found"
    )
    body = assert_problem(
        await rest(
            server, "POST", "/moderation/mutes", json={"kind": "connection", "value": "no-such-sid"}
        ),
        404,
        "not_found",
    )
    assert "no-such-sid" in body["detail"]


async def test_mute_by_identity_expires(plugbus_server, connect):
    server = await plugbus_server(config=moderation({}, extra_rule=True))
    resp = await rest(
        server,
        "POST",
        "/moderation/mutes",
        json={"kind": "identity", "value": "ada", "duration": 1},
    )
    assert resp.json()["expires_at"] is not None
    ada = await connect(server, wait_welcome=True, auth={"user_id": "ada"})
    bob = await connect(server, wait_welcome=True, auth={"user_id": "bob"})
    ack = await ada.call("send-message", {"message": "hi", "roomID": "r"})
    assert ack["error"]["details"]["rule"] == "mute"
    assert ack["error"]["details"]["expires_at"] is not None
    assert (await bob.call("send-message", {"message": "hi", "roomID": "r"}))["ok"]
    await asyncio.sleep(1.1)
    assert (await ada.call("send-message", {"message": "hi again", "roomID": "r"}))["ok"]
    assert (await rest(server, "GET", "/moderation/mutes")).json() == []


# -- ban ------------------------------------------------------------------------------------


async def test_ban_by_address_disconnects_and_refuses_reconnects_until_lifted(
    plugbus_server, connect
):
    server = await plugbus_server()
    a = await connect(server, wait_welcome=True)
    b = await connect(server, wait_welcome=True)
    sids = sorted([a.sio.get_sid(), b.sio.get_sid()])
    resp = await rest(
        server,
        "POST",
        "/moderation/bans",
        json={"kind": "address", "value": "127.0.0.1", "reason": "spamming"},
    )
    assert resp.status_code == 201, resp.text
    ban = resp.json()
    assert sorted(ban["disconnected"]) == sids
    try:
        await wait_disconnected(a)
        await wait_disconnected(b)
        error = await refused_connect(server)
        assert "banned" in error["message"] and "spamming" in error["message"]
        assert error["data"]["code"] == "connection_denied"
        assert error["data"]["details"]["rule"] == "ban"
        assert error["data"]["details"]["reason"] == "spamming"
        # The REST door is the back end's: not subject to bans.
        assert (await rest_send(server, "room", "r", "still serving")).status_code == 200
        assert [x["id"] for x in (await rest(server, "GET", "/moderation/bans")).json()] == [
            ban["id"]
        ]
    finally:
        lifted = await rest(server, "DELETE", f"/moderation/bans/{ban['id']}")
    assert lifted.status_code == 200 and lifted.json()["kind"] == "address"
    c = await connect(server, wait_welcome=True)
    assert c.sio.connected
    assert (await rest(server, "GET", "/moderation/bans")).json() == []


async def test_ban_by_connection_bans_its_identity(plugbus_server, connect):
    server = await plugbus_server(config=moderation({}, extra_rule=True))
    ada = await connect(server, wait_welcome=True, auth={"user_id": "ada"})
    bob = await connect(server, wait_welcome=True, auth={"user_id": "bob"})
    sid = ada.sio.get_sid()
    resp = await rest(
        server,
        "POST",
        "/moderation/bans",
        json={"kind": "connection", "value": sid, "reason": "rude"},
    )
    ban = resp.json()
    assert (ban["kind"], ban["value"], ban["sid"]) == ("identity", "ada", sid)
    assert ban["disconnected"] == [sid]
    await wait_disconnected(ada)
    error = await refused_connect(server, auth={"user_id": "ada"})
    assert "rude" in error["message"]
    assert bob.sio.connected
    assert (await connect(server, auth={"user_id": "cy"})).sio.connected
    assert (await rest(server, "DELETE", f"/moderation/bans/{ban['id']}")).status_code == 200
    assert (await connect(server, wait_welcome=True, auth={"user_id": "ada"})).sio.connected


async def test_ban_by_connection_without_identity_bans_its_address(plugbus_server, connect):
    server = await plugbus_server()
    a = await connect(server, wait_welcome=True)
    b = await connect(server, wait_welcome=True)
    sid_a, sid_b = a.sio.get_sid(), b.sio.get_sid()
    ban = (
        await rest(server, "POST", "/moderation/bans", json={"kind": "connection", "value": sid_a})
    ).json()
    try:
        assert (ban["kind"], ban["value"], ban["sid"]) == ("address", "127.0.0.1", sid_a)
        assert sorted(ban["disconnected"]) == sorted([sid_a, sid_b])
        error = await refused_connect(server)
        assert error["message"] == "you are banned"
    finally:
        assert (await rest(server, "DELETE", f"/moderation/bans/{ban['id']}")).status_code == 200
    assert (await connect(server)).sio.connected
    body = assert_problem(
        await rest(server, "POST", "/moderation/bans", json={"kind": "connection", "value": sid_a}),
        404,
        "not_found",
    )
    assert body["details"]["sid"] == sid_a


async def test_ban_expires_after_its_duration(plugbus_server, connect):
    server = await plugbus_server()
    ban = (
        await rest(
            server,
            "POST",
            "/moderation/bans",
            json={"kind": "address", "value": "127.0.0.1", "reason": "cool off", "duration": 1},
        )
    ).json()
    assert ban["expires_at"] is not None
    error = await refused_connect(server)
    assert "cool off" in error["message"] and "until" in error["message"]
    assert error["data"]["details"]["expires_at"] == ban["expires_at"]
    await asyncio.sleep(1.1)
    assert (await connect(server, wait_welcome=True)).sio.connected
    assert (await rest(server, "GET", "/moderation/bans")).json() == []
    assert_problem(await rest(server, "DELETE", f"/moderation/bans/{ban['id']}"), 404, "not_found")


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"kind": "user", "value": "x"}, "body.kind"),
        ({"kind": "address", "value": ""}, "body.value"),
        ({"kind": "address", "value": "x", "duration": 0}, "body.duration"),
        ({"kind": "address", "value": "x", "extra": 1}, "body.extra"),
    ],
)
async def test_sanction_bodies_are_validated(default_server, body, loc):
    for path in ("/moderation/bans", "/moderation/mutes"):
        problem = assert_problem(
            await rest(default_server, "POST", path, json=body), 422, "invalid_payload"
        )
        assert [e["loc"] for e in problem["details"]["errors"]] == [loc]


# -- kick -----------------------------------------------------------------------------------


async def test_kick_disconnects_one_connection_which_may_come_back(plugbus_server, connect):
    server = await plugbus_server()
    a = await connect(server, wait_welcome=True)
    b = await connect(server, wait_welcome=True)
    c = await connect(server, wait_welcome=True)
    sid_a, sid_b = a.sio.get_sid(), b.sio.get_sid()
    resp = await rest(server, "POST", "/moderation/kick", json={"sid": sid_a, "reason": "bye"})
    assert resp.json() == {"sid": sid_a, "reason": "bye"}
    await wait_disconnected(a)
    resp = await rest(server, "DELETE", f"/connections/{sid_b}")
    assert resp.json()["sid"] == sid_b
    await wait_disconnected(b)
    assert c.sio.connected
    assert (await connect(server, wait_welcome=True)).sio.connected  # a kick is not a ban
    body = assert_problem(
        await rest(server, "POST", "/moderation/kick", json={"sid": "nope"}), 404, "not_found"
    )
    assert body["details"]["sid"] == "nope"
    assert_problem(await rest(server, "DELETE", "/connections/nope"), 404, "not_found")
    kicks = [
        e for e in (await rest(server, "GET", "/moderation/log")).json() if e["action"] == "kick"
    ]
    assert [(k["sid"], k["reason"]) for k in kicks] == [(sid_a, "bye"), (sid_b, "")]


# -- log ------------------------------------------------------------------------------------


async def test_log_records_decisions_and_sanctions(plugbus_server, connect):
    server = await plugbus_server(
        config=moderation(
            {
                "blocked_words": ["darn"],
                "log_size": 4,
                "rules": {"blocked_words": {"action": "mask"}},
            },
            extra_rule=True,
        ),
    )
    ada = await connect(server, wait_welcome=True, auth={"user_id": "ada"})
    sid = ada.sio.get_sid()
    await ada.call("send-message", {"message": "x" * 2001, "roomID": "r"})
    await ada.call("send-message", {"message": "oh darn", "roomID": "r"})
    await rest_send(server, "room", "r", "DARN IT ALL")
    entries = (await rest(server, "GET", "/moderation/log")).json()
    assert [(e["rule"], e["action"], e["sid"], e["user"]) for e in entries] == [
        ("max_length", "refuse", sid, "ada"),
        ("blocked_words", "mask", sid, "ada"),
        ("blocked_words", "mask", None, None),  # over REST: no connection
        ("no_shouting", "refuse", None, None),
    ]
    assert {(e["event"], e["field"]) for e in entries} == {("send-message", "message")}
    assert "limit is 2000" in entries[0]["reason"] and entries[0]["time"].endswith("Z")
    mute = (
        await rest(
            server,
            "POST",
            "/moderation/mutes",
            json={"kind": "identity", "value": "ada", "reason": "shh"},
        )
    ).json()
    await rest(server, "DELETE", f"/moderation/mutes/{mute['id']}")
    latest = (await rest(server, "GET", "/moderation/log", params={"limit": 2})).json()
    assert [(e["rule"], e["action"], e["user"], e["target"], e["reason"]) for e in latest] == [
        ("mute", "mute", "ada", "identity:ada", "shh"),
        ("mute", "unmute", "ada", "identity:ada", "shh"),
    ]
    assert len((await rest(server, "GET", "/moderation/log")).json()) == 4  # log_size
    for bad in ("0", "-1", "many"):
        body = assert_problem(
            await rest(server, "GET", "/moderation/log", params={"limit": bad}),
            422,
            "invalid_payload",
        )
        assert body["details"]["errors"][0]["loc"] == "query.limit"


# -- a plugin's own rule, and settings errors -----------------------------------------------


async def test_plugin_rule_is_on_by_default_and_switchable(plugbus_server, connect):
    server = await plugbus_server(config=moderation({}, extra_rule=True))
    a = await connect(server, wait_welcome=True)
    ack = await a.call("send-message", {"message": SHOUT, "roomID": "r"})
    assert ack["error"]["details"] == {
        "event": "send-message",
        "rule": "no_shouting",
        "field": "message",
    }
    server = await plugbus_server(
        config=moderation({"rules": {"no_shouting": {"enabled": False}}}, extra_rule=True)
    )
    a = await connect(server, wait_welcome=True)
    assert (await a.call("send-message", {"message": SHOUT, "roomID": "r"}))["ok"]


async def test_unknown_rule_name_stops_start_up(plugbus_server):
    with pytest.raises(ConfigError) as info:
        await plugbus_server(
            config=moderation({"rules": {"no_shoutin": {"action": "mask"}}}, extra_rule=True)
        )
    message = str(info.value)
    assert (
        "plugins.settings.moderation.rules.no_shoutin: no moderation rule named 'no_shoutin'"
        in message
    )
    assert "no_shouting" in message  # the rules there are, to spot the typo
    with pytest.raises(ConfigError) as info:
        await plugbus_server(config=moderation({"rules": {"no_shouting": {"action": "mask"}}}))
    assert "no moderation rule named 'no_shouting'" in str(info.value)
    assert "is the plugin that adds it loaded?" in str(info.value)


async def test_bad_rule_settings_are_config_errors(plugbus_server):
    with pytest.raises(ConfigError) as info:
        await plugbus_server(config=moderation({"rules": {"blocked_words": {"action": "hide"}}}))
    assert "plugins.settings.moderation.rules.blocked_words.action" in str(info.value)
    assert "'refuse', 'mask' or 'drop'" in str(info.value)


# -- defaults, switched off, OpenAPI --------------------------------------------------------


async def test_defaults_only_limit_length(default_server, connect):
    a = await connect(default_server, wait_welcome=True)
    room = a.sio.get_sid()
    ack = await a.call("send-message", {"message": "x" * 2001, "roomID": room})
    assert ack["error"]["details"]["rule"] == "max_length"
    assert "the limit is 2000" in ack["error"]["message"]
    for message in ["x" * 2000, "darn", "SHOUTING IS FINE", "again", "and again", "and again!"]:
        assert (await a.call("send-message", {"message": message, "roomID": room}))["ok"]
    assert (await rest(default_server, "GET", "/moderation/bans")).json() == []
    assert (await rest(default_server, "GET", "/moderation/slow-mode")).json() == {
        "seconds": 0,
        "rooms": {},
    }


async def test_service_runs_with_moderation_switched_off(plugbus_server, connect):
    server = await plugbus_server(config={"plugins": {"builtins": ["welcome", "rooms", "relay"]}})
    a = await member_of(connect, server, "r")
    assert (await a.call("send-message", {"message": "x" * 5000, "roomID": "r"}))["ok"]
    assert await a.wait_for("receive-message") == ["x" * 5000]
    assert_problem(await rest(server, "GET", "/moderation/bans"), 404, "not_found")


async def test_every_rule_switched_off(plugbus_server, connect):
    rules = {
        n: {"enabled": False}
        for n in ("ban", "mute", "flood", "slow_mode", "max_length", "blocked_words")
    }
    server = await plugbus_server(
        config=moderation({"max_length": 5, "blocked_words": ["darn"], "rules": rules})
    )
    a = await connect(server, wait_welcome=True)
    assert (await a.call("send-message", {"message": "darn, longer than five", "roomID": "r"}))[
        "ok"
    ]
    body = assert_problem(
        await rest(server, "POST", "/moderation/bans", json={"kind": "address", "value": "x"}),
        403,
        "not_allowed",
    )
    assert "rules.ban.enabled" in body["detail"]
    assert_problem(
        await rest(server, "PUT", "/moderation/slow-mode/r", json={"seconds": 1}),
        403,
        "not_allowed",
    )


async def test_openapi_documents_the_moderation_routes(default_server):
    spec = (await rest(default_server, "GET", "/openapi.json")).json()
    paths = spec["paths"]
    post = paths["/moderation/bans"]["post"]
    assert post["tags"] == ["moderation"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/SanctionRequest"
    )
    assert post["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/BanCreated"
    )
    assert set(paths["/moderation/bans/{id}"]) == {"delete"}
    assert {"get", "post"} == set(paths["/moderation/mutes"])
    assert (
        "put" in paths["/moderation/slow-mode/{room}"] and "get" in paths["/moderation/slow-mode"]
    )
    assert "delete" in paths["/connections/{sid}"] and "post" in paths["/moderation/kick"]
    assert "get" in paths["/moderation/log"]
    schemas = spec["components"]["schemas"]
    assert schemas["SanctionRequest"]["properties"]["kind"]["enum"] == [
        "connection",
        "identity",
        "address",
    ]
