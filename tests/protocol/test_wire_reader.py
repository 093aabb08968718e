"""The direct websocket reader (plugbus.api.wire.reader) at its edges, against a real server
over raw TCP: frames cut across reads, glued into one read, and every kind of frame it leaves
to websockets (fragments, pings, compressed messages, close, errors), where the answer and the
order of messages must be what websockets alone gives.

RFC 6455 §5.2 (base framing), §5.4 (fragmentation), §5.5 (control frames "MAY be injected in
the middle of a fragmented message"), §5.6 (text must be UTF-8; §7.4.1: 1007 for data "not
consistent with the type of the message"), §7.4.1 1009 (a message "too big to process"),
RFC 7692 §6 (RSV1 marks a compressed message).
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from typing import Any

import httpx
import pytest
from eio_raw import SMALL, RawWebSocket, recv_frame, shared_server, ws_connect

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


@pytest.fixture
def default_server(request: pytest.FixtureRequest) -> Any:
    return shared_server(request, "default")


@pytest.fixture
def small_ws_server(request: pytest.FixtureRequest) -> Any:
    return shared_server(request, "small", SMALL)


@pytest.fixture
def deflate_server(request: pytest.FixtureRequest) -> Any:
    return shared_server(request, "deflate", {"server": {"websocket_compression": True}})


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """One masked client frame (RFC 6455 §5.2)."""
    mask = os.urandom(4)
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        head = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def event(ack: int, message: str = "hi") -> bytes:
    """A send-message event asking for ack ``ack``, as one text frame."""
    body = json.dumps(["send-message", {"message": message, "roomID": "reader"}])
    return frame(OP_TEXT, f"42{ack}{body}".encode())


async def joined(server: Any) -> RawWebSocket:
    """A raw websocket past Engine.IO's open, Socket.IO's CONNECT and the greeting."""
    ws = await RawWebSocket.connect(server)
    _, opened = await next_frame(ws)
    assert opened.startswith(b"0{"), opened
    ws.writer.write(frame(OP_TEXT, b"40"))
    connected, greeting = await next_frame(ws), await next_frame(ws)
    assert connected[1].startswith(b"40{") and greeting[1].startswith(b'42["welcome"'), (
        connected,
        greeting,
    )
    return ws


async def next_frame(ws: RawWebSocket, timeout: float = 3.0) -> tuple[int, bytes]:
    """The next server frame (one read may bring several: the rest wait for the next call)."""
    pending: list[tuple[int, bytes]] = getattr(ws, "pending", [])
    if not pending:
        pending = await ws.recv_frames(1, timeout=timeout)
    ws.pending = pending[1:]  # type: ignore[attr-defined]
    return pending[0]


async def acks(ws: RawWebSocket, count: int) -> list[int]:
    """The ack ids of the next ``count`` acks (pings answered; other frames skipped)."""
    ids: list[int] = []
    while len(ids) < count:
        opcode, data = await next_frame(ws)
        assert opcode in (OP_TEXT, OP_PONG), (opcode, data)
        if data == b"2":
            ws.writer.write(frame(OP_TEXT, b"3"))
        elif data.startswith(b"43"):
            ids.append(int(data[2 : data.index(b"[")]))
    return ids


async def closed_with(ws: RawWebSocket) -> int:
    """Read until the server's close frame; its status code."""
    while True:
        opcode, data = await next_frame(ws, timeout=5)
        if opcode == OP_CLOSE:
            return int(struct.unpack("!H", data[:2])[0])


def reader_health(server: Any) -> dict[str, Any]:
    wire = httpx.get(server.url + "/health", timeout=5).json()["wire"]
    reader: dict[str, Any] = wire["websocket_reader"]
    return reader


async def test_the_shipped_config_reads_frames_directly(default_server: Any) -> None:
    before = reader_health(default_server)
    assert before["path"] == "direct", before
    assert before["protocol"] == "plugbus.api.wire.reader.ReaderProtocol", before
    assert before["unmask"].startswith("websockets.speedups"), before
    ws = await joined(default_server)
    try:
        ws.writer.write(event(1))
        assert await acks(ws, 1) == [1]
    finally:
        await ws.close()
    after = reader_health(default_server)
    assert after["connections_total"]["direct"] == before["connections_total"]["direct"] + 1


async def test_several_frames_in_one_read_are_answered_in_order(default_server: Any) -> None:
    ws = await joined(default_server)
    try:
        ws.writer.write(b"".join(event(i) for i in range(1, 21)))
        assert await acks(ws, 20) == list(range(1, 21))
    finally:
        await ws.close()


@pytest.mark.parametrize("cut", [1, 2, 5, 9, -1], ids=["head", "length", "mask", "payload", "last"])
async def test_a_frame_split_over_two_reads(default_server: Any, cut: int) -> None:
    ws = await joined(default_server)
    try:
        # a 16-bit length (126) so that a cut can fall inside the extended length too
        data = event(1, "x" * 200) + event(2)
        first_len = len(event(1, "x" * 200))
        at = first_len + cut if cut < 0 else cut
        ws.writer.write(data[:at])
        await ws.writer.drain()
        await asyncio.sleep(0.1)  # the server reads the first part on its own
        ws.writer.write(data[at:])
        assert await acks(ws, 2) == [1, 2]
    finally:
        await ws.close()


async def test_a_large_frame_in_many_reads(default_server: Any) -> None:
    ws = await joined(default_server)
    try:
        data = event(1, "y" * 200_000)  # a 64-bit length; arrives in several reads
        for at in range(0, len(data), 7000):
            ws.writer.write(data[at : at + 7000])
            await ws.writer.drain()
        ws.writer.write(event(2))
        assert await acks(ws, 2) == [1, 2]
    finally:
        await ws.close()


async def test_binary_attachment_is_delivered(default_server: Any) -> None:
    ws = await joined(default_server)
    try:
        head = '451-["broadcast",{"message":{"_placeholder":true,"num":0},"include_self":true}]'
        ws.writer.write(
            frame(OP_TEXT, head.encode()) + frame(OP_BINARY, b"\x00\x01\xfe\xff") + event(7)
        )
        got: list[tuple[int, bytes]] = []
        while len(got) < 3:
            f = await next_frame(ws)
            if f[1] != b"2":
                got.append(f)
    finally:
        await ws.close()
    assert (OP_TEXT, b'451-["receive-message",{"_placeholder":true,"num":0}]') in got, got
    assert (OP_BINARY, b"\x00\x01\xfe\xff") in got, got
    assert got[-1][1].startswith(b"437["), got  # the event after it, answered after it


async def test_fragmented_message_then_plain_frames_keep_order(default_server: Any) -> None:
    before = reader_health(default_server)["switched_to_websockets"].get("fragmented message", 0)
    ws = await joined(default_server)
    try:
        body = b"422" + json.dumps(["send-message", {"message": "hi", "roomID": "r"}]).encode()
        ws.writer.write(
            event(1)
            + frame(OP_TEXT, body[:10], fin=False)
            + frame(OP_CONT, body[10:])
            + event(3)
            + event(4)
        )
        assert await acks(ws, 4) == [1, 2, 3, 4]
    finally:
        await ws.close()
    after = reader_health(default_server)["switched_to_websockets"].get("fragmented message", 0)
    assert after == before + 1


async def test_ping_mid_stream_is_answered_and_order_kept(default_server: Any) -> None:
    ws = await joined(default_server)
    try:
        ws.writer.write(event(1) + frame(OP_PING, b"are you there") + event(2) + event(3))
        pong = None
        ids: list[int] = []
        while len(ids) < 3 or pong is None:
            opcode, data = await next_frame(ws)
            if opcode == OP_PONG:
                pong = data
            elif data.startswith(b"43"):
                ids.append(int(data[2 : data.index(b"[")]))
    finally:
        await ws.close()
    assert pong == b"are you there"
    assert ids == [1, 2, 3]


async def test_invalid_utf8_text_is_closed_with_1007(default_server: Any) -> None:
    ws = await joined(default_server)
    try:
        ws.writer.write(event(1) + frame(OP_TEXT, b'42["send-message","\xff\xfe"]'))
        assert await acks(ws, 1) == [1]  # what came before it is answered
        assert await closed_with(ws) == 1007
    finally:
        await ws.close()


async def test_a_frame_above_the_size_limit_is_closed_with_1009(small_ws_server: Any) -> None:
    ws = await joined(small_ws_server)
    try:
        ws.writer.write(event(1) + event(2, "z" * 5000))  # max_message_bytes is 1000
        assert await acks(ws, 1) == [1]
        assert await closed_with(ws) == 1009
    finally:
        await ws.close()


async def test_a_compressed_message_is_read_by_websockets(deflate_server: Any) -> None:
    before = reader_health(deflate_server)["switched_to_websockets"]
    async with ws_connect(deflate_server, compression="deflate") as ws:
        opened = await recv_frame(ws)
        assert opened.startswith("0{")
        await ws.send("40")
        assert (await recv_frame(ws)).startswith("40{")
        assert (await recv_frame(ws)).startswith('42["welcome"')
        for i in range(1, 4):  # each compressed (RSV1), as websockets' client sends them
            await ws.send(f'42{i}["send-message",{{"message":"squeeze","roomID":"r"}}]')
        got = [await recv_frame(ws) for _ in range(3)]
    assert [int(m[2 : m.index("[")]) for m in got] == [1, 2, 3], got
    after = reader_health(deflate_server)["switched_to_websockets"]
    key = "RSV bit set (compressed message)"
    assert after.get(key, 0) == before.get(key, 0) + 1, (before, after)


async def test_close_frame_is_answered_and_the_session_ends(default_server: Any) -> None:
    ws = await joined(default_server)
    try:
        ws.writer.write(event(1) + frame(OP_CLOSE, struct.pack("!H", 1000) + b"bye"))
        assert await acks(ws, 1) == [1]
        assert await closed_with(ws) == 1000
        assert await asyncio.wait_for(ws.reader.read(), 5) == b""  # and the TCP connection ends
    finally:
        await ws.close()


async def test_messages_that_suspend_keep_order_and_run_as_the_connection_task(
    serve: Any, redis_server: Any
) -> None:
    """With the Redis backend every event awaits Redis (its client needs a current task for
    its timeouts), so each message suspends in its eager step and the connection's task
    finishes it; the json log format sets a context variable before that suspension and
    resets it after, which fails if the steps ran in different contexts."""
    server = serve({"server": {"backend": redis_server.url, "log_format": "json"}})
    ws = await joined(server)
    try:
        ws.writer.write(
            frame(OP_TEXT, b'421["join-room",{"room":"reader"}]')
            + b"".join(event(i) for i in range(2, 22))
        )
        assert await acks(ws, 21) == list(range(1, 22))
    finally:
        await ws.close()
    health = reader_health(server)
    assert health["connections_total"] == {"direct": 1, "websockets": 0}, health
    log = server.log()
    assert "Traceback" not in log and "inside a task" not in log, log[-3000:]


async def test_a_session_upgraded_from_polling_is_read_directly(default_server: Any) -> None:
    """python-socketio's client starts on long-polling and upgrades; once websockets' parser
    has taken the probe and the upgrade packet and waits between messages, the direct reader
    takes the connection over (nothing is re-parsed, nothing lost)."""
    import socketio

    before = reader_health(default_server)["connections_total"]["direct"]
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(default_server.url, transports=["polling", "websocket"], wait_timeout=5)
    try:
        for _ in range(50):
            if client.transport() == "websocket":
                break
            await asyncio.sleep(0.05)
        assert client.transport() == "websocket"
        await asyncio.sleep(0.2)  # the server's side of the upgrade has ended
        for i in range(5):
            ack = await client.call(
                "send-message", {"message": f"m{i}", "roomID": "upgraded"}, timeout=5
            )
            assert isinstance(ack, dict) and "ok" in ack, ack
    finally:
        await client.disconnect()
    after = reader_health(default_server)
    assert after["connections_total"]["direct"] == before + 1, after


async def test_messages_right_behind_the_upgrade_are_taken_over_in_order(
    default_server: Any,
) -> None:
    """The upgrade packet and two events in one TCP write: websockets parses all three before
    the engine has finished the upgrade; the reader takes the two queued events over, ahead of
    what it reads itself, and everything is answered in order."""
    from eio_raw import open_polling, poll, post

    before = reader_health(default_server)["connections_total"]["direct"]
    async with httpx.AsyncClient(base_url=default_server.url, timeout=5) as http:
        sid = (await open_polling(http))["sid"]
        assert (await post(http, sid, "40")).text == "ok"
        assert "40{" in (await poll(http, sid)).text
        ws = await RawWebSocket.connect(default_server, sid=sid)
        try:
            ws.writer.write(frame(OP_TEXT, b"2probe"))
            assert await next_frame(ws) == (OP_TEXT, b"3probe")
            ws.writer.write(frame(OP_TEXT, b"5") + event(1) + event(2))
            await ws.writer.drain()
            ws.writer.write(event(3))
            assert await acks(ws, 3) == [1, 2, 3]
        finally:
            await ws.close()
    after = reader_health(default_server)
    assert after["connections_total"]["direct"] == before + 1, after


async def test_the_compatible_setting_reads_through_uvicorns_queue(serve: Any) -> None:
    """``server.websocket_writer: compatible`` gives uvicorn its own protocol class: messages
    come through its receive queue, in order, and /health says so."""
    server = serve({"server": {"websocket_writer": "compatible"}})
    health = reader_health(server)
    assert health["path"] == "uvicorn" and health["protocol"] is None, health
    assert "compatible" in health["unavailable_reason"], health
    ws = await joined(server)
    try:
        ws.writer.write(b"".join(event(i) for i in range(1, 6)))
        assert await acks(ws, 5) == [1, 2, 3, 4, 5]
    finally:
        await ws.close()
    after = reader_health(server)
    assert after["connections_total"] == {"direct": 0, "websockets": 0}, after
    assert after["handshakes_in_process"] == {"direct": 0, "websockets": 0, "refused": 0}, after
    assert "websocket frames read through uvicorn's receive queue" in server.log()
