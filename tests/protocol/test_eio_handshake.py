"""Engine.IO v4 handshake: the ``open`` packet and the refusals of a bad handshake.

Spec: socketio/engine.io-protocol README (4th version), sections "Handshake" and
"HTTP long-polling / Query parameters"; the refusal bodies follow Node's engine.io
(``{"code": N, "message": ...}``: 0 Transport unknown, 1 Session ID unknown,
2 Bad handshake method, 5 Unsupported protocol version).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from eio_raw import (
    FAST,
    ConnectionClosed,
    InvalidStatus,
    eio_path,
    open_polling,
    shared_server,
    ws_connect,
    ws_open,
)

OPEN_KEYS = {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}


@pytest.fixture
def default_server(request: pytest.FixtureRequest) -> Any:
    """The directory's shared server with the embedded defaults (tests/conftest.py's
    test pings: 2 s interval, 5 s timeout)."""
    return shared_server(request, "default")


@pytest.fixture
def subsecond_server(request: pytest.FixtureRequest) -> Any:
    return shared_server(request, "fast", FAST)


def assert_refusal(resp: httpx.Response, code: int, word: str) -> None:
    """HTTP 400 with Node's JSON error body: the code, and a message that names the problem."""
    assert resp.status_code == 400, (resp.status_code, resp.text)
    try:
        body = resp.json()
    except ValueError:
        raise AssertionError(f"not a JSON error body: {resp.text!r}") from None
    assert isinstance(body, dict) and body.get("code") == code, body
    assert word in str(body.get("message", "")).lower(), body


async def test_open_packet_has_exactly_the_handshake_keys(default_server: Any) -> None:
    """ "If the server accepts the connection, then it MUST respond with an `open` packet with
    the following JSON-encoded payload: sid, upgrades, pingInterval, pingTimeout, maxPayload"."""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        data = await open_polling(http)
    assert set(data) == OPEN_KEYS, data
    assert isinstance(data["sid"], str) and data["sid"]


async def test_open_packet_intervals_are_configured_seconds_in_milliseconds(
    default_server: Any,
) -> None:
    """ "pingInterval: The ping interval ... (in milliseconds)"; "pingTimeout: The ping timeout
    ... (in milliseconds)". The test servers run with ping_interval 2 s, ping_timeout 5 s."""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        data = await open_polling(http)
    assert (data["pingInterval"], data["pingTimeout"]) == (2000, 5000), data


async def test_open_packet_subsecond_intervals_are_exact_milliseconds(
    subsecond_server: Any,
) -> None:
    """ "pingInterval: The ping interval, used in the heartbeat mechanism (in milliseconds)".
    ``server.ping_interval: 0.3`` is 300 ms, not 0 (a client that believes 0 pings out)."""
    async with httpx.AsyncClient(base_url=subsecond_server.url) as http:
        data = await open_polling(http)
    assert data["pingInterval"] == 300, data
    assert data["pingTimeout"] == 200, data


async def test_open_packet_max_payload_is_max_message_bytes(subsecond_server: Any) -> None:
    """ "maxPayload: The maximum number of bytes per chunk, used by the client to aggregate
    packets into payloads" — the configured ``server.max_message_bytes``."""
    async with httpx.AsyncClient(base_url=subsecond_server.url) as http:
        data = await open_polling(http)
    assert data["maxPayload"] == 123456, data


async def test_polling_open_packet_lists_websocket_upgrade(default_server: Any) -> None:
    """ "upgrades: The list of available transport upgrades" — a polling session may upgrade
    to websocket."""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        data = await open_polling(http)
    assert data["upgrades"] == ["websocket"], data


async def test_websocket_open_packet_lists_no_upgrade(default_server: Any) -> None:
    """ "upgrades: The list of available transport upgrades" — nothing is better than a
    WebSocket-only session (the spec's test suite expects ``[]``), and the open packet is the
    first WebSocket frame, with the same keys as over polling."""
    async with ws_connect(default_server) as ws:
        data = await ws_open(ws)
    assert set(data) == OPEN_KEYS, data
    assert data["upgrades"] == [], data


async def test_handshake_without_transport_is_400(default_server: Any) -> None:
    """ "transport — Mandatory, the name of the transport." / "If a mandatory query parameter
    is missing, then the server MUST respond with an HTTP 400 error status.\""""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        resp = await http.get(eio_path(transport=None))
    assert_refusal(resp, 0, "transport")


async def test_handshake_with_unknown_transport_is_400(default_server: Any) -> None:
    """ "transport | polling | Mandatory, the name of the transport." An unknown transport
    names none (Node: 400, code 0, "Transport unknown")."""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        resp = await http.get(eio_path(transport="carrier-pigeon"))
    assert_refusal(resp, 0, "transport")


async def test_handshake_without_eio_is_400(default_server: Any) -> None:
    """ "EIO | 4 | Mandatory, the version of the protocol." / "If a mandatory query parameter
    is missing, then the server MUST respond with an HTTP 400 error status.\""""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        resp = await http.get(eio_path(EIO=None))
    assert_refusal(resp, 5, "version")


@pytest.mark.parametrize("eio", ["3", "abc", "5"])
async def test_handshake_with_unsupported_eio_is_400(default_server: Any, eio: str) -> None:
    """ "EIO | 4 | Mandatory, the version of the protocol." Any other value is a version this
    server does not speak (the spec's test suite: ``EIO=abc`` → 400; Node: code 5,
    "Unsupported protocol version")."""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        resp = await http.get(eio_path(EIO=eio))
    assert_refusal(resp, 5, "version")


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_request_with_unknown_sid_is_400(default_server: Any, method: str) -> None:
    """ "The server MUST return an HTTP 400 response if the session ID (from the `sid` query
    parameter) is not known." (stated for both sending and receiving data)."""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        resp = await http.request(
            method, eio_path(sid="no-such-session"), content="4hello" if method == "POST" else None
        )
    assert_refusal(resp, 1, "session")


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH"])
async def test_handshake_with_other_method_than_get_is_400(
    default_server: Any, method: str
) -> None:
    """ "To establish a connection, the client MUST send an HTTP `GET` request to the server"
    — any other method on the handshake URL is refused with 400 (the spec's test suite checks
    POST and PUT; Node: code 2, "Bad handshake method"), not 405."""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        resp = await http.request(method, eio_path())
    assert_refusal(resp, 2, "method")


@pytest.mark.parametrize(
    "params",
    [{"EIO": None}, {"EIO": "3"}, {"transport": None}],
    ids=["no-EIO", "EIO-3", "no-transport"],
)
async def test_websocket_without_mandatory_parameter_is_closed(
    default_server: Any, params: dict[str, Any]
) -> None:
    """ "If a mandatory query parameter is missing, then the server MUST close the WebSocket
    connection." Refusing the upgrade request with the HTTP rule's 400 ("If a mandatory query
    parameter is missing, then the server MUST respond with an HTTP 400 error status") or
    closing before any open packet both count; opening a session, or another status, does not."""
    try:
        async with ws_connect(default_server, **params) as ws:
            try:
                frame = await ws.recv()
            except ConnectionClosed:
                return
            raise AssertionError(f"the server opened a session: {frame!r}")
    except InvalidStatus as exc:
        assert exc.response.status_code == 400, exc.response.status_code


async def test_websocket_with_unknown_sid_is_refused(default_server: Any) -> None:
    """ "sid — Optional, depending on whether it's an upgrade from HTTP long-polling or not."
    A WebSocket naming a session that does not exist upgrades nothing: "The server MUST return
    an HTTP 400 response if the session ID (from the `sid` query parameter) is not known" (the
    upgrade is an HTTP GET; Node answers it 400), or it is closed, never given a session."""
    try:
        async with ws_connect(default_server, sid="no-such-session") as ws:
            await ws.send("2probe")
            try:
                frame = await ws.recv()
            except ConnectionClosed:
                return
            raise AssertionError(f"the server answered on an unknown session: {frame!r}")
    except InvalidStatus as exc:
        assert exc.response.status_code == 400, exc.response.status_code
