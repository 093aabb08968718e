"""The wire's limits against hostile clients (issue #15 items 1, 2, 4, 5 and the wire refusals):
each test replays the original attack with raw Engine.IO / Socket.IO frames against a real
server and asserts the bound, the offender's clear close or error, and that others go on."""

from __future__ import annotations

import asyncio
import time

import httpx
import websockets
from conftest import Server

WS = "ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"


async def _joined_ws(server: Server, room: str | None = None) -> websockets.ClientConnection:
    """A raw websocket that finished the Engine.IO and Socket.IO handshakes (and joined ``room``)."""
    ws = await websockets.connect(WS.format(port=server.port), compression=None)
    assert (await ws.recv()).startswith("0{")
    await ws.send("40")
    assert (await ws.recv()).startswith("40{")
    if room is not None:
        await ws.send(f'421["join-room",{{"room":"{room}"}}]')
        while True:  # the greeting may come first
            reply = await asyncio.wait_for(ws.recv(), 5)
            if reply.startswith("431"):
                break
    return ws


async def _closed_within(ws: websockets.ClientConnection, seconds: float) -> float:
    """Read until the server closes ``ws``; return how long it took."""
    start = time.monotonic()
    try:
        while True:
            await asyncio.wait_for(ws.recv(), seconds)
    except websockets.ConnectionClosed:
        return time.monotonic() - start


async def _health(server: Server) -> dict:
    async with httpx.AsyncClient() as http:
        return (await http.get(server.url + "/health")).json()


async def test_a_binary_packet_announcing_too_many_attachments_closes_the_connection(
    serve, connect
) -> None:
    server = serve({"server": {"limits": {"max_binary_attachments": 4}}})
    canary = await connect(server, wait_welcome=True)
    ws = await _joined_ws(server)
    await ws.send(
        '451000000000-1["send-message",{"message":{"_placeholder":true,"num":0},"roomID":"r"}]'
    )
    assert await _closed_within(ws, 2) < 1
    assert "announce 1 to 4 attachments, not 1000000000" in server.log()
    assert (await canary.call("join-room", {"room": "still"}))["ok"] is True


async def test_binary_attachments_are_bounded_in_bytes_by_max_message_bytes(serve) -> None:
    # the original attack: a header for many attachments, then 1 MB frames until memory ran out
    server = serve(
        {"server": {"max_message_bytes": 200_000, "limits": {"max_binary_attachments": 10}}}
    )
    ws = await _joined_ws(server)
    await ws.send('4510-["send-message",{"message":{"_placeholder":true,"num":0},"roomID":"r"}]')
    for _ in range(3):
        await ws.send(b"\x00" * 90_000)
    assert await _closed_within(ws, 2) < 1
    assert "binary attachments larger than 200000 bytes in all" in server.log()


async def test_an_attachment_outside_a_binary_packet_and_bad_placeholders_close_the_connection(
    serve,
) -> None:
    server = serve()
    for frames in (
        [b"\x01\x02"],
        ['451-["send-message",{"message":{"_placeholder":true,"num":7},"roomID":"r"}]', b"x"],
        ['451-["send-message",{"message":{"_placeholder":true,"num":"a"},"roomID":"r"}]', b"x"],
    ):
        ws = await _joined_ws(server)
        for frame in frames:
            await ws.send(frame)
        assert await _closed_within(ws, 2) < 1, frames
    log = server.log()
    assert "a binary attachment outside a binary packet" in log
    assert log.count("placeholders do not match") == 2
    assert "Traceback" not in log


async def test_a_long_polling_client_that_stops_polling_is_dropped_past_the_send_buffer(
    serve, connect
) -> None:
    # the original attack: join a busy room over long-polling, never GET again, keep answering
    # pings (here the pings are far apart), while the queue grows
    server = serve(
        {
            "server": {
                "ping_interval": 60,
                "ping_timeout": 30,
                "limits": {"send_buffer_bytes": 65536},
            },
            "plugins": {"disabled": ["moderation"]},
        }
    )
    base = f"{server.url}/socket.io/?EIO=4&transport=polling"
    async with httpx.AsyncClient(timeout=5) as http:
        sid = (await http.get(base)).text.split('"sid":"')[1].split('"')[0]
        url = f"{base}&sid={sid}"
        assert (await http.post(url, content=b"40")).text == "ok"
        await http.get(url)  # CONNECT ack (and the greeting)
        assert (await http.post(url, content=b'421["join-room",{"room":"busy"}]')).text == "ok"
        await http.get(url)
        reader = await connect(server, transports=["websocket"], wait_welcome=True)
        await reader.call("join-room", {"room": "busy"})
        for n in range(10):
            resp = await http.post(
                server.url + "/rooms/busy/messages", json={"message": f"{n}:" + "x" * 10_000}
            )
            assert resp.status_code == 200
        await reader.wait_for("receive-message", count=10)
        assert "dropping a slow long-polling client" in server.log()
        assert (await http.get(url)).status_code == 400  # the session is gone
    health = await _health(server)
    assert health["connections"] == 1 and health["wire"]["closed"]["slow_consumer"] == 1


async def test_sessions_that_never_connect_are_bounded_and_counted(plugbus_server) -> None:
    # the original attack: thousands of Engine.IO sessions that never send a Socket.IO CONNECT
    server = await plugbus_server(
        config={
            "server": {
                "connect_timeout": 30,
                "limits": {"max_connections": 300, "max_connections_per_address": 5},
            }
        }
    )
    base = f"{server.url}/socket.io/?EIO=4&transport=polling"
    async with httpx.AsyncClient(timeout=5) as http:
        answers = [await http.get(base) for _ in range(8)]
    assert [r.status_code for r in answers] == [200] * 5 + [503] * 3
    assert (
        "too many sessions from your address are waiting to join a namespace (limit 5)"
        in answers[-1].text
    )
    health = await _health(server)
    assert (health["sessions"], health["connections"]) == (5, 0)
    assert health["wire"]["closed"]["session_limit"] == 3


async def test_an_oversized_polling_post_gets_413_and_the_session_ends(plugbus_server) -> None:
    server = await plugbus_server(config={"server": {"max_message_bytes": 10_000}})
    base = f"{server.url}/socket.io/?EIO=4&transport=polling"
    async with httpx.AsyncClient(timeout=5) as http:
        sid = (await http.get(base)).text.split('"sid":"')[1].split('"')[0]
        resp = await http.post(f"{base}&sid={sid}", content=b"4" + b"x" * 20_000)
        assert resp.status_code == 413
        assert resp.json() == {
            "code": 3,
            "message": "Bad request: payload larger than maxPayload (10000 bytes)",
        }
        assert (await http.get(f"{base}&sid={sid}")).status_code == 400


async def test_a_second_connect_to_a_joined_namespace_gets_a_connect_error_object(
    plugbus_server,
) -> None:
    server = await plugbus_server()
    ws = await _joined_ws(server)
    await ws.send("40")
    while True:
        frame = await asyncio.wait_for(ws.recv(), 5)
        if frame.startswith("44"):
            break
    assert frame == '44{"message":"already connected to namespace /"}'
    await ws.send('421["my-rooms"]')
    while not (frame := await asyncio.wait_for(ws.recv(), 5)).startswith("431"):
        pass
    assert '"ok":true' in frame  # still connected and served
    await ws.close()


async def test_a_flood_of_malformed_frames_closes_the_offender_and_spares_the_canary(
    serve, connect
) -> None:
    # the original attack: 10,000 `4xyz` per second, each logging a traceback
    server = serve()
    canary = await connect(server, transports=["websocket"], wait_welcome=True)
    await canary.call("join-room", {"room": "calm"})
    ws = await _joined_ws(server)
    try:
        for _ in range(1000):
            await ws.send("4xyz")
    except websockets.ConnectionClosed:
        pass
    assert await _closed_within(ws, 2) < 1
    log = server.log()
    assert log.count("protocol violation") == 1 and "Traceback" not in log
    start = time.monotonic()
    ack = await canary.call("send-message", {"message": "hi", "roomID": "calm"})
    assert ack["ok"] is True and time.monotonic() - start < 0.5
