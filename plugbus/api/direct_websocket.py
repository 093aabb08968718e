"""Engine.IO over websocket without a writer task: frames go straight to the socket's transport.

python-engineio 4.15 gives every websocket connection a writer task draining an asyncio queue,
and wraps every received message in a new task under ``asyncio.wait_for``. For a broadcast to
a room of thousands that is a queue put and a task wake-up per recipient; for an acked event it
is two extra tasks and a wake-up. This module is the seam that removes both, behind three small
pieces:

* :func:`encode_frame` frames a message once (server frames are unmasked, so the bytes are the
  same for every recipient);
* :class:`DirectWriter` writes frames to one uvicorn websocket connection's asyncio transport,
  synchronously, in call order, so packets can never overtake each other;
* :class:`DirectSocket`, python-engineio's ``AsyncSocket`` with ``send`` going to the writer
  once the websocket is up, a receive loop without per-message tasks, and ``close`` closing
  the websocket itself (so Engine.IO's ping monitor ends a silent connection without a
  per-message timer).

:class:`DirectEngineIOServer` makes python-engineio create ``DirectSocket`` sessions.
The direct path is taken only where the websocket is served by uvicorn's websockets-sansio
protocol (uvicorn's default, and what ``plugbus serve`` asks for): its ``send`` is already a
synchronous ``transport.write`` behind a flow-control wait, which is what this module does
without the wait. Any other server or websocket implementation keeps python-engineio's own
writer task (tested). Long-polling is unchanged.

Memory: an idle connection also sheds what the direct path no longer needs — python-engineio's
send queue once flushed, the sleeping ping task (pings come from a timer), uvicorn's copy of
the handshake request and response, and uvicorn's ``asyncio.Queue`` for received messages
(:class:`LeanReceiveQueue` instead): 36 -> 23 KB per idle connection in ``bench/run.sh``.

Flow control: asyncio transports buffer what the kernel does not take yet. A client that stops
reading would make that buffer grow without end (python-engineio's queue did the same), so a
connection whose unsent bytes pass ``send_buffer_limit`` is dropped as a slow consumer, and
the other clients are not held up by it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from struct import Struct
from typing import Any

import engineio
from engineio import async_socket, exceptions
from engineio import packet as eio_packet

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # pragma: no cover - uvicorn without websockets installed
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]

log = logging.getLogger("plugbus.socket")

DEFAULT_SEND_BUFFER_LIMIT = 16 * 1024 * 1024
_LEN16 = Struct("!BBH")
_LEN64 = Struct("!BBQ")


def encode_frame(data: str | bytes) -> bytes:
    """One unmasked, unfragmented websocket frame (RFC 6455 §5.2) holding ``data``.

    ``str`` makes a text frame (UTF-8), ``bytes`` a binary one. RSV1 stays clear, so the frame
    is a valid uncompressed message even on a connection that negotiated permessage-deflate
    (RFC 7692 §6: compression is chosen per message). Hand-written because it runs once per
    broadcast and once per direct send: ``websockets.frames.Frame.serialize`` does the same
    with extension and state checks that cost several times as much.
    """
    if isinstance(data, str):
        head, payload = 0x81, data.encode()
    else:
        head, payload = 0x82, bytes(data)
    n = len(payload)
    if n < 126:
        return bytes((head, n)) + payload
    if n < 65536:
        return _LEN16.pack(head, 126, n) + payload
    return _LEN64.pack(head, 127, n) + payload


_PING_FRAME = encode_frame(eio_packet.Packet(eio_packet.PING).encode())


class DirectWriter:
    """Writes frames to one uvicorn websocket connection, in call order, without awaiting.

    Built by :class:`DirectSocket` once its websocket is accepted. ``write_frame`` takes bytes
    from :func:`encode_frame`; ``send`` encodes first (through the websockets protocol object
    when the connection negotiated an extension, so compressed connections stay compressed).
    Both return ``False`` when the connection is closing or was dropped (the data is
    discarded, as python-engineio discards packets queued to a closed socket).
    """

    __slots__ = ("_proto", "_transport", "_conn", "_raw", "_limit", "dropped")

    def __init__(self, proto: Any, limit: int = DEFAULT_SEND_BUFFER_LIMIT) -> None:
        self._proto = proto
        self._transport = proto.transport
        self._conn = proto.conn
        self._raw = not proto.conn.extensions
        self._limit = limit
        self.dropped = False

    @property
    def open(self) -> bool:
        """Whether frames written now can still reach the client."""
        return not (self.dropped or self._proto.close_sent or self._transport.is_closing())

    def write_frame(self, frame: bytes) -> bool:
        """Write a frame made by :func:`encode_frame`; ``False`` if the connection is gone."""
        if not self.open:
            return False
        transport = self._transport
        transport.write(frame)
        if transport.get_write_buffer_size() > self._limit:
            self._drop_slow()
            return False
        return True

    def send(self, data: str | bytes) -> bool:
        """Encode ``data`` as one message and write it; ``False`` if the connection is gone."""
        if self._raw:
            return self.write_frame(encode_frame(data))
        if not self.open:
            return False
        conn = self._conn
        if isinstance(data, str):
            conn.send_text(data.encode())
        else:
            conn.send_binary(data)
        return self.write_frame(b"".join(conn.data_to_send()))

    def _drop_slow(self) -> None:
        self.dropped = True
        size = self._transport.get_write_buffer_size()
        log.warning("dropping a slow websocket client: %d bytes unsent (limit %d)", size, self._limit)
        # abort, not close: a close frame would wait behind the unsent bytes; uvicorn's
        # connection_lost then ends the receive loop and Engine.IO's disconnect runs.
        self._transport.abort()


class LeanReceiveQueue:
    """What uvicorn's websocket protocol uses of its receive queue — ``put_nowait``, ``get``,
    ``empty``, ``qsize`` — for a connection with one reader.

    ``asyncio.Queue`` holds four deques (~2.1 KB per connection, before any message); uvicorn
    pauses reading after each message until the queue is empty, so a few items at most ever
    wait here, and a list and one waiter future do.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self, items: list[Any] | None = None) -> None:
        self._items: list[Any] = items or []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class DirectSocket(async_socket.AsyncSocket):
    """python-engineio's ``AsyncSocket`` writing to the websocket directly once it is up.

    Until the websocket is accepted (and while a long-polling connection upgrades), packets are
    queued as python-engineio does; when the upgrade completes, the queue is flushed through the
    :class:`DirectWriter` and every later ``send`` writes straight away.
    """

    writer: DirectWriter | None = None
    _queue: asyncio.Queue[Any] | None = None

    async def send(self, pkt: eio_packet.Packet) -> None:
        """Send one Engine.IO packet: written now on a direct websocket, queued otherwise."""
        writer = self.writer
        if writer is None:
            await super().send(pkt)
            return
        if self.closed:
            raise exceptions.SocketIsClosedError()
        writer.send(pkt.encode())

    def schedule_ping(self) -> None:
        """Schedule the next PING in ``ping_interval`` seconds, as python-engineio does after a
        PONG (and once at connect), from a timer callback instead of a sleeping task."""
        if not self.last_ping:
            return
        self.last_ping = None
        asyncio.get_running_loop().call_later(self.server.ping_interval, self._ping_now)

    def _ping_now(self) -> None:
        if self.closing or self.closed:
            return
        self.last_ping = time.time()
        writer = self.writer
        if writer is not None:
            writer.write_frame(_PING_FRAME)
        else:  # long-polling (or upgrading): the packet waits in the queue for the next poll
            self.queue.put_nowait(eio_packet.Packet(eio_packet.PING))

    @property
    def queue(self) -> asyncio.Queue[Any]:  # type: ignore[override]
        """python-engineio's send queue, made when first needed: a direct websocket drops it
        once it is flushed (an asyncio.Queue holds four deques, ~2.6 KB per connection)."""
        q = self._queue
        if q is None:
            q = self._queue = self.server.create_queue()
        return q

    @queue.setter
    def queue(self, value: asyncio.Queue[Any]) -> None:
        self._queue = value

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        """Close the Engine.IO session, then the websocket under it.

        python-engineio leaves the websocket open after a server-side close until the client
        hangs up or a receive timeout fires; closing it here ends the receive loop at once.
        """
        await super().close(wait=wait, abort=abort, reason=reason)
        ws = self.__dict__.pop("_plugbus_ws", None)
        if ws is not None:
            self.writer = None
            await ws.close()

    async def _websocket_handler(self, ws: Any) -> Any:
        """Serve one accepted websocket until it closes (python-engineio calls this once the
        handshake is in; ``ws`` is its ASGI websocket wrapper)."""
        proto = getattr(getattr(ws, "asgi_send", None), "__self__", None)
        if WebSocketsSansIOProtocol is None or not isinstance(proto, WebSocketsSansIOProtocol):
            return await super()._websocket_handler(ws)
        server = self.server
        max_size = server.max_http_buffer_size

        async def receive() -> Any:
            data = await ws.wait()
            if data and len(data) > max_size:
                raise ValueError("packet is too large")
            return data

        if self.connected:
            # An upgrade from long-polling: the probe handshake, as python-engineio does it.
            self.upgrading = True  # sends are held in the queue meanwhile
            try:
                pkt = eio_packet.Packet(encoded_packet=await receive())
            except (OSError, ValueError):
                self.upgrading = False
                return None
            if pkt.packet_type != eio_packet.PING or pkt.data != "probe":
                self.upgrading = False
                return None
            await ws.send(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
            await self.queue.put(eio_packet.Packet(eio_packet.NOOP))  # ends the pending poll
            try:
                pkt = eio_packet.Packet(encoded_packet=await receive())
            except (OSError, ValueError):
                self.upgrading = False
                return None
            if pkt.packet_type != eio_packet.UPGRADE:
                self.upgraded = False
                self.upgrading = False
                return None
            self.upgraded = True
            self.upgrading = False
        else:
            self.connected = True
            self.upgraded = True

        writer = DirectWriter(proto, getattr(server, "send_buffer_limit", DEFAULT_SEND_BUFFER_LIMIT))
        # What was queued before the switch (the OPEN packet, or sends held during the upgrade)
        # goes out first; nothing awaits in between, so nothing can overtake it.
        closing = False
        while not self.queue.empty():
            queued = self.queue.get_nowait()
            self.queue.task_done()
            if queued is None:
                closing = True
                break
            writer.send(queued.encode())
        if not closing:
            self.writer = writer
            self.__dict__["_plugbus_ws"] = ws
            self._queue = None  # empty now; every later send is written directly
            # uvicorn keeps the handshake's request and response (headers and all, ~3.5 KB)
            # for the connection's life but reads neither after the accept.
            proto.request = proto.response = None
            # and an asyncio.Queue for received messages, replaced by a lean one (nothing
            # awaits it now: this handler is its only reader)
            if type(proto.queue) is asyncio.Queue:
                proto.queue = LeanReceiveQueue(list(proto.queue._queue))
        # python-socketio's message handler, called directly: python-engineio's _trigger_event
        # would build a closure and look the handler up again for every message.
        on_message = server.handlers.get("message")
        MESSAGE = eio_packet.MESSAGE  # noqa: N806
        try:
            while not closing:
                try:
                    data = await receive()
                except Exception:  # the connection closed or sent an oversized message
                    break
                if data is None:
                    break
                try:
                    if type(data) is str and data[:1] == "4" and data[1:2].isnumeric() \
                            and on_message is not None:
                        # a Socket.IO packet in an Engine.IO message: what Packet.decode
                        # would hand on (the text after the "4"), without building a Packet
                        await on_message(self.sid, data[1:])
                        continue
                    pkt = eio_packet.Packet(encoded_packet=data)
                    if pkt.packet_type == MESSAGE and on_message is not None:
                        await on_message(self.sid, pkt.data)
                    else:
                        await self.receive(pkt)
                except exceptions.UnknownPacketError:
                    pass
                except exceptions.SocketIsClosedError:
                    break
                except Exception:
                    log.exception("error while handling a websocket message from %s", self.sid)
        finally:
            self.writer = None
            ws_open = self.__dict__.pop("_plugbus_ws", None)
            if ws_open is not None or closing:
                await ws.close()
            await self.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)
        return None


def direct_writer(sock: Any) -> DirectWriter | None:
    """The writer of a python-engineio session whose websocket takes direct writes, else None
    (long-polling, an upgrade in progress, another websocket implementation)."""
    return sock.writer if type(sock) is DirectSocket else None


class _SocketTable(dict):  # type: ignore[type-arg]
    """The server's ``sockets`` dict; makes each new python-engineio session a DirectSocket."""

    __slots__ = ()

    def __setitem__(self, sid: str, sock: Any) -> None:
        if type(sock) is async_socket.AsyncSocket:
            queue = sock.__dict__.pop("queue", None)
            sock.__class__ = DirectSocket
            sock._queue = queue
        super().__setitem__(sid, sock)


class DirectEngineIOServer(engineio.AsyncServer):
    """python-engineio's ``AsyncServer`` whose websocket sessions are :class:`DirectSocket`.

    python-engineio builds its sessions with a hard-coded ``AsyncSocket(...)``; the session
    table swaps in the subclass as each is stored (it adds methods and turns ``queue`` into a
    lazily made attribute; the state is python-engineio's).
    ``send_buffer_limit`` is the most unsent bytes one websocket connection may hold.
    """

    send_buffer_limit: int = DEFAULT_SEND_BUFFER_LIMIT

    @property  # type: ignore[override]
    def sockets(self) -> dict[str, Any]:
        return self._plugbus_sockets

    @sockets.setter
    def sockets(self, value: dict[str, Any]) -> None:
        table = _SocketTable()
        table.update(value)
        self._plugbus_sockets = table
