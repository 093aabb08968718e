"""Engine.IO v4 upgrade from HTTP long-polling to WebSocket.

Spec: socketio/engine.io-protocol README (4th version), "Upgrade" and "WebSocket"; the spec's
test suite ("upgrade" section) where the README is silent.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from eio_raw import (
    ConnectionClosed,
    InvalidStatus,
    open_polling,
    packets,
    poll,
    post,
    recv_frame,
    shared_server,
    ws_connect,
)
from server_state import get_pending, session, until


@pytest.fixture
def default_server(request: pytest.FixtureRequest) -> Any:
    """The directory's shared server with the embedded defaults (tests/conftest.py's
    test pings: 2 s interval, 5 s timeout)."""
    return shared_server(request, "default")


async def probe(ws: Any) -> None:
    await ws.send("2probe")
    assert await recv_frame(ws) == "3probe"


async def test_upgrade_probe_is_answered_with_pong_probe(default_server: Any) -> None:
    """To upgrade the client MUST "send a `ping` packet with the string `probe` in the payload";
    the server MUST "respond with a `pong` packet with the string `probe` in the payload"."""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        sid = (await open_polling(http))["sid"]
        async with ws_connect(default_server, sid=sid) as ws:
            await ws.send("2probe")
            frame = await asyncio.wait_for(ws.recv(), 2)
    assert frame == "3probe", frame


async def test_upgrade_answers_pending_get_with_noop(plugbus_server: Any) -> None:
    """The server MUST "send a `noop` packet to any pending `GET` request (if applicable) to
    cleanly close HTTP long-polling transport" — at once, not at the next ping."""
    server = await plugbus_server(record_hooks=False)
    async with httpx.AsyncClient(base_url=server.url) as http:
        sid = (await open_polling(http))["sid"]
        pending = asyncio.create_task(poll(http, sid))
        await until(get_pending(server, sid), "the GET pending")
        async with ws_connect(server, sid=sid) as ws:
            await probe(ws)
            try:
                got = await asyncio.wait_for(pending, 1)
            except (TimeoutError, httpx.TimeoutException):
                raise AssertionError(
                    "the pending GET was not answered within 1 s of the probe"
                ) from None
    assert (got.status_code, got.text) == (200, "6")


async def test_upgraded_websocket_carries_session_without_stray_noop(
    plugbus_server: Any,
) -> None:
    """After "the client MUST send a `upgrade` packet to complete the upgrade" the WebSocket
    carries the session: a CONNECT sent over it is answered over it, and the first frame is
    that answer — the ``noop`` belongs to the pending GET ("send a `noop` packet to any pending
    `GET` request"), never to the WebSocket."""
    server = await plugbus_server(record_hooks=False)
    async with httpx.AsyncClient(base_url=server.url) as http:
        sid = (await open_polling(http))["sid"]
        pending = asyncio.create_task(poll(http, sid))
        await until(get_pending(server, sid), "the GET pending")
        async with ws_connect(server, sid=sid) as ws:
            await probe(ws)
            await ws.send("5")
            await ws.send("40")
            first = await recv_frame(ws)
            second = await recv_frame(ws)
        pending.cancel()
    assert first.startswith("40{") and json.loads(first[2:])["sid"], first
    assert second == '42["welcome","Welcome to server"]', second


async def test_upgraded_websocket_sends_no_noop_without_pending_get(default_server: Any) -> None:
    """The ``noop`` exists to end a pending GET: the server MUST "send a `noop` packet to any
    pending `GET` request (if applicable) to cleanly close HTTP long-polling transport". With no
    GET pending there is nothing to end, and a noop must not surface on the WebSocket either:
    after ``5`` the first frame is the answer to the CONNECT sent over it."""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        sid = (await open_polling(http))["sid"]
        async with ws_connect(default_server, sid=sid) as ws:
            await probe(ws)
            await ws.send("5")
            await ws.send("40")
            first = await recv_frame(ws)
    assert first.startswith("40{"), first


async def test_packets_buffered_before_upgrade_arrive_over_websocket(plugbus_server: Any) -> None:
    """The client pauses polling "to ensure that no packet gets lost": packets the server
    queued while no GET was pending (the CONNECT answer and the greeting) are delivered over the
    WebSocket once the upgrade completes."""
    server = await plugbus_server(record_hooks=False)
    async with httpx.AsyncClient(base_url=server.url) as http:
        sid = (await open_polling(http))["sid"]
        assert (await post(http, sid, "40")).status_code == 200
        # the answer and the greeting are queued, nobody polls
        await until(lambda: len(session(server, sid).outbox) == 2, "both packets queued")
        async with ws_connect(server, sid=sid) as ws:
            await probe(ws)
            await ws.send("5")
            frames = [await recv_frame(ws), await recv_frame(ws)]
    assert frames[0].startswith("40{"), frames
    assert frames[1] == '42["welcome","Welcome to server"]', frames


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "permessage-deflate"])
async def test_get_after_upgrade_is_400(plugbus_server: Any, compressed: bool) -> None:
    """Once upgraded the session is the WebSocket's: the spec's test suite, "ignores HTTP
    requests with same sid after upgrade" — a GET gets 400 — and the WebSocket still works
    (also with ``server.websocket_compression: true`` and a client that offers deflate)."""
    server = await plugbus_server(
        record_hooks=False, config={"server": {"websocket_compression": compressed}}
    )
    async with httpx.AsyncClient(base_url=server.url) as http:
        sid = (await open_polling(http))["sid"]
        async with ws_connect(server, sid=sid, compression="deflate" if compressed else None) as ws:
            if compressed:
                assert "permessage-deflate" in (
                    ws.response.headers.get("Sec-WebSocket-Extensions") or ""
                )
            await probe(ws)
            await ws.send("5")
            await until(lambda: session(server, sid).transport == "websocket", "the upgrade")
            try:
                resp = await poll(http, sid, timeout=1)
            except httpx.TimeoutException:
                raise AssertionError("a GET after the upgrade was held open, not refused") from None
            await ws.send("40")
            ack = await recv_frame(ws)
            while ack == "6":  # a stray noop is test_upgraded_websocket_sends_no_noop_*'s business
                ack = await recv_frame(ws)
    assert resp.status_code == 400, (resp.status_code, resp.text)
    assert ack.startswith("40{"), ack


async def test_second_websocket_for_upgraded_session_is_accepted_then_closed(
    default_server: Any,
) -> None:
    """ "A client MUST NOT open more than one WebSocket connection per session. Should it
    happen, the server MUST close the WebSocket connection." — it is a WebSocket the server
    closes: the upgrade is accepted (HTTP 101) and then closed, and the first WebSocket still
    carries the session."""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        sid = (await open_polling(http))["sid"]
        async with ws_connect(default_server, sid=sid) as ws:
            await probe(ws)
            await ws.send("5")
            try:
                async with ws_connect(default_server, sid=sid) as second:
                    start = time.monotonic()
                    try:
                        frame = await asyncio.wait_for(second.recv(), 1)
                        raise AssertionError(f"the second WebSocket got {frame!r}")
                    except TimeoutError:
                        raise AssertionError(
                            "the second WebSocket was still open after 1 s"
                        ) from None
                    except ConnectionClosed:
                        assert time.monotonic() - start < 1
            except InvalidStatus as exc:
                raise AssertionError(
                    f"the second WebSocket was refused with HTTP "
                    f"{exc.response.status_code}, not accepted and closed"
                ) from None
            await ws.send("40")
            ack = await recv_frame(ws)
    assert ack.startswith("40{"), ack


async def test_polling_session_without_websocket_transport_offers_no_upgrade(serve: Any) -> None:
    """ "upgrades: The list of available transport upgrades" — with ``server.transports:
    [polling]`` there is none, and a WebSocket for the session is not accepted as one."""
    server = serve({"server": {"transports": ["polling"]}})
    async with httpx.AsyncClient(base_url=server.url) as http:
        data = await open_polling(http)
        assert data["upgrades"] == [], data
        try:
            async with ws_connect(server, sid=data["sid"]) as ws:
                await ws.send("2probe")
                try:
                    frame = await asyncio.wait_for(ws.recv(), 1)
                    raise AssertionError(f"a WebSocket upgrade was served: {frame!r}")
                except ConnectionClosed:
                    pass
        except InvalidStatus as exc:
            assert exc.response.status_code == 400, exc.response.status_code
        # the polling session is untouched by the refused upgrade
        assert (await post(http, data["sid"], "40")).status_code == 200
        got = packets((await poll(http, data["sid"])).text)
    assert got[0].startswith("40{"), got
