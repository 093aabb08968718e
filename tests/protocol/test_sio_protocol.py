"""Socket.IO v5 over raw WebSocket: namespace connection, events, acks, malformed packets.

Spec: socketio/socket.io-protocol README (5th version), "Exchange protocol" and "Packet
encoding"; the spec's test suite where the README is silent.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from eio_raw import (
    reason_lines,
    recv_frame,
    shared_server,
    sio_connect_ws,
    wait_closed,
    wait_log,
    ws_connect,
    ws_open,
)


@pytest.fixture
def default_server(request: pytest.FixtureRequest) -> Any:
    """The directory's shared server with the embedded defaults (tests/conftest.py's
    test pings: 2 s interval, 5 s timeout)."""
    return shared_server(request, "default")


# "close the connection immediately" / "within milliseconds": well inside a second, with room
# for a loaded 2-core machine.
CLOSE_WITHIN = 0.75


@pytest.fixture(scope="module")
def info_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A default server that logs at info, so a refusal logged at any level is visible."""
    from conftest import retire, start_server

    server = start_server(tmp_path_factory.mktemp("sioinfo"), {"server": {"log_level": "info"}})
    yield server
    retire(server)


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from conftest import retire, start_server

    server = start_server(
        tmp_path_factory.mktemp("siotoken"),
        {
            "plugins": {
                "settings": {
                    "auth": {"mode": "static", "tokens": [{"token": "t0k3n", "user_id": "alice"}]}
                }
            }
        },
    )
    yield server
    retire(server)


async def test_connect_to_main_namespace_is_answered_with_sid(default_server: Any) -> None:
    """ "The server MUST respond with either: a `CONNECT` packet if the connection is successful,
    with the session ID in the payload" — ``40`` gets ``40{"sid":"..."}``, and "the ID of the
    Socket.IO connection will now be different from the ID of the underlying Engine.IO
    connection"."""
    async with ws_connect(default_server) as ws:
        eio_sid = (await ws_open(ws))["sid"]
        await ws.send("40")
        frame = await recv_frame(ws)
    assert frame.startswith("40{"), frame
    sid = json.loads(frame[2:])["sid"]
    assert isinstance(sid, str) and sid and sid != eio_sid, (sid, eio_sid)


async def test_connect_with_payload_is_answered_with_sid(default_server: Any) -> None:
    """ "the `CONNECT` packet now can contain a payload ... In case of success, the server
    responds with a payload contain the ID of the Socket" — ``40{"token":"123"}`` (ignored by
    a server without authentication) gets ``40{"sid":"..."}``."""
    async with ws_connect(default_server) as ws:
        await ws_open(ws)
        await ws.send('40{"token":"123"}')
        frame = await recv_frame(ws)
    assert frame.startswith("40{") and isinstance(json.loads(frame[2:])["sid"], str), frame


async def test_connect_to_unserved_namespace_is_invalid_namespace(default_server: Any) -> None:
    """ "The server MUST respond with either: ... or a `CONNECT_ERROR` packet if the connection
    is not allowed" — the spec's test suite, "should disallow connection to an unknown
    namespace", expects exactly ``44/random,{"message":"Invalid namespace"}``."""
    async with ws_connect(default_server) as ws:
        await ws_open(ws)
        await ws.send("40/random,")
        frame = await recv_frame(ws)
    assert frame == '44/random,{"message":"Invalid namespace"}', frame


async def test_connect_error_payload_is_an_object_with_message(token_server: Any) -> None:
    """ "the payload `CONNECT_ERROR` packet is now an object instead of a plain string"
    (``4{"message":"Not authorized"}``) — a refused CONNECT (no token) gets an object with a
    ``message`` string."""
    async with ws_connect(token_server) as ws:
        await ws_open(ws)
        await ws.send("40")
        frame = await recv_frame(ws)
    assert frame.startswith("44{"), frame
    payload = json.loads(frame[2:])
    assert isinstance(payload, dict) and isinstance(payload.get("message"), str), payload


async def test_second_connect_to_connected_namespace_is_refused_with_a_connect_error(
    default_server: Any,
) -> None:
    """ "CONNECT | 0 | Used during the connection to a namespace." — a namespace this client is
    already connected to cannot be connected to again. The spec names no answer; plugbus
    refuses it the way the spec refuses a namespace, with a CONNECT_ERROR whose payload is an
    object with a ``message`` (not a bare string, as python-socketio sends), and keeps the
    connection it already has (Node would open a second socket on the same namespace)."""
    async with ws_connect(default_server) as ws:
        await sio_connect_ws(ws)
        await ws.send("40")
        refusal = await recv_frame(ws)
        assert refusal.startswith("44"), refusal
        assert json.loads(refusal[2:]) == {"message": "already connected to namespace /"}
        await ws.send('4217["my-rooms"]')
        while not (frame := await recv_frame(ws)).startswith("4317"):
            pass
    assert json.loads(frame[4:])[0]["ok"] is True


async def test_no_connect_within_connect_timeout_closes_connection(serve: Any) -> None:
    """ "At the beginning of a Socket.IO session, the client MUST send a `CONNECT` packet" and
    "If the server does not receive a `CONNECT` packet first, then it MUST close the connection
    immediately." A client that never sends one is closed after ``server.connect_timeout``
    (Node's ``connectTimeout``, default 45 s; 0.5 s here)."""
    server = serve({"server": {"connect_timeout": 0.5}})
    async with ws_connect(server) as ws:
        await ws_open(ws)
        elapsed, _frames = await wait_closed(ws, 2)
    assert 0.4 <= elapsed <= 1.2, elapsed


@pytest.mark.parametrize(
    "first", ['42["my-rooms"]', "4abc", "41", '43["x"]'], ids=["event", "abc", "disconnect", "ack"]
)
async def test_first_packet_not_connect_closes_connection(default_server: Any, first: str) -> None:
    """ "If the server does not receive a `CONNECT` packet first, then it MUST close the
    connection immediately." (the spec's test suite: ``4abc`` → closed)."""
    async with ws_connect(default_server) as ws:
        await ws_open(ws)
        await ws.send(first)
        elapsed, frames = await wait_closed(ws, CLOSE_WITHIN)
    assert elapsed < CLOSE_WITHIN, (elapsed, frames)


async def test_event_with_id_is_acknowledged_with_same_id(default_server: Any) -> None:
    """ "The receiver MUST respond with an `ACK` packet with the same event ID." / "The payload
    is mandatory and MUST be an array (possibly empty)." """
    async with ws_connect(default_server) as ws:
        await sio_connect_ws(ws)
        await ws.send('4212["my-rooms"]')
        frame = await recv_frame(ws)
    assert frame.startswith("4312["), frame
    assert isinstance(json.loads(frame[4:]), list), frame


async def test_binary_event_with_id_is_acknowledged_with_same_id(default_server: Any) -> None:
    """ "The receiver MUST respond with an `ACK` packet with the same event ID." — also for a
    BINARY_EVENT (``451-7[...]`` + attachment)."""
    async with ws_connect(default_server) as ws:
        await sio_connect_ws(ws)
        await ws.send('451-7["broadcast",{"message":{"_placeholder":true,"num":0}}]')
        await ws.send(b"\x01\x02")
        frame = await recv_frame(ws)
    assert frame.startswith(("437[", "467[")), frame


MALFORMED = {
    "abc-payload": "4abc",  # not a Socket.IO packet at all
    "object-payload": "42{}",  # "MUST be a non-empty array"
    "junk-before-array": '42abc["x"]',
    "unknown-type": '49["x"]',  # types are 0-6
    "empty-array": "421[]",  # "MUST be a non-empty array"
    "name-not-string": '421[1,"x"]',  # the event name first
    "arguments-not-json": '421["x",',  # the door's JSON read refuses it
    "huge-ack-id": "42" + "1" * 5000 + '["x"]',  # an id is an integer, not 5000 digits
    "unknown-eio-type": "9hello",  # not an Engine.IO packet type (0-6)
}


@pytest.mark.parametrize("frame", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_packet_after_connect_closes_connection(
    info_server: Any, frame: str
) -> None:
    """For EVENT: "The payload is mandatory and MUST be a non-empty array. If that's not the
    case, then the receiver MUST close the connection." — and a packet that does not decode at
    all (unknown type, junk, an ack id that is no integer) is no better. The connection is
    closed within milliseconds (< 1 s) and the server log has exactly one line saying why
    (naming the reason) and no traceback."""
    async with ws_connect(info_server) as ws:
        await sio_connect_ws(ws)
        offset = len(info_server.log())
        start = time.monotonic()
        await ws.send(frame)
        elapsed, frames = await wait_closed(ws, CLOSE_WITHIN)
        text = await wait_log(info_server, offset)
    assert elapsed < CLOSE_WITHIN, (elapsed, frames)
    assert "Traceback" not in text, text
    lines = reason_lines(text)
    assert len(lines) == 1, f"wanted one line giving the reason, got {lines!r} in:\n{text}"
    assert time.monotonic() - start < 2


async def test_valid_packets_after_malformed_ones_elsewhere_still_work(info_server: Any) -> None:
    """ "Bad input never disconnects other clients" (DESIGN.md): while one connection is closed
    for a malformed packet, another on the same server keeps being served."""
    async with ws_connect(info_server) as good, ws_connect(info_server) as bad:
        await sio_connect_ws(good)
        await sio_connect_ws(bad)
        await bad.send("42{}")
        await wait_closed(bad, CLOSE_WITHIN)  # the offender is gone; the other goes on
        await good.send('421["my-rooms"]')
        ack = await recv_frame(good)
    assert ack.startswith("431["), ack


def test_reason_lines_ignore_access_lines() -> None:
    """The log filter used above: uvicorn's access and connection lines give no reason."""
    text = (
        'INFO:     127.0.0.1:5 - "GET /socket.io/?EIO=4 HTTP/1.1" 400 Bad Request\n'
        "INFO:     connection closed\n"
        "WARNING:  plugbus.wire: closing abc: invalid event payload (not a non-empty array)\n"
    )
    assert reason_lines(text) == [text.splitlines()[2]]
