"""A TCP proxy on a loopback port, for tests that cut clients off as a network would.

Clients connect to the proxy; each connection is piped to the current upstream port. ``cut()``
aborts every piped connection on both sides at once (an RST, no websocket close frame) — the
server sees its transport fail, the client sees its connection die and reconnects through the
proxy. ``upstream`` may be changed at any time: new connections go to the new port, as behind a
load balancer that sends a reconnecting client to another node. ``delay`` (seconds) holds each
chunk that long before passing it on (one after another), either way: a slow link.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER 0: close() sends an RST instead of a FIN
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """``await TcpProxy.start(upstream_port)``; ``url``; ``cut()``; ``close()``."""

    def __init__(self, upstream: int, delay: float = 0.0) -> None:
        self.upstream = upstream
        self.delay = delay
        self.port = 0
        self.accepting = True
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(cls, upstream: int, delay: float = 0.0) -> TcpProxy:
        proxy = cls(upstream, delay)
        proxy._server = await asyncio.start_server(proxy._accept, "127.0.0.1", 0)
        proxy.port = proxy._server.sockets[0].getsockname()[1]
        return proxy

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.accepting:
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            _abort(writer)
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await src.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if pair in self._pairs:
                self._pairs.discard(pair)
                for w in pair:
                    with contextlib.suppress(Exception):
                        w.close()

    def cut(self) -> int:
        """Abort every connection now (both sides); return how many there were."""
        pairs = list(self._pairs)
        self._pairs.clear()
        for client, upstream in pairs:
            _abort(client)
            _abort(upstream)
        return len(pairs)

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
