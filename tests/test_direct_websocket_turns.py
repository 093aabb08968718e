"""The direct writer keeps a loop turn's frames and writes them once per connection (#16).

Real servers and raw sockets: frames are read off a TCP socket by hand, and the writes that
made them are counted on the connection's transport (in-process servers run on asyncio's
default loop, ``plugbus serve`` children on uvloop).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct

import httpx

from plugbus.api.wire.writers import DirectWriter, encode_frame

TEXT, CLOSE = 0x1, 0x8


class RawWebsocket:
    """A websocket client over a plain socket: the handshake, masked frames out, and frames
    parsed from each ``recv`` as it came (so one read's content is visible)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.pending: list[tuple[int, bytes]] = []

    @classmethod
    async def open(cls, port: int) -> RawWebsocket:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(
            sock,
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode(),
        )
        ws = cls(sock)
        while b"\r\n\r\n" not in ws.buffer:
            ws.buffer += await ws._recv()
        head, _, ws.buffer = ws.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return ws

    async def _recv(self) -> bytes:
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 1 << 20), 5)
        if not data:
            raise EOFError("the server closed the connection")
        return data

    def _parse(self) -> list[tuple[int, bytes]]:
        frames = []
        buf = self.buffer
        while len(buf) >= 2:
            opcode, n, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, at = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, at = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < at + n:
                break
            frames.append((opcode, buf[at : at + n]))
            buf = buf[at + n :]
        self.buffer = buf
        return frames

    async def read(self) -> list[tuple[int, bytes]]:
        """The whole frames that one ``recv`` completed (reading again while none is)."""
        frames = self._parse()  # what came with the handshake's response
        while not frames:
            self.buffer += await self._recv()
            frames = self._parse()
        return frames

    async def texts(self, count: int) -> list[str]:
        """The next ``count`` text messages, PINGs answered (what a read completed beyond
        them waits)."""
        while len(self.pending) < count:
            for frame in await self.read():
                if frame == (TEXT, b"2"):
                    await self.send("3")  # the server's PING (every 2 s under the test kit)
                else:
                    self.pending.append(frame)
        got, self.pending = self.pending[:count], self.pending[count:]
        assert all(opcode == TEXT for opcode, _ in got), got
        return [payload.decode() for _, payload in got]

    async def send(self, *texts: str) -> None:
        """Each text as one masked frame, all in one ``send`` (one TCP segment)."""
        out = b""
        for text in texts:
            payload, mask = text.encode(), os.urandom(4)
            n = len(payload)
            head = bytes((0x81, 0x80 | n)) if n < 126 else struct.pack("!BBH", 0x81, 0xFE, n)
            out += head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await asyncio.get_running_loop().sock_sendall(self.sock, out)

    async def join(self, room: str) -> str:
        """Engine.IO OPEN, Socket.IO CONNECT (greeting read) and an acked join; the sid."""
        (opened,) = await self.texts(1)
        assert opened.startswith("0{"), opened
        await self.send("40")
        ack, greeting = await self.texts(2)
        assert ack.startswith("40{") and greeting.startswith('42["welcome"'), (ack, greeting)
        await self.send(f'420["join-room",{{"room":"{room}"}}]')
        (joined,) = await self.texts(1)
        assert joined.startswith("430") and json.loads(joined[3:])[0]["ok"] is True, joined
        return str(json.loads(opened[1:])["sid"])

    def close(self) -> None:
        self.sock.close()


class CountingTransport:
    """A connection's real transport, with each write recorded."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.writes: list[bytes] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.real.write(data)  # type: ignore[attr-defined]


def _count_writes(server, eio_sid: str) -> tuple[DirectWriter, CountingTransport]:
    writer = server.app.sio.eio.session_of(eio_sid).writer
    assert isinstance(writer, DirectWriter)
    counting = CountingTransport(writer._transport)
    writer._transport = counting
    return writer, counting


async def test_frames_written_in_one_turn_leave_in_one_write_in_order(plugbus_server) -> None:
    server = await plugbus_server()
    ws = await RawWebsocket.open(server.port)
    try:
        eio_sid = await ws.join("turns")
        session = server.app.sio.eio.session_of(eio_sid)
        writer, counting = _count_writes(server, eio_sid)
        # three messages in this one step of the test's task (the server's loop): one turn
        for n in range(3):
            session.send_message(f'2["note",{n}]')
        assert counting.writes == []  # kept until the turn ends
        frames = await ws.read()
        assert frames == [(TEXT, f'42["note",{n}]'.encode()) for n in range(3)]  # one recv
        assert counting.writes == [b"".join(encode_frame(f'42["note",{n}]') for n in range(3))]

        # pipelined acked events, in one TCP segment: their acks too, when handled in one turn
        counting.writes.clear()
        await ws.send(
            *(f'42{n}["send-message",{{"message":"m{n}","roomID":"elsewhere"}}]' for n in range(5))
        )
        acks = await ws.texts(5)
        assert [a[: len(f"43{n}")] for n, a in enumerate(acks)] == [f"43{n}" for n in range(5)]
        assert all(json.loads(a[3:])[0]["ok"] is True for a in acks), acks
        assert b"".join(counting.writes) == b"".join(encode_frame(a) for a in acks)
        assert len(counting.writes) < 5, counting.writes
        assert writer.open
    finally:
        ws.close()


async def test_pipelined_acks_reach_a_served_client_in_one_read(serve) -> None:
    # plugbus serve (uvloop): five acked events in one TCP segment, handled in one loop turn,
    # answered with one write, read with one recv
    server = serve({"plugins": {"disabled": ["moderation"]}})
    ws = await RawWebsocket.open(server.port)
    try:
        await ws.join("turns")
        await ws.send(
            *(f'42{n}["send-message",{{"message":"m{n}","roomID":"elsewhere"}}]' for n in range(5))
        )
        frames = await ws.read()
        assert [p.decode()[: len(f"43{n}")] for n, (_, p) in enumerate(frames)] == [
            f"43{n}" for n in range(5)
        ], frames
    finally:
        ws.close()


async def test_an_error_packet_then_the_close_arrive_in_that_order(plugbus_server) -> None:
    server = await plugbus_server()
    ws = await RawWebsocket.open(server.port)
    try:
        eio_sid = await ws.join("turns")
        session = server.app.sio.eio.session_of(eio_sid)
        writer, counting = _count_writes(server, eio_sid)
        # an error event and the close, in the same turn: the kept frame goes out first
        session.send_message('2["error",{"code":"bye","message":"closing"}]')
        session.close("server disconnect")
        frames: list[tuple[int, bytes]] = []
        while not frames or frames[-1][0] != CLOSE:
            frames += await ws.read()
        assert frames[0] == (TEXT, b'42["error",{"code":"bye","message":"closing"}]')
        assert [op for op, _ in frames] == [TEXT, CLOSE], frames
        assert struct.unpack("!H", frames[1][1][:2])[0] == 1000
        assert counting.writes[0] == encode_frame(
            '42["error",{"code":"bye","message":"closing"}]'
        ), counting.writes
        assert not writer.open
        assert session.send_message("2[]") is None and writer.write_frame(b"x") is False
    finally:
        ws.close()


async def test_kept_bytes_past_the_limit_drop_the_client_once(plugbus_server) -> None:
    server = await plugbus_server(config={"server": {"limits": {"send_buffer_bytes": 65536}}})
    ws = await RawWebsocket.open(server.port)
    other = await RawWebsocket.open(server.port)
    try:
        eio_sid = await ws.join("turns")
        await other.join("turns")
        session = server.app.sio.eio.session_of(eio_sid)
        writer, counting = _count_writes(server, eio_sid)
        frame = encode_frame("4" + "x" * 20_000)
        results = [writer.write_frame(frame) for _ in range(5)]
        # 3 frames (60 KB) are under the limit; the 4th passes it: dropped, then gone
        assert results == [True, True, True, False, False]
        assert writer.dropped and session.state == "closed"
        assert counting.writes == []  # nothing kept was written
        async with httpx.AsyncClient() as http:  # this test's loop serves the request
            health = (await http.get(server.url + "/health")).json()
        assert health["wire"]["closed"].get("slow_consumer") == 1, health["wire"]["closed"]
        try:
            while True:
                for opcode, _payload in await ws.read():
                    assert opcode != TEXT or len(_payload) < 1000, "a kept frame was written"
        except (EOFError, ConnectionResetError):
            pass  # aborted
        # the other client is untouched
        await other.send('421["send-message",{"message":"still","roomID":"elsewhere"}]')
        (ack,) = await other.texts(1)
        assert json.loads(ack[3:])[0]["ok"] is True
    finally:
        ws.close()
        other.close()


async def test_fan_out_in_one_turn_reaches_every_client_in_order(plugbus_server) -> None:
    server = await plugbus_server()
    clients = [await RawWebsocket.open(server.port) for _ in range(20)]
    try:
        sids = [await c.join("fan") for c in clients]
        counters = [_count_writes(server, sid)[1] for sid in sids]
        bus = server.app.bus
        for n in range(10):
            await bus.emit("receive-message", f"m{n}", room="fan")
        for client, counting in zip(clients, counters, strict=True):
            got = await client.texts(10)
            assert got == [f'42["receive-message","m{n}"]' for n in range(10)], got
            assert b"".join(counting.writes) == b"".join(encode_frame(t) for t in got)
            assert len(counting.writes) == 1, counting.writes  # one write per recipient
    finally:
        for c in clients:
            c.close()


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    return (
        bytes((0x80 | opcode, 0x80 | len(payload)))
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


async def test_a_pong_or_close_reply_uvicorn_writes_follows_the_kept_frames(
    plugbus_server,
) -> None:
    # uvicorn answers a websocket PING (and the client's close) from its data_received, which
    # can run while a turn's frames are kept: they must reach the client before its answer
    server = await plugbus_server()
    ws = await RawWebsocket.open(server.port)
    try:
        eio_sid = await ws.join("turns")
        session = server.app.sio.eio.session_of(eio_sid)
        writer = session.writer
        assert isinstance(writer, DirectWriter)
        proto = writer._proto
        session.send_message('2["note","first"]')
        proto.data_received(_masked(0x9, b"are you there"))  # as if read in this turn
        session.send_message('2["note","second"]')
        proto.data_received(_masked(0x8, struct.pack("!H", 1000)))
        frames: list[tuple[int, bytes]] = []
        while not frames or frames[-1][0] != CLOSE:
            frames += await ws.read()
        assert frames == [
            (TEXT, b'42["note","first"]'),
            (0xA, b"are you there"),
            (TEXT, b'42["note","second"]'),
            (CLOSE, struct.pack("!H", 1000)),
        ], frames
        assert writer.write_frame(encode_frame("too late")) is False
    finally:
        ws.close()
