"""Bad input gets a clear error in one shape, over both doors, and nobody else is disturbed."""

from __future__ import annotations

import httpx
import pytest
from conftest import assert_problem, retire, settle

MODERATED = {"plugins": {"settings": {"moderation": {"max_length": 20, "blocked_words": ["darn"]}}}}


def assert_error_shape(error: dict, code: str) -> None:
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)


@pytest.fixture(scope="module")
def moderated_server(tmp_path_factory):
    from conftest import start_server

    server = start_server(tmp_path_factory.mktemp("moderated"), MODERATED)
    yield server
    retire(server)


@pytest.mark.parametrize(
    ("payload", "loc", "fragment"),
    [
        ({"message": "hi"}, "roomID", "Field required"),
        ({"message": 5, "roomID": "r"}, "message", "valid string"),
        ({"message": "hi", "roomID": ""}, "roomID", "at least 1 character"),
        (
            {"message": "hi", "roomID": "r", "roomId": "r"},
            "roomId",
            "Extra inputs are not permitted",
        ),
        ("just a string", "(payload)", "expected an object"),
    ],
    ids=["missing-field", "wrong-type", "empty-room", "unknown-field", "not-an-object"],
)
async def test_invalid_payload_gets_an_error_ack_naming_the_field(
    default_server, connect, payload, loc, fragment
):
    client = await connect(default_server, wait_welcome=True)
    ack = await client.call("send-message", payload)
    assert ack["ok"] is False
    error = ack["error"]
    assert_error_shape(error, "invalid_payload")
    assert error["details"]["event"] == "send-message"
    assert any(e["loc"] == loc and fragment in e["message"] for e in error["details"]["errors"]), (
        error
    )
    assert loc in error["message"] or loc == "(payload)"
    assert client.sio.connected


async def test_invalid_payload_without_ack_gets_an_error_event(default_server, connect):
    client = await connect(default_server, wait_welcome=True)
    await client.emit("join-room", {"rooom": "x"})
    [error] = await client.wait_for("error")
    assert_error_shape(error, "invalid_payload")
    assert error["details"]["event"] == "join-room"
    assert {e["loc"] for e in error["details"]["errors"]} == {"room", "rooom"}


async def test_payload_missing_or_extra_arguments_is_invalid(default_server, connect):
    client = await connect(default_server, wait_welcome=True)
    ack = await client.sio.call("send-message", timeout=5)
    assert_error_shape(ack["error"], "invalid_payload")
    assert "expected a JSON object, got nothing (null)" in ack["error"]["message"]
    ack = await client.sio.call(
        "send-message", ({"message": "a", "roomID": "b"}, "extra"), timeout=5
    )
    assert "must carry one payload argument, got 2" in ack["error"]["message"]


async def test_unknown_event_gets_an_error_ack_and_an_error_event(default_server, connect):
    client = await connect(default_server, wait_welcome=True)
    ack = await client.call("no-such-event", {"x": 1})
    assert_error_shape(ack["error"], "unknown_event")
    assert ack["error"]["details"]["event"] == "no-such-event"
    assert "send-message" in ack["error"]["details"]["known"]
    await client.emit("also-unknown", {})
    [error] = await client.wait_for("error")
    assert_error_shape(error, "unknown_event")
    assert "'also-unknown'" in error["message"]


async def test_bad_input_never_disturbs_other_clients(default_server, connect):
    """A flood of bad events from one client; another keeps chatting, and both stay connected."""
    bad = await connect(default_server, wait_welcome=True)
    good = await connect(default_server, transports=["polling"], wait_welcome=True)
    await good.call("join-room", {"room": "calm"})
    for payload in [
        "x",
        None,
        42,
        [],
        {"message": None},
        {"roomID": "calm"},
        {"message": "x" * 5000, "roomID": "calm"},
    ]:
        await bad.emit("send-message", payload)
        await bad.emit("unknown-" + str(type(payload).__name__), payload)
    await bad.wait_for("error", count=14)
    ack = await good.call("send-message", {"message": "still here", "roomID": "calm"})
    assert ack["ok"] is True
    assert await good.wait_for("receive-message") == ["still here"]
    assert bad.sio.connected and good.sio.connected
    # The oversized message never reached the room.
    await settle(default_server, good)
    assert good.received("receive-message") == ["still here"]
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        assert (await http.get("/health")).json()["status"] == "ok"


@pytest.mark.parametrize(
    ("message", "rule"),
    [("this message is far too long to pass", "max_length"), ("oh DARN it", "blocked_words")],
)
async def test_moderated_message_is_refused_over_socket_with_reason(
    moderated_server, connect, message, rule
):
    sender = await connect(moderated_server, wait_welcome=True)
    member = await connect(moderated_server, wait_welcome=True)
    await member.call("join-room", {"room": "mod"})
    ack = await sender.call("send-message", {"message": message, "roomID": "mod"})
    assert_error_shape(ack["error"], "message_rejected")
    assert ack["error"]["details"]["rule"] == rule
    assert ack["error"]["details"]["field"] == "message"
    await sender.emit("send-message", {"message": message, "roomID": "mod"})
    [error] = await sender.wait_for("error")
    assert error["details"]["rule"] == rule
    await settle(moderated_server, member)
    assert member.received("receive-message") == []
    assert (await sender.call("send-message", {"message": "fine", "roomID": "mod"}))["ok"] is True
    assert await member.wait_for("receive-message") == ["fine"]


@pytest.mark.parametrize(
    ("message", "rule", "fragment"),
    [
        ("this message is far too long to pass", "max_length", "the limit is 20"),
        ("darn", "blocked_words", "blocked word"),
    ],
)
async def test_moderated_message_is_refused_over_rest_with_reason(
    moderated_server, connect, message, rule, fragment
):
    member = await connect(moderated_server, wait_welcome=True)
    await member.call("join-room", {"room": "mod-rest"})
    async with httpx.AsyncClient(base_url=moderated_server.url) as http:
        resp = await http.post("/rooms/mod-rest/messages", json={"message": message})
    body = assert_problem(resp, 403, "message_rejected")
    assert body["details"]["rule"] == rule
    assert fragment in body["detail"]
    await settle(moderated_server, member)
    assert member.received("receive-message") == []


async def test_rest_invalid_body_is_a_problem_naming_the_field(default_server):
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        resp = await http.post("/rooms/r/messages", json={"mesage": "typo"})
        body = assert_problem(resp, 422, "invalid_payload")
        assert {e["loc"] for e in body["details"]["errors"]} == {"body.message", "body.mesage"}
        resp = await http.post(
            "/rooms/r/messages", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert_problem(resp, 422, "invalid_payload")
        resp = await http.post("/events/send-message", json={"message": "x"})
        body = assert_problem(resp, 422, "invalid_payload")
        assert body["details"]["errors"][0]["loc"] == "roomID"


async def test_rest_unknown_event_route_and_method_are_problems(default_server):
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        body = assert_problem(await http.post("/events/nope", json={}), 404, "unknown_event")
        assert body["details"]["event"] == "nope"
        body = assert_problem(await http.get("/no/such/route"), 404, "not_found")
        assert "GET /no/such/route" in body["detail"]
        # GET reads the room's history, POST publishes; nothing answers PUT
        assert_problem(await http.put("/rooms/r/messages", json={}), 405, "method_not_allowed")


async def test_rest_join_room_needs_a_connection(default_server):
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        body = assert_problem(
            await http.post("/events/join-room", json={"room": "x"}), 400, "connection_required"
        )
        assert "join-room" in body["detail"]
