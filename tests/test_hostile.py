"""Hostile clients (issue #15), the parts off the wire: each attack the probe found, replayed
against a real server with real clients, refused with a clear error, and someone else still
served.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from typing import Any

import httpx
import jwt
import yaml
from conftest import ROOT, assert_problem, assert_refused, settle

WHOAMI = {"whoami": "fixture_plugins.whoami"}
JWT_SECRET = "hostile-jwt-secret-that-is-long-enough-for-hs256"
PUBLISH_KEY = "hostile-publish-key-41a7"
READ_KEY = "hostile-read-key-9c03"
ADMIN_KEY = "hostile-admin-key-5e88"
KEYS = [
    {"name": "backend", "key": PUBLISH_KEY, "scopes": ["publish"]},
    {"name": "dashboard", "key": READ_KEY, "scopes": ["read"]},
    {"name": "ops", "key": ADMIN_KEY, "scopes": ["admin"]},
]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def token(sub: str, roles: list[str] | None = None) -> str:
    return jwt.encode(
        {"sub": sub, "roles": roles or [], "exp": int(time.time()) + 300},
        JWT_SECRET,
        algorithm="HS256",
    )


def jwt_config(**auth: Any) -> dict[str, Any]:
    return {
        "plugins": {
            "modules": WHOAMI,
            "settings": {
                "auth": {
                    "mode": "jwt",
                    "jwt": {"algorithms": ["HS256"], "secret": JWT_SECRET},
                    **auth,
                }
            },
        }
    }


#: The room rules of the issue's probe (and of config.yaml's example).
RULES = [
    {"pattern": "staff-*", "roles": ["staff"]},
    {"pattern": "private-{user_id}", "anyone_identified": True},
    {"pattern": "private-*"},
]


# -- item 6: presence and posting follow the room's join rules; events declare REST scopes ----


async def test_presence_of_a_restricted_room_follows_its_join_rules(plugbus_server, connect):
    server = await plugbus_server(config=jwt_config(rooms=RULES, api_keys=KEYS))
    staff = await connect(server, auth={"token": token("sam", ["staff"])}, wait_welcome=True)
    outsider = await connect(server, auth={"token": token("eve")}, wait_welcome=True)
    assert (await staff.call("join-room", {"room": "staff-ops"}))["ok"]

    # the probe: a client without the staff role read the sids, user ids and names of staff-ops
    error = assert_refused(
        await outsider.call("room-members", {"room": "staff-ops"}), "forbidden_room"
    )
    assert "may not list the members of room 'staff-ops'" in error["message"]
    assert error["details"]["rule"] == "staff-*"
    listed = (await staff.call("room-members", {"room": "staff-ops"}))["data"]
    assert [m["user_id"] for m in listed["members"]] == ["sam"]
    # a room the outsider may join it may also list, member or not
    assert (await outsider.call("room-members", {"room": "lobby"}))["data"]["count"] == 0

    # ...nor may it post into the room it cannot join (require_membership is off, as shipped)
    error = assert_refused(
        await outsider.call("send-message", {"message": "hi", "roomID": "staff-ops"}),
        "forbidden_room",
    )
    assert "may not post into room 'staff-ops'" in error["message"]
    assert (await outsider.call("send-message", {"message": "hi", "roomID": "lobby"}))["ok"]
    await settle(server, staff)
    assert staff.received("receive-message") == []

    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        # the probe: a publish-only key read the same through POST /events/room-members
        body = assert_problem(
            await http.post(
                "/events/room-members", json={"room": "staff-ops"}, headers=bearer(PUBLISH_KEY)
            ),
            403,
            "insufficient_scope",
        )
        assert body["details"] == {"required": "read", "key": "backend"}
        assert "room-members" in body["detail"]
        assert_problem(
            await http.get("/rooms/staff-ops", headers=bearer(PUBLISH_KEY)),
            403,
            "insufficient_scope",
        )
        for path, call in [
            (
                "/events/room-members",
                lambda h: http.post("/events/room-members", json={"room": "staff-ops"}, headers=h),
            ),
            ("/rooms/staff-ops", lambda h: http.get("/rooms/staff-ops", headers=h)),
        ]:
            resp = await call(bearer(READ_KEY))
            assert resp.status_code == 200, (path, resp.text)
        # messages need publish, events that declare no scope need admin
        assert (
            await http.post(
                "/events/send-message",
                json={"message": "m", "roomID": "lobby"},
                headers=bearer(PUBLISH_KEY),
            )
        ).status_code == 200
        assert_problem(
            await http.post(
                "/events/send-message",
                json={"message": "m", "roomID": "lobby"},
                headers=bearer(READ_KEY),
            ),
            403,
            "insufficient_scope",
        )
        body = assert_problem(
            await http.post("/events/whoami", json={}, headers=bearer(PUBLISH_KEY)),
            403,
            "insufficient_scope",
        )
        assert body["details"]["required"] == "admin"
        assert (
            await http.post("/events/whoami", json={}, headers=bearer(ADMIN_KEY))
        ).status_code == 200
    assert staff.sio.connected and outsider.sio.connected


# -- item 7: an identity substituted into a room-rule glob is matched literally -----------------


async def test_a_wildcard_user_id_does_not_open_other_peoples_private_rooms(
    plugbus_server, connect
):
    server = await plugbus_server(config=jwt_config(rooms=RULES))
    star = await connect(server, auth={"token": token("*")})
    a_star = await connect(server, auth={"token": token("a*")})
    qmark = await connect(server, auth={"token": token("b?b")})
    bracket = await connect(server, auth={"token": token("[b]ob")})
    # the probe: sub "*" joined private-bob, sub "a*" joined private-alice
    for client, room in [
        (star, "private-bob"),
        (a_star, "private-alice"),
        (qmark, "private-bob"),
        (bracket, "private-bob"),
    ]:
        error = assert_refused(await client.call("join-room", {"room": room}), "forbidden_room")
        assert error["details"]["rule"] == "private-*", (room, error)
    # each still owns the room named after its own id, character for character
    for client, room in [
        (star, "private-*"),
        (a_star, "private-a*"),
        (qmark, "private-b?b"),
        (bracket, "private-[b]ob"),
    ]:
        assert (await client.call("join-room", {"room": room}))["ok"], room


# -- item 8: lone surrogates are invalid_payload on both doors -----------------------------------


async def test_lone_surrogates_are_an_invalid_payload_on_both_doors(serve, connect):
    server = serve()
    sender = await connect(server, wait_welcome=True)
    canary = await connect(server, wait_welcome=True)
    await canary.call("join-room", {"room": "r"})
    for payload, loc in [
        ({"message": "\ud800", "roomID": "r"}, "message"),
        ({"message": {"a": ["ok", "x\udfff"]}, "roomID": "r"}, "message.a.1"),
        ({"message": {"k\ud800": 1}, "roomID": "r"}, "message"),
        ({"message": "m", "roomID": "r\ud800"}, "roomID"),
    ]:
        error = assert_refused(await sender.call("send-message", payload), "invalid_payload")
        assert error["details"]["errors"][0]["loc"].startswith(loc), error
        assert "lone UTF-16 surrogate" in error["message"]
    assert_refused(await sender.call("join-room", {"room": "\udc00"}), "invalid_payload")
    raw = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        for path, text, loc in [
            ("/events/send-message", '{"message": "\\ud800", "roomID": "r"}', "message"),
            ("/rooms/r/messages", '{"message": {"a": "\\ud800"}}', "body.message.a"),
            ("/rooms/r/messages", '{"message": ["\\udbff"]}', "body.message.0"),
            ("/rooms/r/messages", '{"message": "x\\ud800y"}', "body.message"),
            ("/moderation/bans", '{"kind": "address", "value": "\\ud800"}', "body.value"),
        ]:
            body = assert_problem(
                await http.post(path, content=text, headers=raw), 422, "invalid_payload"
            )
            assert body["details"]["errors"][0]["loc"] == loc, body
        # a valid pair is one character, and passes
        resp = await http.post(
            "/rooms/r/messages", content='{"message": "\\ud83d\\ude00"}', headers=raw
        )
        assert resp.status_code == 200, resp.text
    assert await canary.wait_for("receive-message") == ["\U0001f600"]
    assert "Traceback" not in server.log()


# -- item 9: sanction durations are numbers, and bounded -----------------------------------------


async def test_sanction_duration_is_bounded_and_strictly_a_number(plugbus_server):
    server = await plugbus_server(settings={"moderation": {"max_sanction_seconds": 3600}})
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        for path in ("/moderation/bans", "/moderation/mutes"):
            # the probe: 2.5e11 s answered 500 (OverflowError)
            body = assert_problem(
                await http.post(
                    path, json={"kind": "address", "value": "10.0.0.1", "duration": 2.5e11}
                ),
                422,
                "invalid_payload",
            )
            assert body["details"]["errors"][0]["loc"] == "body.duration"
            body = assert_problem(
                await http.post(
                    path, json={"kind": "address", "value": "10.0.0.1", "duration": 3601}
                ),
                422,
                "invalid_payload",
            )
            assert body["details"]["limit"] == 3600
            assert body["details"]["setting"] == "plugins.settings.moderation.max_sanction_seconds"
            assert "the limit is 3600" in body["detail"]
            # the probe: true was accepted as a one-second ban
            for wrong in (True, "60", [1]):
                body = assert_problem(
                    await http.post(
                        path, json={"kind": "address", "value": "10.0.0.1", "duration": wrong}
                    ),
                    422,
                    "invalid_payload",
                )
                assert body["details"]["errors"][0]["loc"] == "body.duration", wrong
            resp = await http.post(
                path, json={"kind": "address", "value": "10.0.0.9", "duration": 3600}
            )
            assert resp.status_code == 201, resp.text
        assert len((await http.get("/moderation/bans")).json()) == 1


# -- lock-down: rooms_default closed, and the README's lock-down really locks down ---------------


def readme_lockdown() -> dict[str, Any]:
    """The plugin settings of the README's lock-down block."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Before you expose it") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "the README's lock-down section has no yaml block"
    return yaml.safe_load(block.group(1))  # type: ignore[no-any-return]


async def test_the_readme_lock_down_locks_down(plugbus_server, connect):
    settings = readme_lockdown()
    assert settings["auth"]["rooms_default"] == "closed"
    assert settings["relay"]["require_membership"] is True and settings["relay"]["sender_roles"]
    settings["auth"]["jwt"] = {"algorithms": ["HS256"], "secret": JWT_SECRET}
    server = await plugbus_server(
        settings=settings,
        env={"PLUGBUS_BACKEND_KEY": PUBLISH_KEY, "PLUGBUS_OPS_KEY": ADMIN_KEY},
    )
    staff = await connect(server, auth={"token": token("sam", ["staff"])}, wait_welcome=True)
    user = await connect(server, auth={"token": token("eve")}, wait_welcome=True)
    admin = await connect(server, auth={"token": token("root", ["admin"])}, wait_welcome=True)
    assert (await staff.call("join-room", {"room": "staff-ops"}))["ok"]
    assert (await user.call("join-room", {"room": "lobby"}))["ok"]
    assert (await user.call("join-room", {"room": "private-eve"}))["ok"]
    # closed by default: a room no rule names, and someone else's private room
    for room in ("random", "private-sam", "staff-ops"):
        assert_refused(await user.call("join-room", {"room": room}), "forbidden_room")
    assert (await admin.call("join-room", {"room": "random"}))["ok"]
    # a non-member may not post into staff rooms, nor anyone but admins broadcast
    assert not (await user.call("send-message", {"message": "x", "roomID": "staff-ops"}))["ok"]
    assert_refused(await user.call("broadcast", {"message": "to all"}), "not_allowed")
    assert (await admin.call("broadcast", {"message": "to all"}))["ok"]
    await user.wait_for("receive-message")
    assert staff.received("receive-message") == ["to all"]
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        assert_problem(
            await http.post("/rooms/lobby/messages", json={"message": "x"}), 401, "unauthorized"
        )


async def test_rooms_default_closed_needs_a_rule_and_anyone_opens_one(plugbus_server, connect):
    server = await plugbus_server(
        settings={
            "auth": {"rooms_default": "closed", "rooms": [{"pattern": "lobby", "anyone": True}]}
        }
    )
    anonymous = await connect(server, wait_welcome=True)
    assert (await anonymous.call("join-room", {"room": "lobby"}))["ok"]
    error = assert_refused(
        await anonymous.call("join-room", {"room": "elsewhere"}), "forbidden_room"
    )
    assert "closed by default" in error["message"]
    assert error["details"]["setting"] == "rooms_default"


# -- REST publishing rate limit -----------------------------------------------------------------


async def test_rest_publishing_is_rate_limited_per_key_and_per_address(plugbus_server, connect):
    server = await plugbus_server(
        config={
            "server": {
                "limits": {
                    "rest_publish_per_key": 1,
                    "rest_publish_per_address": 0,
                    "rest_publish_burst": 3,
                }
            },
            "plugins": {
                "settings": {
                    "auth": {
                        "api_keys": KEYS[:1]
                        + [{"name": "other", "key": ADMIN_KEY, "scopes": ["publish"]}]
                    }
                }
            },
        }
    )
    canary = await connect(server, wait_welcome=True)
    await canary.call("join-room", {"room": "r"})
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        statuses = [
            (
                await http.post(
                    "/rooms/r/messages", json={"message": f"m{i}"}, headers=bearer(PUBLISH_KEY)
                )
            ).status_code
            for i in range(3)
        ]
        assert statuses == [200, 200, 200]
        resp = await http.post(
            "/events/send-message",
            json={"message": "over", "roomID": "r"},
            headers=bearer(PUBLISH_KEY),
        )
        body = assert_problem(resp, 429, "rate_limited")
        assert 1 <= int(resp.headers["Retry-After"]) <= 2
        assert body["details"]["per"] == "key" and body["details"]["limit"] == 1
        assert "backend" in body["detail"]
        # another key from the same address is not touched; a socket client neither
        assert (
            await http.post(
                "/rooms/r/messages", json={"message": "other key"}, headers=bearer(ADMIN_KEY)
            )
        ).status_code == 200
        assert (await canary.call("send-message", {"message": "socket", "roomID": "r"}))["ok"]
        # reading is not publishing
        assert (await http.get("/health")).status_code == 200
    assert (await canary.wait_for("receive-message", 5))[-2:] == ["other key", "socket"]

    by_address = await plugbus_server(
        config={"server": {"limits": {"rest_publish_per_address": 1, "rest_publish_burst": 2}}}
    )
    async with httpx.AsyncClient(base_url=by_address.url, timeout=10) as http:
        statuses = [
            (await http.post("/messages", json={"message": "m"})).status_code for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        await asyncio.sleep(1.1)
        assert (await http.post("/messages", json={"message": "m"})).status_code == 200


# -- REST refusals with the right answer --------------------------------------------------------


async def test_rest_refusals_answer_the_right_status(plugbus_server):
    server = await plugbus_server(config={"server": {"max_message_bytes": 5000}})

    async def chunks():
        for _ in range(10):
            yield b'{"message": "' + b"x" * 1000 + b'", '

    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        # the probe: a chunked body over max_message_bytes got 400
        resp = await http.post(
            "/rooms/r/messages", content=chunks(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in resp.request.headers
        body = assert_problem(resp, 413, "payload_too_large")
        assert body["details"]["limit"] == 5000
        # the probe: the trailing-slash redirect built Location from the Host header
        resp = await http.get("/rooms/", headers={"Host": "evil.example"})
        assert "location" not in resp.headers
        assert_problem(resp, 404, "not_found")
        # the probe: Allow on a 405 named one method
        resp = await http.get("/rooms/r/members/some-sid")
        assert_problem(resp, 405, "method_not_allowed")
        assert resp.headers["allow"] == "DELETE, PUT"
        resp = await http.delete("/welcome")
        assert resp.headers["allow"] == "GET, PUT"
        # the probe: the unknown-event error echoed a 900 kB name twice
        resp = await http.post("/events/" + "n" * 6000, json={})
        body = assert_problem(resp, 404, "unknown_event")
        assert len(body["detail"]) < 300 and len(body["details"]["event"]) < 100
        assert "(6000 characters)" in body["detail"]


async def test_an_unknown_event_with_a_huge_name_is_answered_briefly(plugbus_server, connect):
    server = await plugbus_server()
    client = await connect(server, wait_welcome=True)
    name = "e" * 900_000
    ack = await client.call(name, {}, timeout=10)
    error = assert_refused(ack, "unknown_event")
    assert len(repr(error)) < 2000
    assert "(900000 characters)" in error["message"]


async def test_room_names_refuse_look_alikes_and_slashes(plugbus_server, connect):
    server = await plugbus_server()
    client = await connect(server, wait_welcome=True)
    for name, char in [
        ("admin\u202eniamda", "U+202E"),
        ("lob\u200bby", "U+200B"),
        ("\ufefflobby", "U+FEFF"),
        ("lobby\u2066", "U+2066"),
        ("lob\u200dby", "U+200D"),
        ("a\u2028b", "U+2028"),
    ]:
        error = assert_refused(await client.call("join-room", {"room": name}), "invalid_payload")
        assert error["details"]["character"] == char, name
        assert "invisible character" in error["message"]
    error = assert_refused(
        await client.call("join-room", {"room": "team/general"}), "invalid_payload"
    )
    assert "'/'" in error["message"] and "REST" in error["message"]
    assert (await client.call("join-room", {"room": "team-général ☕"}))["ok"]
    assert (await client.call("my-rooms"))["data"]["rooms"] == ["team-général ☕"]


async def test_credentials_in_the_query_string_stay_out_of_the_access_log(serve, connect):
    server = serve({"server": {"log_level": "info"}})
    secret, key = "query-token-6d1f0b", "query-key-a9e2c4"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        assert (await http.get(f"/health?token={secret}&api_key={key}&x=1")).status_code == 200
    await connect(
        server,
        transports=["websocket"],
        auth={"token": secret},
        headers={"Authorization": f"Bearer {secret}"},
    )
    # uvicorn logs the websocket's handshake line, the one that would carry the query, before
    # the connection opens: once "connection open" is in the log, that line is there too
    deadline = time.monotonic() + 5
    while "connection open" not in server.log():
        assert time.monotonic() < deadline, server.log()
        await asyncio.sleep(0.02)
    log = server.log()
    assert "GET /health?token=[redacted]&api_key=[redacted]&x=1" in log
    assert secret not in log and key not in log


async def test_openapi_documents_problem_json_for_every_error_status(default_server):
    async with httpx.AsyncClient(base_url=default_server.url, timeout=10) as http:
        spec = (await http.get("/openapi.json")).json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "instance", "code", "details"} <= set(
        problem["required"]
    )
    operations = [
        (path, method, op) for path, item in spec["paths"].items() for method, op in item.items()
    ]
    assert len(operations) > 20
    for path, method, op in operations:
        for status in ("400", "401", "403", "404", "413", "422", "429"):
            content = op["responses"][status]["content"]
            assert set(content) == {"application/problem+json"}, (path, method, status)
            assert content["application/problem+json"]["schema"] == {
                "$ref": "#/components/schemas/Problem"
            }


def test_a_malformed_sentinel_url_is_refused_at_config_check_with_its_password_masked(tmp_path):
    config = tmp_path / "sentinel.yaml"
    # no db in the path: python-socketio's form is /db/service_name
    config.write_text("server:\n  backend: redis+sentinel://:hunter2@localhost:26379/mymaster\n")
    result = subprocess.run(
        [sys.executable, "-m", "plugbus", "config", "check", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert (
        f"{config}:2: server.backend: Value error, redis+sentinel://:***@localhost:26379/mymaster:"
        " the path is /db/service_name" in result.stderr
    ), result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
