"""The rooms plugin: joins and leaves with outcomes, name rules and limits, membership notices,
presence, and server-side membership over REST — real servers, real clients, both doors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import assert_problem, assert_refused, retire, settle

from plugbus import ConfigError

TESTS = Path(__file__).resolve().parent
IDENTITY = {"ident": "fixture_plugins.claimed_identity:IdentityPlugin"}
STRICT_ROOMS = {
    "notify_membership": True,
    "max_name_length": 12,
    "max_rooms_per_connection": 3,
    "name_pattern": "[a-z0-9-]+",
}
STRICT = {"plugins": {"modules": IDENTITY, "settings": {"rooms": STRICT_ROOMS}}}


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    """Notices on, names of at most 12 of [a-z0-9-], at most 3 rooms, and identities."""
    from conftest import start_server

    server = start_server(tmp_path_factory.mktemp("strict"), STRICT, env={"PYTHONPATH": str(TESTS)})
    yield server
    retire(server)


# -- join, leave, my-rooms over Socket.IO -----------------------------------------------------


async def test_join_and_leave_acks_say_the_outcome(default_server, connect):
    client = await connect(default_server, wait_welcome=True)
    assert await client.call("join-room", {"room": "a"}) == {
        "ok": True,
        "data": {"room": "a", "joined": True, "rooms": ["a"]},
    }
    assert (await client.call("join-room", {"room": "b"}))["data"] == {
        "room": "b",
        "joined": True,
        "rooms": ["a", "b"],
    }
    assert (await client.call("join-room", {"room": "a"}))["data"] == {
        "room": "a",
        "joined": False,
        "rooms": ["a", "b"],
    }
    assert (await client.call("leave-room", {"room": "a"}))["data"] == {
        "room": "a",
        "left": True,
        "rooms": ["b"],
    }
    assert (await client.call("leave-room", {"room": "a"}))["data"] == {
        "room": "a",
        "left": False,
        "rooms": ["b"],
    }
    assert await client.call("my-rooms") == {"ok": True, "data": {"rooms": ["b"]}}
    assert await client.call("my-rooms", {}) == {"ok": True, "data": {"rooms": ["b"]}}


async def test_seed_join_room_without_ack_still_works(default_server, connect):
    client = await connect(default_server, wait_welcome=True)
    await client.emit("join-room", {"room": "seed-style"})
    await client.emit("send-message", {"message": "hello", "roomID": "seed-style"})
    assert await client.wait_for("receive-message") == ["hello"]
    assert client.received("error") == []


async def test_a_connection_can_be_in_many_rooms_and_hear_each(default_server, connect):
    client = await connect(default_server, wait_welcome=True)
    names = [f"many-{i}" for i in range(10)]
    for name in names:
        assert (await client.call("join-room", {"room": name}))["data"]["joined"] is True
    assert (await client.call("my-rooms"))["data"]["rooms"] == sorted(names)
    for name in names:
        await client.call("send-message", {"message": name, "roomID": name})
    assert await client.wait_for("receive-message", count=10) == names


async def test_my_rooms_refuses_a_payload_with_fields(default_server, connect):
    client = await connect(default_server, wait_welcome=True)
    error = assert_refused(await client.call("my-rooms", {"room": "x"}), "invalid_payload")
    assert error["details"]["errors"][0]["loc"] == "room"


# -- room name rules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["tab\there", "new\nline", "nul\x00", "del\x7f", "c1\x85"],
    ids=["tab", "newline", "nul", "del", "c1"],
)
async def test_default_rules_refuse_control_characters(default_server, connect, name):
    client = await connect(default_server, wait_welcome=True)
    error = assert_refused(await client.call("join-room", {"room": name}), "invalid_payload")
    assert error["details"]["field"] == "room"
    assert error["details"]["setting"] == "name_pattern"
    assert error["details"]["errors"][0]["loc"] == "room"
    assert "pattern" in error["message"]
    assert (await client.call("my-rooms"))["data"]["rooms"] == []


async def test_default_rules_allow_any_other_characters_up_to_128(default_server, connect):
    client = await connect(default_server, wait_welcome=True)
    for name in ["café ☕ #1", "a-b c", "ünïcødé-名前", "x" * 128]:
        assert (await client.call("join-room", {"room": name}))["data"]["joined"] is True, name
    error = assert_refused(await client.call("join-room", {"room": "x" * 129}), "invalid_payload")
    assert error["details"] | {"errors": None} == {
        "event": "join-room",
        "field": "room",
        "setting": "max_name_length",
        "limit": 128,
        "length": 129,
        "errors": None,
    }
    assert "the limit is 128" in error["message"]
    assert_refused(await client.call("join-room", {"room": ""}), "invalid_payload")


async def test_room_named_like_a_connection_is_refused_even_ones_own(default_server, connect):
    a = await connect(default_server, wait_welcome=True)
    b = await connect(default_server, wait_welcome=True)
    for name in [b.sio.get_sid(), a.sio.get_sid()]:
        error = assert_refused(await a.call("join-room", {"room": name}), "not_allowed")
        assert "id of a connection" in error["message"]
        assert error["details"]["field"] == "room"
    assert (await a.call("my-rooms"))["data"]["rooms"] == []
    assert b.sio.connected


async def test_configured_name_length_and_pattern(strict_server, connect):
    client = await connect(strict_server, wait_welcome=True)
    assert (await client.call("join-room", {"room": "ok-name-12ch"}))["data"]["joined"] is True
    error = assert_refused(
        await client.call("join-room", {"room": "thirteen-char"}), "invalid_payload"
    )
    assert error["details"]["limit"] == 12 and error["details"]["setting"] == "max_name_length"
    error = assert_refused(await client.call("join-room", {"room": "Upper"}), "invalid_payload")
    assert error["details"]["pattern"] == "[a-z0-9-]+"
    assert "[a-z0-9-]+" in error["message"]
    # Leaving applies no name rule: a room one cannot be in is simply not left.
    assert (await client.call("leave-room", {"room": "Upper"}))["data"]["left"] is False


async def test_rooms_per_connection_limit(strict_server, connect):
    client = await connect(strict_server, wait_welcome=True)
    for name in ["lim-1", "lim-2", "lim-3"]:
        assert (await client.call("join-room", {"room": name}))["ok"] is True
    error = assert_refused(await client.call("join-room", {"room": "lim-4"}), "not_allowed")
    assert error["details"] | {"event": None} == {
        "event": None,
        "field": "room",
        "setting": "max_rooms_per_connection",
        "limit": 3,
        "rooms": 3,
    }
    assert "at most 3 rooms" in error["message"]
    # Joining a room it is already in is no new room.
    assert (await client.call("join-room", {"room": "lim-1"}))["data"]["joined"] is False
    await client.call("leave-room", {"room": "lim-1"})
    assert (await client.call("join-room", {"room": "lim-4"}))["data"]["rooms"] == [
        "lim-2",
        "lim-3",
        "lim-4",
    ]
    # The same limit holds for a server-side join.
    async with httpx.AsyncClient(base_url=strict_server.url) as http:
        body = assert_problem(
            await http.put(f"/rooms/lim-5/members/{client.sio.get_sid()}"), 403, "not_allowed"
        )
    assert body["details"]["setting"] == "max_rooms_per_connection"


async def test_custom_notice_names_and_no_room_limit(plugbus_server, connect):
    server = await plugbus_server(
        settings={
            "rooms": {
                "notify_membership": True,
                "joined_event": "member-in",
                "left_event": "member-out",
                "max_rooms_per_connection": 0,
                "max_name_length": 300,
            }
        }
    )
    a = await connect(server, wait_welcome=True)
    b = await connect(server, wait_welcome=True)
    for i in range(105):
        assert (await a.call("join-room", {"room": f"r{i}"}))["ok"] is True
    assert len((await a.call("my-rooms"))["data"]["rooms"]) == 105
    assert (await a.call("join-room", {"room": "y" * 300}))["ok"] is True
    await b.call("join-room", {"room": "r0"})
    [notice] = await a.wait_for("member-in")
    assert notice == {"room": "r0", "sid": b.sio.get_sid(), "user": None, "count": 2}
    await b.call("leave-room", {"room": "r0"})
    [notice] = await a.wait_for("member-out")
    assert notice["count"] == 1
    assert a.received("user-joined") == [] and a.received("user-left") == []


@pytest.mark.parametrize(
    ("settings", "key", "fragment"),
    [
        (
            {"name_pattern": "[a-"},
            "plugins.settings.rooms.name_pattern",
            "not a valid regular expression",
        ),
        (
            {"max_name_length": 0},
            "plugins.settings.rooms.max_name_length",
            "greater than or equal to 1",
        ),
        (
            {"max_rooms_per_connection": -1},
            "plugins.settings.rooms.max_rooms_per_connection",
            "greater than or equal to 0",
        ),
        ({"notify": True}, "plugins.settings.rooms.notify", "unknown key"),
        (
            {"joined_event": "member", "left_event": "member"},
            "plugins.settings.rooms",
            "could not tell a join from a leave",
        ),
    ],
    ids=["bad-regex", "zero-length", "negative-limit", "unknown-key", "same-notice-names"],
)
async def test_bad_settings_stop_start_up_naming_the_key(plugbus_server, settings, key, fragment):
    with pytest.raises(ConfigError) as info:
        await plugbus_server(settings={"rooms": settings})
    message = str(info.value)
    assert "plugin 'rooms'" in message and key in message
    assert fragment in message


# -- membership notices -----------------------------------------------------------------------


async def test_notices_are_off_by_default(default_server, connect):
    a = await connect(default_server, wait_welcome=True)
    b = await connect(default_server, wait_welcome=True)
    await a.call("join-room", {"room": "quiet-notices"})
    await b.call("join-room", {"room": "quiet-notices"})
    await b.call("leave-room", {"room": "quiet-notices"})
    await settle(default_server, a)
    assert a.received("user-joined") == [] and a.received("user-left") == []


async def test_join_and_leave_notices_reach_the_others_only(strict_server, connect):
    a = await connect(strict_server, wait_welcome=True)
    b = await connect(strict_server, wait_welcome=True, auth={"user_id": "u-bob", "name": "Bob"})
    await a.call("join-room", {"room": "notices"})
    await b.call("join-room", {"room": "notices"})
    [joined] = await a.wait_for("user-joined")
    assert joined == {"room": "notices", "sid": b.sio.get_sid(), "user": "u-bob", "count": 2}
    await b.call("leave-room", {"room": "notices"})
    [left] = await a.wait_for("user-left")
    assert left == {"room": "notices", "sid": b.sio.get_sid(), "user": "u-bob", "count": 1}
    # A repeated join or leave changes nothing, so it tells nobody anything.
    await b.call("leave-room", {"room": "notices"})
    await a.call("join-room", {"room": "notices"})
    await settle(strict_server, a, b)
    assert len(a.received("user-joined")) == 1 and len(a.received("user-left")) == 1
    assert b.received("user-joined") == [] and b.received("user-left") == []


async def test_disconnect_tells_each_room_it_was_in(strict_server, connect):
    a = await connect(strict_server, wait_welcome=True)
    b = await connect(strict_server, wait_welcome=True)
    c = await connect(strict_server, wait_welcome=True)
    for room in ["dc-x", "dc-y"]:
        await a.call("join-room", {"room": room})
        await c.call("join-room", {"room": room})
    await c.call("join-room", {"room": "dc-z"})
    await b.call("join-room", {"room": "dc-z"})
    gone = c.sio.get_sid()
    await c.sio.disconnect()
    notices = await a.wait_for("user-left", count=2)
    assert sorted(notices, key=lambda n: n["room"]) == [
        {"room": "dc-x", "sid": gone, "user": None, "count": 1},
        {"room": "dc-y", "sid": gone, "user": None, "count": 1},
    ]
    assert await b.wait_for("user-left") == [
        {"room": "dc-z", "sid": gone, "user": None, "count": 1}
    ]
    async with httpx.AsyncClient(base_url=strict_server.url) as http:
        assert (await http.get("/rooms/dc-x")).json()["count"] == 1


# -- presence ---------------------------------------------------------------------------------


async def test_room_members_over_socket_and_rest(strict_server, connect):
    a = await connect(strict_server, wait_welcome=True, auth={"user_id": "u-ada", "name": "Ada"})
    b = await connect(strict_server, wait_welcome=True, auth={"user_id": "u-nameless"})
    c = await connect(strict_server, wait_welcome=True)
    for client in (a, b, c):
        await client.call("join-room", {"room": "presence"})
    expected = {
        "room": "presence",
        "count": 3,
        "members": [
            {"sid": a.sio.get_sid(), "user_id": "u-ada", "name": "Ada"},
            {"sid": b.sio.get_sid(), "user_id": "u-nameless", "name": None},
            {"sid": c.sio.get_sid(), "user_id": None, "name": None},
        ],
    }

    def by_sid(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "members": sorted(data["members"], key=lambda m: m["sid"])}

    ack = await c.call("room-members", {"room": "presence"})
    assert by_sid(ack["data"]) == by_sid(expected)
    async with httpx.AsyncClient(base_url=strict_server.url) as http:
        assert by_sid((await http.get("/rooms/presence")).json()) == by_sid(expected)
        resp = await http.post("/events/room-members", json={"room": "presence"})
        assert by_sid(resp.json()["data"]) == by_sid(expected)
        listed = (await http.get("/rooms")).json()
        assert {"room": "presence", "count": 3} in listed
        assert [r["room"] for r in listed] == sorted(r["room"] for r in listed)
        assert (await http.get("/rooms/nobody-here")).json() == {
            "room": "nobody-here",
            "count": 0,
            "members": [],
        }
    assert (await c.call("room-members", {"room": "nobody-here"}))["data"]["count"] == 0


async def test_room_members_of_a_connection_id_is_refused(default_server, connect):
    a = await connect(default_server, wait_welcome=True)
    b = await connect(default_server, wait_welcome=True)
    assert_refused(await a.call("room-members", {"room": b.sio.get_sid()}), "not_allowed")
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        assert_problem(await http.get(f"/rooms/{b.sio.get_sid()}"), 403, "not_allowed")
        rooms = [r["room"] for r in (await http.get("/rooms")).json()]
    assert a.sio.get_sid() not in rooms and b.sio.get_sid() not in rooms


# -- server-side membership over REST ---------------------------------------------------------


async def test_server_side_join_and_leave_deliver_and_notify(strict_server, connect):
    a = await connect(strict_server, wait_welcome=True)
    b = await connect(strict_server, wait_welcome=True, auth={"user_id": "u-b"})
    sid = b.sio.get_sid()
    await a.call("join-room", {"room": "backend"})
    async with httpx.AsyncClient(base_url=strict_server.url) as http:
        resp = await http.put(f"/rooms/backend/members/{sid}")
        assert resp.status_code == 200
        assert resp.json() == {"room": "backend", "sid": sid, "joined": True, "rooms": ["backend"]}
        assert await a.wait_for("user-joined") == [
            {"room": "backend", "sid": sid, "user": "u-b", "count": 2}
        ]
        assert (await http.put(f"/rooms/backend/members/{sid}")).json()["joined"] is False
        assert (await b.call("my-rooms"))["data"]["rooms"] == ["backend"]
        await http.post("/rooms/backend/messages", json={"message": "to both"})
        assert await b.wait_for("receive-message") == ["to both"]
        resp = await http.delete(f"/rooms/backend/members/{sid}")
        assert resp.json() == {"room": "backend", "sid": sid, "left": True, "rooms": []}
        assert await a.wait_for("user-left") == [
            {"room": "backend", "sid": sid, "user": "u-b", "count": 1}
        ]
        assert (await http.delete(f"/rooms/backend/members/{sid}")).json()["left"] is False
    assert b.received("user-joined") == [] and b.received("user-left") == []


async def test_server_side_membership_refusals_are_problems(default_server, connect):
    a = await connect(default_server, wait_welcome=True)
    b = await connect(default_server, wait_welcome=True)
    sid = a.sio.get_sid()
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        body = assert_problem(await http.put("/rooms/r/members/no-such-sid"), 404, "not_found")
        assert body["details"]["sid"] == "no-such-sid"
        body = assert_problem(await http.delete("/rooms/r/members/no-such-sid"), 404, "not_found")
        assert body["details"]["sid"] == "no-such-sid"
        body = assert_problem(
            await http.put(f"/rooms/bad%0Aname/members/{sid}"), 422, "invalid_payload"
        )
        assert body["details"]["setting"] == "name_pattern"
        body = assert_problem(
            await http.put(f"/rooms/{'x' * 129}/members/{sid}"), 422, "invalid_payload"
        )
        assert body["details"]["limit"] == 128
        body = assert_problem(
            await http.put(f"/rooms/{b.sio.get_sid()}/members/{sid}"), 403, "not_allowed"
        )
        assert "id of a connection" in body["detail"]
    assert (await a.call("my-rooms"))["data"]["rooms"] == []


async def test_own_connection_events_are_refused_over_rest(default_server):
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        for event, payload in [
            ("join-room", {"room": "x"}),
            ("leave-room", {"room": "x"}),
            ("my-rooms", {}),
        ]:
            body = assert_problem(
                await http.post(f"/events/{event}", json=payload), 400, "connection_required"
            )
            assert event in body["detail"]


async def test_openapi_documents_the_room_routes_with_models(default_server):
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        spec = (await http.get("/openapi.json")).json()

    def response_ref(op: dict[str, Any]) -> str:
        return op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit(
            "/", 1
        )[1]

    paths = spec["paths"]
    assert response_ref(paths["/rooms"]["get"]) == "RoomList"
    assert response_ref(paths["/rooms/{room}"]["get"]) == "RoomMembers"
    assert response_ref(paths["/rooms/{room}/members/{sid}"]["put"]) == "MemberJoined"
    assert response_ref(paths["/rooms/{room}/members/{sid}"]["delete"]) == "MemberLeft"
    assert paths["/rooms"]["get"]["tags"] == ["rooms"]
    assert [p["name"] for p in paths["/rooms/{room}/members/{sid}"]["put"]["parameters"]] == [
        "room",
        "sid",
    ]
    schemas = spec["components"]["schemas"]
    assert schemas["RoomList"]["type"] == "array"
    assert set(schemas["Member"]["properties"]) == {"sid", "user_id", "name"}


async def test_rest_scopes_reading_needs_read_and_membership_admin(plugbus_server, connect):
    keys = [
        {"name": "reader", "key": "read-key", "scopes": ["read"]},
        {"name": "ops", "key": "admin-key", "scopes": ["admin"]},
    ]
    server = await plugbus_server(settings={"auth": {"api_keys": keys}})
    client = await connect(server, wait_welcome=True)
    member = f"/rooms/scoped/members/{client.sio.get_sid()}"
    reader, ops = ({"authorization": f"Bearer {key}"} for key in ("read-key", "admin-key"))
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/rooms")).status_code == 401
        assert (await http.get("/rooms", headers=reader)).json() == []
        body = assert_problem(await http.put(member, headers=reader), 403, "insufficient_scope")
        assert body["details"]["required"] == "admin"
        assert_problem(await http.delete(member, headers=reader), 403, "insufficient_scope")
        assert (await http.put(member, headers=ops)).json()["joined"] is True
        assert (await http.get("/rooms/scoped", headers=reader)).json()["count"] == 1


async def test_event_contract_declares_the_notices_only_when_they_are_sent(
    default_server, strict_server
):
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        default_ops = (await http.get("/asyncapi.json")).json()["operations"]
    async with httpx.AsyncClient(base_url=strict_server.url) as http:
        doc = (await http.get("/asyncapi.json")).json()
    for name in ["join-room", "leave-room", "my-rooms", "room-members"]:
        assert f"receive.{name}" in default_ops and f"receive.{name}" in doc["operations"]
    assert "send.user-joined" not in default_ops and "send.user-left" not in default_ops
    assert doc["operations"]["send.user-joined"]["action"] == "send"
    payload = doc["components"]["messages"]["user-left"]["payload"]
    assert set(payload["properties"]) == {"room", "sid", "user", "count"}


# -- switched off -----------------------------------------------------------------------------


async def test_without_rooms_its_events_and_routes_are_gone_and_the_rest_serves(
    plugbus_server, connect
):
    server = await plugbus_server(builtins=["welcome", "relay", "moderation"], record_hooks=False)
    client = await connect(server, wait_welcome=True)
    for event in ["join-room", "leave-room", "my-rooms", "room-members"]:
        error = assert_refused(await client.call(event, {"room": "r"}), "unknown_event")
        assert event not in error["details"]["known"]
    sid = client.sio.get_sid()
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert_problem(await http.get("/rooms"), 404, "not_found")
        assert_problem(await http.get("/rooms/r"), 404, "not_found")
        assert_problem(await http.put(f"/rooms/r/members/{sid}"), 404, "not_found")
        # relay still delivers, to a connection's own id room.
        assert (
            await http.post(f"/rooms/{sid}/messages", json={"message": "direct"})
        ).status_code == 200
        assert [p["name"] for p in (await http.get("/plugins")).json()] == [
            "welcome",
            "relay",
            "moderation",
        ]
    assert await client.wait_for("receive-message") == ["direct"]
