"""relay: room, direct and broadcast messages over both doors; envelopes, settings, refusals.

Real servers, real python-socketio clients, httpx for REST. Tests that count recipients of a
broadcast run on a server of their own, so that no other test's connection is counted.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import assert_problem, assert_refused, retire, settle, start_server

HEX32 = re.compile(r"[0-9a-f]{32}")
ISO_MS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
ENVELOPE_KEYS = {"id", "room", "to", "from", "user", "ts", "message"}

TESTS = Path(__file__).resolve().parent
# The helper plugin: identities (and roles) from the handshake's auth, "drop me" dropped.
HELPER = {"helper": "fixture_plugins.relay_helper"}


def relay(settings: dict[str, Any] | None = None, **plugins: Any) -> dict[str, Any]:
    """Config overrides: relay settings, plus other ``plugins`` keys."""
    return {"plugins": {**plugins, "settings": {"relay": settings or {}}}}


async def quiet(server: Any, *clients: Any, event: str = "receive-message") -> None:
    """Check that no stray delivery reached ``clients``: a sentinel sent after everything the
    test did has arrived (see ``conftest.settle``), and nothing else did."""
    await settle(server, *clients)
    for client in clients:
        assert client.received(event) == [], client.events


@pytest.fixture(scope="module")
def envelope_server(tmp_path_factory):
    """Envelopes on, with the helper plugin (identities from auth, "drop me" dropped)."""
    server = start_server(
        tmp_path_factory.mktemp("envelope"),
        relay({"envelope": True}, modules=HELPER),
        {"PYTHONPATH": str(TESTS)},
    )
    yield server
    retire(server)


# -- room messages ------------------------------------------------------------------------


async def test_room_message_reaches_members_with_id_and_count(default_server, connect):
    alice = await connect(default_server, wait_welcome=True)
    bob = await connect(default_server, transports=["polling"], wait_welcome=True)
    carol = await connect(default_server, wait_welcome=True)
    await alice.call("join-room", {"room": "r-basic"})
    await bob.call("join-room", {"room": "r-basic"})
    ack = await alice.call("send-message", {"message": "hi", "roomID": "r-basic"})
    assert ack["ok"] is True
    assert ack["data"] == {"id": ack["data"]["id"], "room": "r-basic", "recipients": 2}
    assert HEX32.fullmatch(ack["data"]["id"])
    assert await alice.wait_for("receive-message") == ["hi"]
    assert await bob.wait_for("receive-message") == ["hi"]
    await quiet(default_server, carol)
    # The seed lets anyone send to any room: carol is not a member, the members still get it.
    ack2 = await carol.call("send-message", {"message": "from outside", "roomID": "r-basic"})
    assert ack2["data"]["recipients"] == 2 and ack2["data"]["id"] != ack["data"]["id"]
    assert await bob.wait_for("receive-message", count=2) == ["hi", "from outside"]
    await quiet(default_server, carol)


async def test_room_message_over_rest_returns_id_and_recipients(default_server, connect):
    member = await connect(default_server, wait_welcome=True)
    await member.call("join-room", {"room": "r-rest"})
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        resp = await http.post("/rooms/r-rest/messages", json={"message": "from the back end"})
        empty = await http.post("/rooms/r-nobody/messages", json={"message": "anyone?"})
    assert resp.status_code == 200
    body = resp.json()
    assert body == {"id": body["id"], "room": "r-rest", "recipients": 1} and HEX32.fullmatch(
        body["id"]
    )
    assert await member.wait_for("receive-message") == ["from the back end"]
    assert empty.json()["recipients"] == 0 and HEX32.fullmatch(empty.json()["id"])


async def test_structured_messages_are_delivered_as_sent_over_both_doors(default_server, connect):
    a = await connect(default_server, wait_welcome=True)
    b = await connect(default_server, transports=["polling"], wait_welcome=True)
    await a.call("join-room", {"room": "r-json"})
    await b.call("join-room", {"room": "r-json"})
    obj = {"type": "chart", "points": [1, 2.5, None, True], "meta": {"unit": "°C", "nested": [{}]}}
    arr = ["a", 1, {"b": [None]}]
    assert (await a.call("send-message", {"message": obj, "roomID": "r-json"}))["ok"] is True
    assert (await a.call("send-message", {"message": arr, "roomID": "r-json"}))["ok"] is True
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        assert (
            await http.post("/rooms/r-json/messages", json={"message": {"k": "v"}})
        ).status_code == 200
        resp = await http.post(f"/connections/{b.sio.get_sid()}/messages", json={"message": [1, 2]})
        assert resp.json()["recipients"] == 1
    expected = [obj, arr, {"k": "v"}]
    assert await a.wait_for("receive-message", count=3) == expected
    assert await b.wait_for("receive-message", count=4) == [*expected, [1, 2]]
    ack = await a.call("send-direct", {"to": b.sio.get_sid(), "message": {"ping": 1}})
    assert ack["ok"] is True
    assert (await b.wait_for("receive-message", count=5))[-1] == {"ping": 1}


async def test_without_echo_the_sender_is_left_out_of_its_room(plugbus_server, connect):
    server = await plugbus_server(config=relay({"echo": False}))
    a = await connect(server, wait_welcome=True)
    b = await connect(server, wait_welcome=True)
    await a.call("join-room", {"room": "r"})
    await b.call("join-room", {"room": "r"})
    ack = await a.call("send-message", {"message": "not to me", "roomID": "r"})
    assert ack["data"]["recipients"] == 1
    assert await b.wait_for("receive-message") == ["not to me"]
    async with httpx.AsyncClient(base_url=server.url) as http:
        resp = await http.post("/rooms/r/messages", json={"message": "to both"})
    assert resp.json()["recipients"] == 2  # a REST sender is in no room: both members get it
    assert await a.wait_for("receive-message") == ["to both"]
    assert await b.wait_for("receive-message", count=2) == ["not to me", "to both"]


async def test_require_membership_refuses_outsiders_on_sockets_only(plugbus_server, connect):
    server = await plugbus_server(config=relay({"require_membership": True}))
    member = await connect(server, wait_welcome=True)
    outsider = await connect(server, transports=["polling"], wait_welcome=True)
    await member.call("join-room", {"room": "club"})
    error = assert_refused(
        await outsider.call("send-message", {"message": "let me in", "roomID": "club"}),
        "not_allowed",
    )
    assert error["details"]["room"] == "club" and error["details"]["field"] == "roomID"
    assert "club" in error["message"]
    await outsider.emit("send-message", {"message": "no ack", "roomID": "club"})
    [event_error] = await outsider.wait_for("error")
    assert event_error["code"] == "not_allowed"
    await quiet(server, member)
    ack = await member.call("send-message", {"message": "members only", "roomID": "club"})
    assert ack["data"]["recipients"] == 1
    assert await member.wait_for("receive-message") == ["members only"]
    async with httpx.AsyncClient(base_url=server.url) as http:  # REST is the server: exempt
        assert (
            await http.post("/rooms/club/messages", json={"message": "from ops"})
        ).status_code == 200
    assert await member.wait_for("receive-message", count=2) == ["members only", "from ops"]
    await outsider.call("join-room", {"room": "club"})
    assert (await outsider.call("send-message", {"message": "joined", "roomID": "club"}))[
        "ok"
    ] is True


# -- direct messages ----------------------------------------------------------------------


async def test_direct_message_reaches_only_its_target(default_server, connect):
    a = await connect(default_server, wait_welcome=True)
    b = await connect(default_server, transports=["polling"], wait_welcome=True)
    c = await connect(default_server, wait_welcome=True)
    for client in (a, b, c):
        await client.call("join-room", {"room": "r-direct"})
    to = b.sio.get_sid()
    ack = await a.call("send-direct", {"to": to, "message": "psst"})
    assert ack["data"] == {"id": ack["data"]["id"], "to": to, "recipients": 1}
    assert HEX32.fullmatch(ack["data"]["id"])
    assert await b.wait_for("receive-message") == ["psst"]
    await quiet(default_server, a, c)


async def test_direct_message_over_rest(default_server, connect):
    target = await connect(default_server, wait_welcome=True)
    other = await connect(default_server, wait_welcome=True)
    sid = target.sio.get_sid()
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        resp = await http.post(
            f"/connections/{sid}/messages", json={"message": "your report is ready"}
        )
    assert resp.status_code == 200
    body = resp.json()
    assert body == {"id": body["id"], "to": sid, "recipients": 1} and HEX32.fullmatch(body["id"])
    assert await target.wait_for("receive-message") == ["your report is ready"]
    await quiet(default_server, other)


async def test_direct_message_to_unknown_connection_is_not_found_on_both_doors(
    default_server, connect
):
    a = await connect(default_server, wait_welcome=True)
    gone = await connect(default_server, wait_welcome=True)
    gone_sid = gone.sio.get_sid()
    await gone.sio.disconnect()
    error = assert_refused(
        await a.call("send-direct", {"to": "nobody-here", "message": "hi"}), "not_found"
    )
    assert error["details"]["sid"] == "nobody-here" and error["details"]["field"] == "to"
    assert "nobody-here" in error["message"]
    await a.emit("send-direct", {"to": "nobody-here", "message": "no ack"})
    [event_error] = await a.wait_for("error")
    assert event_error["code"] == "not_found"
    for _ in range(50):  # the server forgets the closed connection as soon as it sees it close
        ack = await a.call("send-direct", {"to": gone_sid, "message": "still there?"})
        if not ack["ok"]:
            break
        await asyncio.sleep(0.05)
    assert_refused(ack, "not_found")
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        body = assert_problem(
            await http.post("/connections/nobody-here/messages", json={"message": "x"}),
            404,
            "not_found",
        )
        assert body["details"]["sid"] == "nobody-here"
        assert_problem(
            await http.post(f"/connections/{gone_sid}/messages", json={"message": "x"}),
            404,
            "not_found",
        )


# -- broadcast ----------------------------------------------------------------------------


async def test_broadcast_reaches_everyone_but_the_sender_unless_include_self(
    plugbus_server, connect
):
    server = await plugbus_server()
    a = await connect(server, wait_welcome=True)
    b = await connect(server, transports=["polling"], wait_welcome=True)
    c = await connect(server, wait_welcome=True)
    await b.call("join-room", {"room": "somewhere"})  # rooms do not matter to a broadcast
    ack = await a.call("broadcast", {"message": "hello all"})
    assert ack["data"] == {"id": ack["data"]["id"], "recipients": 2} and HEX32.fullmatch(
        ack["data"]["id"]
    )
    assert await b.wait_for("receive-message") == ["hello all"]
    assert await c.wait_for("receive-message") == ["hello all"]
    await quiet(server, a)
    ack = await a.call("broadcast", {"message": "me too", "include_self": True})
    assert ack["data"]["recipients"] == 3
    for client, count in ((a, 1), (b, 2), (c, 2)):
        assert (await client.wait_for("receive-message", count=count))[-1] == "me too"


async def test_broadcast_over_rest_reaches_every_connection(plugbus_server, connect):
    server = await plugbus_server()
    clients = [
        await connect(server, transports=t, wait_welcome=True)
        for t in (["websocket"], ["polling"], ["polling", "websocket"])
    ]
    async with httpx.AsyncClient(base_url=server.url) as http:
        resp = await http.post("/messages", json={"message": {"alert": "deploy at 5"}})
    assert resp.status_code == 200
    body = resp.json()
    assert body == {"id": body["id"], "recipients": 3} and HEX32.fullmatch(body["id"])
    for client in clients:
        assert await client.wait_for("receive-message") == [{"alert": "deploy at 5"}]


# -- envelopes ----------------------------------------------------------------------------


async def test_envelope_carries_id_sender_user_and_timestamp_over_sockets(envelope_server, connect):
    alice = await connect(envelope_server, auth={"user": "u-alice"}, wait_welcome=True)
    bob = await connect(envelope_server, wait_welcome=True)
    a_sid, b_sid = alice.sio.get_sid(), bob.sio.get_sid()
    await alice.call("join-room", {"room": "env"})
    await bob.call("join-room", {"room": "env"})

    ack = await alice.call("send-message", {"message": "hi", "roomID": "env"})
    [env] = await bob.wait_for("receive-message")
    assert set(env) == ENVELOPE_KEYS
    assert env["id"] == ack["data"]["id"]
    assert (env["room"], env["to"], env["from"], env["user"], env["message"]) == (
        "env",
        None,
        a_sid,
        "u-alice",
        "hi",
    )
    assert ISO_MS_UTC.fullmatch(env["ts"])
    assert await alice.wait_for("receive-message") == [env]  # one encoding, the same for all

    ack = await bob.call("send-direct", {"to": a_sid, "message": {"x": 1}})
    env = (await alice.wait_for("receive-message", count=2))[-1]
    assert env["id"] == ack["data"]["id"]
    assert (env["room"], env["to"], env["from"], env["user"], env["message"]) == (
        None,
        a_sid,
        b_sid,
        None,
        {"x": 1},
    )

    ack = await alice.call("broadcast", {"message": "all"})
    env = (await bob.wait_for("receive-message", count=2))[-1]
    assert env["id"] == ack["data"]["id"]
    assert (env["room"], env["to"], env["from"], env["user"], env["message"]) == (
        None,
        None,
        a_sid,
        "u-alice",
        "all",
    )


async def test_envelope_over_rest_has_no_sender(envelope_server, connect):
    client = await connect(envelope_server, wait_welcome=True)
    sid = client.sio.get_sid()
    await client.call("join-room", {"room": "env-rest"})
    async with httpx.AsyncClient(base_url=envelope_server.url) as http:
        ids = [
            (await http.post("/rooms/env-rest/messages", json={"message": "room"})).json()["id"],
            (await http.post(f"/connections/{sid}/messages", json={"message": ["direct"]})).json()[
                "id"
            ],
            (await http.post("/messages", json={"message": {"all": True}})).json()["id"],
        ]
    envs = await client.wait_for("receive-message", count=3)
    assert [e["id"] for e in envs] == ids
    assert [(e["room"], e["to"], e["message"]) for e in envs] == [
        ("env-rest", None, "room"),
        (None, sid, ["direct"]),
        (None, None, {"all": True}),
    ]
    for env in envs:
        assert set(env) == ENVELOPE_KEYS and env["from"] is None and env["user"] is None
        assert ISO_MS_UTC.fullmatch(env["ts"])


# -- moderation through both doors --------------------------------------------------------


async def test_moderation_refuses_every_kind_of_message_on_both_doors(plugbus_server, connect):
    server = await plugbus_server(settings={"moderation": {"blocked_words": ["darn"]}})
    sender = await connect(server, wait_welcome=True)
    target = await connect(server, wait_welcome=True)
    await target.call("join-room", {"room": "mod"})
    sid = target.sio.get_sid()
    for event, payload in [
        ("send-message", {"message": "darn", "roomID": "mod"}),
        ("send-direct", {"to": sid, "message": "darn"}),
        ("broadcast", {"message": "oh darn", "include_self": True}),
    ]:
        error = assert_refused(await sender.call(event, payload), "message_rejected")
        assert error["details"]["rule"] == "blocked_words" and error["details"]["event"] == event
    async with httpx.AsyncClient(base_url=server.url) as http:
        for path in ("/rooms/mod/messages", f"/connections/{sid}/messages", "/messages"):
            body = assert_problem(
                await http.post(path, json={"message": "Darn"}), 403, "message_rejected"
            )
            assert body["details"]["field"] == "message"
    await quiet(server, sender, target)


async def test_silently_dropped_message_answers_success_with_null_id(envelope_server, connect):
    sender = await connect(envelope_server, wait_welcome=True)
    target = await connect(envelope_server, wait_welcome=True)
    await target.call("join-room", {"room": "drop"})
    sid = target.sio.get_sid()
    for event, payload in [
        ("send-message", {"message": "drop me", "roomID": "drop"}),
        ("send-direct", {"to": sid, "message": "drop me"}),
        ("broadcast", {"message": "drop me"}),
    ]:
        assert await sender.call(event, payload) == {"ok": True, "data": None}
    async with httpx.AsyncClient(base_url=envelope_server.url) as http:
        resps = [
            await http.post(path, json={"message": "drop me"})
            for path in ("/rooms/drop/messages", f"/connections/{sid}/messages", "/messages")
        ]
    assert [r.status_code for r in resps] == [200, 200, 200]
    assert [r.json() for r in resps] == [
        {"id": None, "room": "drop", "recipients": 0},
        {"id": None, "to": sid, "recipients": 0},
        {"id": None, "recipients": 0},
    ]
    await quiet(envelope_server, sender, target)


# -- settings -----------------------------------------------------------------------------


async def test_structured_off_accepts_text_only_on_both_doors(plugbus_server, connect):
    server = await plugbus_server(config=relay({"structured": False}))
    a = await connect(server, wait_welcome=True)
    await a.call("join-room", {"room": "r"})
    error = assert_refused(
        await a.call("send-message", {"message": {"a": 1}, "roomID": "r"}), "invalid_payload"
    )
    assert error["details"]["errors"][0]["loc"] == "message"
    assert_refused(await a.call("broadcast", {"message": [1]}), "invalid_payload")
    async with httpx.AsyncClient(base_url=server.url) as http:
        body = assert_problem(
            await http.post("/rooms/r/messages", json={"message": {"a": 1}}), 422, "invalid_payload"
        )
        assert "structured messages are switched off" in body["detail"]
        assert (await http.post("/rooms/r/messages", json={"message": "text"})).status_code == 200
    assert await a.wait_for("receive-message") == ["text"]


async def test_sender_roles_restrict_sockets_but_not_rest(plugbus_server, connect):
    server = await plugbus_server(
        config=relay({"sender_roles": {"broadcast": ["admin", "ops"]}}, modules=HELPER)
    )
    anonymous = await connect(server, wait_welcome=True)
    user = await connect(server, auth={"user": "u1", "roles": ["member"]}, wait_welcome=True)
    admin = await connect(server, auth={"user": "u2", "roles": ["ops"]}, wait_welcome=True)
    for client in (anonymous, user):
        error = assert_refused(await client.call("broadcast", {"message": "all"}), "not_allowed")
        assert error["details"]["roles"] == ["admin", "ops"]
    await quiet(server, anonymous, user, admin)
    assert (await admin.call("broadcast", {"message": "from ops"}))["data"]["recipients"] == 2
    assert await user.wait_for("receive-message") == ["from ops"]
    assert (await user.call("send-message", {"message": "rooms are open", "roomID": "r"}))[
        "ok"
    ] is True
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.post("/messages", json={"message": "rest"})).json()["recipients"] == 3


async def test_direct_and_broadcast_can_be_switched_off(plugbus_server, connect):
    server = await plugbus_server(config=relay({"direct": False, "broadcast": False}))
    a = await connect(server, wait_welcome=True)
    for event, payload in [
        ("send-direct", {"to": a.sio.get_sid(), "message": "x"}),
        ("broadcast", {"message": "x"}),
    ]:
        error = assert_refused(await a.call(event, payload), "unknown_event")
        assert (
            event not in error["details"]["known"] and "send-message" in error["details"]["known"]
        )
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert_problem(
            await http.post(f"/connections/{a.sio.get_sid()}/messages", json={"message": "x"}),
            404,
            "not_found",
        )
        assert_problem(await http.post("/messages", json={"message": "x"}), 404, "not_found")
        assert (await http.post("/rooms/r/messages", json={"message": "x"})).status_code == 200


def test_bad_relay_settings_stop_start_up_naming_plugin_and_key(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        textwrap.dedent("""
        plugins:
          entry_points: false
          settings:
            relay:
              envelope: maybe
              sender_roles: {shout: [admin]}
              evnt: typo
    """).lstrip()
    )
    result = subprocess.run(
        [sys.executable, "-m", "plugbus", "config", "check", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result
    err = result.stderr
    assert "plugin 'relay'" in err and "Traceback" not in err
    for key in ("relay.envelope", "relay.sender_roles.shout", "relay.evnt: unknown key"):
        assert f"plugins.settings.{key}" in err, err


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "payload", "loc", "fragment"),
    [
        ("send-direct", {"message": "x"}, "to", "Field required"),
        ("send-direct", {"to": "", "message": "x"}, "to", "at least 1 character"),
        (
            "send-direct",
            {"to": "s", "message": None},
            "message",
            "valid string, a JSON object or array, or binary data",
        ),
        ("send-direct", {"to": 5, "message": "x"}, "to", "valid string"),
        ("broadcast", {}, "message", "Field required"),
        (
            "broadcast",
            {"message": 5},
            "message",
            "valid string, a JSON object or array, or binary data",
        ),
        ("broadcast", {"message": "x", "include_self": "yes"}, "include_self", "valid boolean"),
        (
            "broadcast",
            {"message": "x", "everyone": True},
            "everyone",
            "Extra inputs are not permitted",
        ),
        (
            "send-message",
            {"message": 1.5, "roomID": "r"},
            "message",
            "valid string, a JSON object or array, or binary",
        ),
        ("send-message", {"message": "x", "roomID": "r" * 257}, "roomID", "at most 256 characters"),
    ],
)
async def test_invalid_payloads_get_an_error_naming_the_field(
    default_server, connect, event, payload, loc, fragment
):
    client = await connect(default_server, wait_welcome=True)
    error = assert_refused(await client.call(event, payload), "invalid_payload")
    assert error["details"]["event"] == event
    assert any(e["loc"] == loc and fragment in e["message"] for e in error["details"]["errors"]), (
        error
    )
    assert client.sio.connected


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/messages", {}, "body.message"),
        ("/messages", {"message": 5}, "body.message"),
        ("/messages", {"message": "x", "include_self": True}, "body.include_self"),
        ("/connections/abc/messages", {"message": None}, "body.message"),
        ("/rooms/r/messages", {"message": "x", "roomID": "r"}, "body.roomID"),
    ],
)
async def test_rest_invalid_bodies_are_problems_naming_the_field(default_server, path, body, loc):
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        problem = assert_problem(await http.post(path, json=body), 422, "invalid_payload")
    assert loc in {e["loc"] for e in problem["details"]["errors"]}, problem


# -- switched off, and documented ---------------------------------------------------------


async def test_service_runs_with_relay_switched_off(plugbus_server, connect):
    server = await plugbus_server(builtins=["welcome", "rooms", "moderation"])
    client = await connect(server, wait_welcome=True)
    assert (await client.call("join-room", {"room": "r"}))["ok"] is True
    for event, payload in [
        ("send-message", {"message": "x", "roomID": "r"}),
        ("send-direct", {"to": client.sio.get_sid(), "message": "x"}),
        ("broadcast", {"message": "x"}),
    ]:
        assert_refused(await client.call(event, payload), "unknown_event")
    async with httpx.AsyncClient(base_url=server.url) as http:
        for path in (f"/connections/{client.sio.get_sid()}/messages", "/messages"):
            assert_problem(await http.post(path, json={"message": "x"}), 404, "not_found")
        # the rooms plugin still reads the room's history there; nothing publishes
        resp = await http.post("/rooms/r/messages", json={"message": "x"})
        assert_problem(resp, 405, "method_not_allowed")
        assert (await http.get("/health")).json()["status"] == "ok"
    await quiet(server, client)


async def test_rest_routes_need_the_publish_scope_when_api_keys_are_set(plugbus_server):
    server = await plugbus_server(
        settings={
            "auth": {
                "api_keys": [
                    {"name": "backend", "key": "k-publish", "scopes": ["publish"]},
                    {"name": "dashboard", "key": "k-read", "scopes": ["read"]},
                ]
            }
        }
    )
    async with httpx.AsyncClient(base_url=server.url) as http:
        for path in ("/rooms/r/messages", "/connections/nobody/messages", "/messages"):
            assert_problem(await http.post(path, json={"message": "x"}), 401, "unauthorized")
            body = assert_problem(
                await http.post(
                    path, json={"message": "x"}, headers={"Authorization": "Bearer k-read"}
                ),
                403,
                "insufficient_scope",
            )
            assert body["details"]["required"] == "publish"
        ok = {"Authorization": "Bearer k-publish"}
        assert (
            await http.post("/rooms/r/messages", json={"message": "x"}, headers=ok)
        ).status_code == 200
        assert (await http.post("/messages", json={"message": "x"}, headers=ok)).status_code == 200
        assert_problem(
            await http.post("/connections/nobody/messages", json={"message": "x"}, headers=ok),
            404,
            "not_found",
        )


async def test_openapi_documents_relay_routes_with_their_models(default_server):
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        spec = (await http.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    for path, body, response in [
        ("/rooms/{room}/messages", "RoomMessage", "Delivered"),
        ("/connections/{sid}/messages", "DirectMessage", "DirectDelivered"),
        ("/messages", "BroadcastMessage", "BroadcastDelivered"),
    ]:
        post = spec["paths"][path]["post"]
        assert post["tags"] == ["relay"] and post["summary"]
        assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
            f"/{body}"
        )
        assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
            f"/{response}"
        )
        model = schemas[response]
        assert {"type": "null"} in model["properties"]["id"]["anyOf"]
        assert "recipients" in model["required"]
        kinds = {s.get("type") for s in schemas[body]["properties"]["message"]["anyOf"]}
        assert kinds == {"string", "object", "array"}


async def test_a_message_over_the_schema_size_limit_is_refused_and_others_go_on(
    default_server, connect
):
    from plugbus.plugins.relay import MAX_MESSAGE_BYTES

    client = await connect(default_server, wait_welcome=True)
    await client.call("join-room", {"room": "sizes"})
    for message in (
        "x" * (MAX_MESSAGE_BYTES + 1),
        b"\x00" * (MAX_MESSAGE_BYTES + 1),
        {"parts": ["y" * 1000] * 70},
    ):
        ack = await client.call("send-message", {"message": message, "roomID": "sizes"})
        assert ack["error"]["code"] == "invalid_payload"
        assert (
            ack["error"]["message"]
            == f"payload of 'send-message' is larger than its limit of {MAX_MESSAGE_BYTES} bytes"
        )
        assert ack["error"]["details"]["limit"] == MAX_MESSAGE_BYTES
    assert (await client.call("send-message", {"message": "small", "roomID": "sizes"}))["ok"]
    assert await client.wait_for("receive-message") == ["small"]
