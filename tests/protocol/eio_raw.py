"""Raw Engine.IO v4 / Socket.IO v5 clients for the conformance tests in this directory.

Nothing here knows how plugbus is built: every helper speaks the wire as the specifications
describe it (long-polling with httpx, WebSocket with the ``websockets`` package, and a bare
RFC 6455 client over asyncio streams for tests that must see bytes as they arrive).

This module is deliberately not a ``conftest.py``: ``tests/`` is not a package, so a second
``conftest`` module would replace ``tests/conftest.py`` in ``sys.modules`` during collection
and break every ``from conftest import ...`` in the test files collected after this directory.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import struct
import time
from typing import Any
from urllib.parse import urlencode

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

RS = "\x1e"  # the record separator between packets of one long-polling payload

__all__ = [
    "FAST",
    "RS",
    "SMALL",
    "ConnectionClosed",
    "InvalidStatus",
    "RawWebSocket",
    "eio_path",
    "log_since",
    "open_polling",
    "packets",
    "poll",
    "post",
    "reason_lines",
    "recv_frame",
    "shared_server",
    "sio_connect_ws",
    "wait_closed",
    "wait_log",
    "ws_connect",
    "ws_open",
    "ws_url",
]


# --- servers shared by the whole directory ------------------------------------------------

#: pingInterval 300 ms / pingTimeout 200 ms, as the spec's test suite runs its reference server;
#: an odd maxPayload so the open packet's value is seen to come from the config.
FAST = {"server": {"ping_interval": 0.3, "ping_timeout": 0.2, "max_message_bytes": 123456}}
#: A small maxPayload; a short shutdown so a request left hanging does not hold up the teardown.
SMALL = {"server": {"max_message_bytes": 1000, "shutdown_timeout": 1}}

_servers: dict[str, Any] = {}


def shared_server(request: Any, name: str, config: dict[str, Any] | None = None) -> Any:
    """One plugbus server per ``name`` for the whole test run, started on first use and stopped
    when the run ends: the directory's modules share them instead of each starting its own
    (a start costs about a second of a shared 2-core machine)."""
    server = _servers.get(name)
    if server is None or server.proc.poll() is not None:
        from conftest import start_server

        server = start_server(request.getfixturevalue("tmp_path_factory").mktemp(name), config)
        request.config.add_cleanup(server.stop)
        _servers[name] = server
    return server


def eio_path(**params: Any) -> str:
    """``/socket.io/?EIO=4&transport=polling`` with ``params`` (None drops a key)."""
    query = {"EIO": "4", "transport": "polling"}
    query.update({k: str(v) for k, v in params.items() if v is not None})
    for key in [k for k, v in params.items() if v is None]:
        query.pop(key, None)
    return "/socket.io/?" + urlencode(query)


def ws_url(server: Any, **params: Any) -> str:
    return f"ws://127.0.0.1:{server.port}" + eio_path(**{"transport": "websocket", **params})


def packets(body: str) -> list[str]:
    """The packets of one long-polling payload."""
    return body.split(RS) if body else []


async def open_polling(http: httpx.AsyncClient) -> dict[str, Any]:
    """A long-polling handshake; returns the ``open`` packet's JSON payload."""
    resp = await http.get(eio_path())
    assert resp.status_code == 200, resp.text
    assert resp.text.startswith("0"), resp.text
    data: dict[str, Any] = json.loads(resp.text[1:])
    return data


async def poll(http: httpx.AsyncClient, sid: str, timeout: float = 3.0) -> httpx.Response:
    return await http.get(eio_path(sid=sid), timeout=timeout)


async def post(
    http: httpx.AsyncClient, sid: str, body: str | bytes, timeout: float = 3.0, **kwargs: Any
) -> httpx.Response:
    return await http.post(eio_path(sid=sid), content=body, timeout=timeout, **kwargs)


def ws_connect(server: Any, compression: str | None = None, **params: Any) -> Any:
    """``websockets`` connect to the Engine.IO endpoint (no client-side WS pings)."""
    return connect(
        ws_url(server, **params),
        compression=compression,
        open_timeout=3,
        ping_interval=None,
        close_timeout=1,
    )


async def recv_frame(ws: ClientConnection, timeout: float = 3.0, answer_pings: bool = True) -> Any:
    """The next frame that is not an Engine.IO ping (pings are answered with a pong)."""
    while True:
        frame = await asyncio.wait_for(ws.recv(), timeout)
        if answer_pings and frame == "2":
            await ws.send("3")
            continue
        return frame


async def ws_open(ws: ClientConnection) -> dict[str, Any]:
    """Read the ``open`` packet that starts a WebSocket-only session."""
    frame = await asyncio.wait_for(ws.recv(), 3)
    assert isinstance(frame, str) and frame.startswith("0"), frame
    data: dict[str, Any] = json.loads(frame[1:])
    return data


async def sio_connect_ws(ws: ClientConnection) -> str:
    """Engine.IO open, Socket.IO CONNECT to ``/`` and the greeting; returns the Socket.IO sid."""
    await ws_open(ws)
    await ws.send("40")
    ack = await recv_frame(ws)
    assert isinstance(ack, str) and ack.startswith("40{"), ack
    greeting = await recv_frame(ws)
    assert greeting == '42["welcome","Welcome to server"]', greeting
    sid: str = json.loads(ack[2:])["sid"]
    return sid


async def wait_closed(ws: ClientConnection, timeout: float) -> tuple[float, list[Any]]:
    """Read (answering pings) until the server closes the connection; returns the seconds it
    took and the frames read meanwhile. Fails when still open after ``timeout``."""
    start = time.monotonic()
    frames: list[Any] = []
    try:
        while True:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                raise AssertionError(f"still open after {timeout} s; frames: {frames!r}")
            try:
                frame = await asyncio.wait_for(ws.recv(), left)
            except TimeoutError:
                raise AssertionError(f"still open after {timeout} s; frames: {frames!r}") from None
            if frame == "2":
                await ws.send("3")
            frames.append(frame)
    except ConnectionClosed:
        return time.monotonic() - start, frames


# --- the server log ---------------------------------------------------------------------

_ACCESS = re.compile(r'^\w+:\s+\d+\.\d+\.\d+\.\d+:\d+ - "|connection (open|closed)$')
# Words a line uses to say why a packet was refused; the tests count such lines.
REASON_WORDS = (
    "invalid",
    "malformed",
    "unknown",
    "unsupported",
    "bad ",
    "not a",
    "empty",
    "too long",
    "too large",
    "too big",
    "expected",
    "missing",
    "overflow",
    "must",
    "cannot",
    "can't",
    "refus",
    "reject",
    "violat",
    "protocol",
    "not allowed",
)


def log_since(server: Any, offset: int) -> str:
    return str(server.log()[offset:])


def reason_lines(text: str) -> list[str]:
    """Lines of ``text`` that say why something was refused (uvicorn's access and
    connection lines left out)."""
    return [
        line
        for line in text.splitlines()
        if line.strip()
        and not _ACCESS.search(line)
        and any(word in line.lower() for word in REASON_WORDS)
    ]


_log_sentinels = 0


async def wait_log(server: Any, offset: int, timeout: float = 1.0) -> str:
    """The log written after ``offset``, once a line giving a reason is in it (or ``timeout``),
    up to a sentinel: a request made afterwards, whose access line (the server logs at info)
    comes after any second (duplicate) line the first one could bring."""
    global _log_sentinels
    deadline = time.monotonic() + timeout
    while not reason_lines(log_since(server, offset)) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    _log_sentinels += 1
    marker = f"log-sentinel={_log_sentinels}"
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get(f"/health?{marker}")).status_code == 200
    deadline = time.monotonic() + 5
    while marker not in (text := log_since(server, offset)):
        assert time.monotonic() < deadline, f"no access line for the sentinel in:\n{text}"
        await asyncio.sleep(0.02)
    return text[: text.rfind("\n", 0, text.index(marker)) + 1]  # up to the sentinel's line


# --- a bare RFC 6455 client over asyncio streams -------------------------------------------


class RawWebSocket:
    """A minimal client-side WebSocket (text/binary/close frames, no extensions) over a raw
    TCP stream, so a test can choose when it reads and see how frames share TCP reads."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, buffered: bytes):
        self.reader = reader
        self.writer = writer
        self.buffer = buffered

    @classmethod
    async def connect(cls, server: Any, **params: Any) -> RawWebSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        path = eio_path(**{"transport": "websocket", **params})
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await asyncio.wait_for(reader.read(4096), 3)
            assert chunk, f"connection closed during the handshake: {head!r}"
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        assert b" 101 " in status + b" ", head
        return cls(reader, writer, rest)

    def send_text(self, text: str) -> None:
        self.writer.write(self.frame(0x1, text.encode()))

    @staticmethod
    def frame(opcode: int, payload: bytes) -> bytes:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    @staticmethod
    def parse(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
        """Complete (unmasked, unfragmented) server frames at the start of ``buf``, and the rest."""
        frames: list[tuple[int, bytes]] = []
        while len(buf) >= 2:
            opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
            start = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, start = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, start = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < start + n:
                break
            frames.append((opcode, buf[start : start + n]))
            buf = buf[start + n :]
        return frames, buf

    async def read_once(self, timeout: float = 3.0) -> bytes:
        """Exactly one read from the socket (after anything left from the handshake)."""
        if self.buffer:
            data, self.buffer = self.buffer, b""
            return data
        data = await asyncio.wait_for(self.reader.read(65536), timeout)
        assert data, "the server closed the connection"
        return data

    async def recv_frames(self, count: int, timeout: float = 3.0) -> list[tuple[int, bytes]]:
        deadline = time.monotonic() + timeout
        frames: list[tuple[int, bytes]] = []
        buf = b""
        while len(frames) < count:
            buf += await self.read_once(max(0.01, deadline - time.monotonic()))
            got, buf = self.parse(buf)
            frames += got
        self.buffer = buf
        return frames

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
