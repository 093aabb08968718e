"""Engine.IO v4 over WebSocket: framing, binary, close, invalid packets, maxPayload.

Spec: socketio/engine.io-protocol README (4th version), "WebSocket" and "Packet encoding";
the spec's test suite where the README is silent.
"""

from __future__ import annotations

from typing import Any

import pytest
from eio_raw import (
    SMALL,
    RawWebSocket,
    recv_frame,
    shared_server,
    sio_connect_ws,
    wait_closed,
    ws_connect,
    ws_open,
)


@pytest.fixture
def default_server(request: pytest.FixtureRequest) -> Any:
    """The directory's shared server with the embedded defaults (tests/conftest.py's
    test pings: 2 s interval, 5 s timeout)."""
    return shared_server(request, "default")


@pytest.fixture
def small_ws_server(request: pytest.FixtureRequest) -> Any:
    return shared_server(request, "small", SMALL)


async def test_websocket_binary_payload_is_sent_as_is(default_server: Any) -> None:
    """ "Binary payloads are sent as is, without modification." — a BINARY_EVENT's attachment
    arrives as a binary WebSocket frame holding exactly the bytes (no type prefix, no base64),
    in the frame after its placeholder packet."""
    async with ws_connect(default_server) as ws:
        await sio_connect_ws(ws)
        await ws.send(
            '451-["broadcast",{"message":{"_placeholder":true,"num":0},"include_self":true}]'
        )
        await ws.send(b"\x01\x02\x03\x04")
        frames = [await recv_frame(ws), await recv_frame(ws)]
    assert frames[0] == '451-["receive-message",{"_placeholder":true,"num":0}]', frames
    assert frames[1] == b"\x01\x02\x03\x04", frames


async def test_websocket_packets_each_in_own_frame(default_server: Any) -> None:
    """ "Each packet (read or write) is sent its own WebSocket frame." — the CONNECT answer and
    the greeting that follows it are two frames, in that order, never one frame with both or a
    polling-style \\x1e payload."""
    async with ws_connect(default_server) as ws:
        await ws_open(ws)
        await ws.send("40")
        first, second = await recv_frame(ws), await recv_frame(ws)
    assert first.startswith("40{") and "\x1e" not in first, first
    assert second == '42["welcome","Welcome to server"]', second


async def test_raw_tcp_client_parses_frames_read_together(default_server: Any) -> None:
    """ "Each Engine.IO packet is sent in its own WebSocket frame." A bare TCP client gets the
    CONNECT answer and the greeting back to back and finds two whole, well-formed frames in
    the bytes, whichever way they were cut into TCP reads (nothing split oddly or glued)."""
    ws = await RawWebSocket.connect(default_server)
    try:
        [(opcode, data)] = await ws.recv_frames(1)
        assert opcode == 0x1 and data.startswith(b"0{"), data
        ws.send_text("40")
        await ws.writer.drain()
        chunk = b""
        while len(RawWebSocket.parse(chunk)[0]) < 2:  # until both are here, in however many reads
            chunk += await ws.read_once()
        frames, rest = RawWebSocket.parse(chunk)
    finally:
        await ws.close()
    assert rest == b"", (frames, rest)
    assert [op for op, _ in frames] == [0x1, 0x1], frames
    assert frames[0][1].startswith(b"40{"), frames
    assert frames[1][1] == b'42["welcome","Welcome to server"]', frames


async def test_websocket_close_packet_from_client_closes_session(default_server: Any) -> None:
    """ "close | 1 | Used to indicate that a transport can be closed." The spec's test suite,
    "forcefully closes the session": a ``1`` from the client makes the server close the
    WebSocket (within 1 s)."""
    async with ws_connect(default_server) as ws:
        await ws_open(ws)
        await ws.send("1")
        elapsed, _frames = await wait_closed(ws, 1)
    assert elapsed < 1, elapsed


@pytest.mark.parametrize("frame", ["abc", "9", "7hello", ""], ids=["abc", "9", "7hello", "empty"])
async def test_websocket_invalid_packet_closes_session(default_server: Any, frame: str) -> None:
    """An Engine.IO packet is a type 0–6 ("Here is the list of available packet types") and an
    optional payload; the spec's test suite, "closes the session upon invalid packet format":
    anything else closes the WebSocket, within 1 s."""
    async with ws_connect(default_server) as ws:
        await ws_open(ws)
        await ws.send(frame)
        elapsed, frames = await wait_closed(ws, 0.75)
    assert elapsed < 0.75, frames


async def test_websocket_message_over_max_payload_closes_session(small_ws_server: Any) -> None:
    """ "maxPayload: The maximum number of bytes per chunk" (here 1000); a larger message than
    the server accepts closes the connection (README: larger Engine.IO messages close it)."""
    async with ws_connect(small_ws_server) as ws:
        data = await ws_open(ws)
        assert data["maxPayload"] == 1000
        await ws.send("4" + "x" * 2000)
        elapsed, _frames = await wait_closed(ws, 1)
    assert elapsed < 1, elapsed
