"""Engine.IO v4 heartbeat, with the spec test suite's timings: pingInterval 300 ms,
pingTimeout 200 ms (``server.ping_interval: 0.3``, ``server.ping_timeout: 0.2``).

Spec: socketio/engine.io-protocol README (4th version), "Heartbeat".
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from eio_raw import (
    FAST,
    ConnectionClosed,
    open_polling,
    packets,
    poll,
    post,
    recv_frame,
    shared_server,
    sio_connect_ws,
    ws_connect,
    ws_open,
)

INTERVAL, TIMEOUT = 0.3, 0.2
# Timers on a shared 2-core machine run late; a ping is on time within this much.
SLACK = 0.25


@pytest.fixture
def fast_server(request: pytest.FixtureRequest) -> Any:
    return shared_server(request, "fast", FAST)


async def test_polling_server_pings_every_ping_interval(fast_server: Any) -> None:
    """ "At a given interval (the `pingInterval` value sent in the handshake) the server sends a
    `ping` packet and the client has a few seconds (the `pingTimeout` value) to send a `pong`
    packet back." Three rounds over long-polling, each ping one interval after the last pong."""
    async with httpx.AsyncClient(base_url=fast_server.url) as http:
        sid = (await open_polling(http))["sid"]
        since = time.monotonic()
        for _ in range(3):
            resp = await poll(http, sid, timeout=2)
            waited = time.monotonic() - since
            assert (resp.status_code, resp.text) == (200, "2"), (resp.status_code, resp.text)
            assert INTERVAL - 0.05 <= waited <= INTERVAL + SLACK, f"ping after {waited:.3f} s"
            assert (await post(http, sid, "3")).status_code == 200
            since = time.monotonic()


async def test_polling_ping_timeout_closes_session_by_timer(fast_server: Any) -> None:
    """ "If the server does not receive a `pong` packet back, then it SHOULD consider that the
    connection is closed." A client that stops answering is gone at pingInterval + pingTimeout
    (0.5 s) by the server's own timer, not when it next asks: a GET at 0.9 s gets 400 (the spec's
    test suite, "closes the session upon ping timeout")."""
    async with httpx.AsyncClient(base_url=fast_server.url) as http:
        sid = (await open_polling(http))["sid"]
        await asyncio.sleep(0.9)
        resp = await poll(http, sid, timeout=1)
    assert resp.status_code == 400, (resp.status_code, resp.text)


async def test_polling_unanswered_ping_closes_pending_get(fast_server: Any) -> None:
    """ "If the server does not receive a `pong` packet back, then it SHOULD consider that the
    connection is closed." A client that read the ping but never answered it finds its next
    GET ended by the timeout (close packet or 400) by ~pingTimeout after the ping, not held
    open as if the session were alive."""
    async with httpx.AsyncClient(base_url=fast_server.url) as http:
        sid = (await open_polling(http))["sid"]
        first = await poll(http, sid, timeout=2)
        assert packets(first.text) == ["2"], first.text
        pinged = time.monotonic()
        try:
            resp = await poll(http, sid, timeout=1.5)
        except httpx.TimeoutException:
            raise AssertionError("the GET after an unanswered ping was held 1.5 s") from None
        ended = time.monotonic() - pinged
    assert resp.status_code == 400 or packets(resp.text) == ["1"], (resp.status_code, resp.text)
    assert ended <= TIMEOUT + SLACK + 0.3, f"ended {ended:.3f} s after the ping"


async def test_websocket_server_pings_every_ping_interval(fast_server: Any) -> None:
    """ "At a given interval (the `pingInterval` value sent in the handshake) the server sends a
    `ping` packet" — over a WebSocket-only session too, three rounds."""
    async with ws_connect(fast_server) as ws:
        await ws_open(ws)
        since = time.monotonic()
        for _ in range(3):
            frame = await asyncio.wait_for(ws.recv(), 2)
            waited = time.monotonic() - since
            assert frame == "2", frame
            assert INTERVAL - 0.05 <= waited <= INTERVAL + SLACK, f"ping after {waited:.3f} s"
            await ws.send("3")
            since = time.monotonic()


async def test_websocket_ping_timeout_closes_connection(fast_server: Any) -> None:
    """ "If the server does not receive a `pong` packet back, then it SHOULD consider that the
    connection is closed." A WebSocket client that never answers is closed at about
    pingInterval + pingTimeout (0.5 s)."""
    async with ws_connect(fast_server) as ws:
        await ws_open(ws)
        start = time.monotonic()
        frames: list[Any] = []
        try:
            while True:
                frames.append(await asyncio.wait_for(ws.recv(), 2))
        except TimeoutError:
            raise AssertionError(
                f"still open 2 s after the last frame; frames {frames!r}"
            ) from None
        except ConnectionClosed:
            elapsed = time.monotonic() - start
    assert INTERVAL + TIMEOUT - 0.1 <= elapsed <= INTERVAL + TIMEOUT + SLACK + 0.2, (
        f"closed after {elapsed:.3f} s"
    )
    assert frames[:1] == ["2"], frames


async def test_unsolicited_pong_is_not_an_error(fast_server: Any) -> None:
    """The spec gives the client one duty — "the client has a few seconds (the `pingTimeout`
    value) to send a `pong` packet back" — and names no error for a pong that answers no ping.
    A pong before any ping is ignored: the session goes on, pings keep coming and Socket.IO
    still connects."""
    async with ws_connect(fast_server) as ws:
        await ws_open(ws)
        await ws.send("3")
        assert await asyncio.wait_for(ws.recv(), 2) == "2"
        await ws.send("3")
        await ws.send("40")
        ack = await recv_frame(ws)
    assert ack.startswith("40{"), ack


async def test_socketio_session_stays_alive_answering_pings(fast_server: Any) -> None:
    """ "At a given interval ... the server sends a `ping` packet and the client has a few
    seconds (the `pingTimeout` value) to send a `pong` packet back." A raw client that answers
    every ping stays connected well past several intervals."""
    async with ws_connect(fast_server) as ws:
        await sio_connect_ws(ws)
        deadline = time.monotonic() + 1.5
        pings = 0
        while time.monotonic() < deadline:
            try:
                frame = await asyncio.wait_for(ws.recv(), deadline - time.monotonic())
            except TimeoutError:
                break
            if frame == "2":
                pings += 1
                await ws.send("3")
        await ws.send('421["my-rooms"]')
        ack = await recv_frame(ws)
    assert pings >= 3, pings
    assert ack.startswith("431["), ack
