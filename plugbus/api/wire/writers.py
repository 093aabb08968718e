"""How Engine.IO packets reach a websocket client: two writers with one contract.

* :class:`DirectWriter` writes frames straight to the asyncio transport of uvicorn's
  websockets-sansio protocol (a declared seam, :mod:`plugbus.api.wire.seams`): no task, no
  queue, and a broadcast framed once for every recipient (:func:`encode_frame`). The frames a
  connection is given during one event-loop turn leave together at the turn's end, in one
  ``transport.write`` (one system call per connection per turn, however many acks,
  broadcasts or greetings the turn produced; see :class:`_TurnFlush` for when that is).
* :class:`AsgiWriter` speaks plain ASGI (``websocket.send``) from one writer task per
  connection; it is what runs under any other server, websocket implementation, or an ASGI
  middleware that wraps ``send``. It does not coalesce: each message is one ``send``, which
  the server writes as it sees fit (uvicorn: one ``transport.write`` each), as before the
  direct writer began keeping a turn's frames.

Both hold the same promise: packets go out in call order, and a client whose unsent bytes pass
``limit`` is dropped as a slow consumer (its ``on_drop`` runs once), so one stalled reader never
grows the server's memory without bound.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from struct import Struct
from typing import Any

log = logging.getLogger("plugbus.wire")

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


class _TurnFlush:
    """The direct writers of one event loop that kept frames during the current loop turn,
    and the one ``call_soon`` callback that writes them (scheduled by the first frame kept).

    When that callback runs, relative to everything else the loop does:

    * uvloop (what ``plugbus serve`` runs on when it is installed; verified on 0.23): ready
      callbacks run in libuv's idle phase, each pass taking only those queued before it
      began, and a write to an idle socket is a ``write()`` at once. A flush queued by an I/O
      callback (poll phase) runs in the next idle phase: after every I/O callback of that
      poll phase and the next iteration's due timers. One queued by a task step (idle phase)
      runs in the next iteration's idle phase, after the poll in between (which does not
      block: libuv polls with a zero timeout while idle callbacks are pending), its I/O
      callbacks and the due timers. Either way a turn spans at most one poll phase.
    * asyncio's default loop: ``_run_once`` runs the callbacks that were ready when it
      started, then the next pass appends the I/O callbacks of its ``select`` and the due
      timers behind the flush, so the flush runs before them.

    On both loops I/O callbacks can therefore run while frames are kept: a received PING's
    automatic PONG, the client's close, the connection's loss. uvicorn makes those writes
    through ``proto.transport``, for which the writer stands in while it keeps frames
    (:class:`DirectWriter`), so the kept frames are written first, or dropped with the
    transport.
    """

    __slots__ = ("_loop", "_writers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._writers: list[DirectWriter] = []

    def add(self, writer: DirectWriter) -> None:
        writers = self._writers
        if not writers:
            self._loop.call_soon(self._run)
        writers.append(writer)

    def _run(self) -> None:
        writers, self._writers = self._writers, []
        for writer in writers:  # a writer flushed early (or twice) has nothing left: no-op
            try:
                writer.flush()
            except Exception:
                log.exception("writing a websocket's kept frames failed")


_TURN_FLUSHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _TurnFlush] = (
    weakref.WeakKeyDictionary()
)


def _turn_flush(loop: asyncio.AbstractEventLoop) -> _TurnFlush:
    flush = _TURN_FLUSHES.get(loop)
    if flush is None:
        flush = _TURN_FLUSHES[loop] = _TurnFlush(loop)
    return flush


class DirectWriter:
    """Writes frames to one uvicorn websocket connection, in call order, without awaiting.

    ``write_frame`` takes bytes from :func:`encode_frame` (broadcasts share them); ``send``
    encodes first (through the websockets protocol object when the connection negotiated an
    extension, so compressed connections stay compressed). Both return ``False`` when the
    connection is closing or was dropped (the data is discarded).

    Frames written during one event-loop turn are kept and written at the turn's end with one
    ``transport.write`` (:class:`_TurnFlush`): an ack, a burst of broadcasts, the CONNECT ack
    and its greeting each cost the connection one system call per turn, not one per frame, and
    the client one wake-up. While it keeps frames the writer stands in for uvicorn's transport
    (``proto.transport``, a declared seam): whatever uvicorn writes or closes meanwhile (a PONG,
    the reply to the client's close, the session's close through ASGI ``send``, the connection
    lost) flushes the kept frames first, or drops them when the transport is gone. Kept bytes
    count against ``limit`` as they are kept; the transport's buffer is checked at the flush.
    """

    __slots__ = (
        "_conn",
        "_kept",
        "_kept_bytes",
        "_limit",
        "_on_drop",
        "_proto",
        "_raw",
        "_transport",
        "_turn",
        "dropped",
    )
    direct = True

    def __init__(self, proto: Any, limit: int, on_drop: Callable[[], None]) -> None:
        self._proto = proto
        self._transport = proto.transport
        self._conn = proto.conn
        self._raw = not proto.conn.extensions
        self._limit = limit
        self._on_drop = on_drop
        self._kept: list[bytes] | None = None
        self._kept_bytes = 0
        self._turn = _turn_flush(asyncio.get_running_loop())
        self.dropped = False

    @property
    def open(self) -> bool:
        """Whether frames written now can still reach the client."""
        return not (self.dropped or self._proto.close_sent or self._transport.is_closing())

    def write_frame(self, frame: bytes) -> bool:
        """Write a frame made by :func:`encode_frame` (at the end of this loop turn, with the
        turn's other frames); ``False`` if the connection is gone."""
        if not self.open:
            return False
        kept = self._kept
        if kept is None:
            self._kept = [frame]
            self._kept_bytes = len(frame)
            self._proto.transport = self
            self._turn.add(self)
        else:
            kept.append(frame)
            self._kept_bytes += len(frame)
        if self._kept_bytes > self._limit:
            self._drop_slow(self._kept_bytes)
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

    def flush(self) -> None:
        """Write the kept frames now, in one ``transport.write`` (the loop turn's end does)."""
        kept = self._kept
        if kept is None:
            return
        self._kept = None
        transport = self._proto.transport = self._transport
        if self._proto.close_sent or transport.is_closing():
            return  # the connection is gone, and its frames with it
        transport.write(kept[0] if len(kept) == 1 else b"".join(kept))
        size = transport.get_write_buffer_size()
        if size > self._limit:
            self._drop_slow(size)

    async def drain(self) -> None:
        """Write what is kept now (the session's close follows); nothing to wait for."""
        self.flush()

    def _drop_slow(self, size: int) -> None:
        self.dropped = True
        self._kept = None
        transport = self._proto.transport = self._transport
        log.warning(
            "dropping a slow websocket client: %d bytes unsent (limit %d)", size, self._limit
        )
        # abort, not close: a close frame would wait behind the unsent bytes; uvicorn's
        # connection_lost then ends the receive loop.
        transport.abort()
        self._on_drop()

    # -- uvicorn's transport, while frames are kept (what its websocket protocol calls) ------

    def write(self, data: bytes) -> None:
        self.flush()
        self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._kept = None
        self._proto.transport = self._transport
        self._transport.abort()

    def is_closing(self) -> bool:
        return bool(self._transport.is_closing())

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        return int(self._transport.get_write_buffer_size()) + (
            self._kept_bytes if self._kept is not None else 0
        )

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


class AsgiWriter:
    """Writes messages through the ASGI ``send`` callable, from one task, in call order.

    The task exists only while messages wait (an idle connection holds none). Messages that
    ``send`` has not taken yet count against ``limit``; past it the client is a slow consumer.
    """

    __slots__ = ("_idle", "_limit", "_on_drop", "_pending", "_queue", "_send", "_task", "dropped")
    direct = False

    def __init__(
        self,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        limit: int,
        on_drop: Callable[[], None],
    ) -> None:
        self._send = send
        self._limit = limit
        self._on_drop = on_drop
        self._queue: deque[str | bytes] = deque()
        self._pending = 0
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.Event | None = None
        self.dropped = False

    @property
    def open(self) -> bool:
        """Whether messages sent now can still reach the client."""
        return not self.dropped

    def write_frame(self, frame: bytes) -> bool:  # pragma: no cover - callers check .direct
        raise TypeError("AsgiWriter takes messages, not frames")

    def send(self, data: str | bytes) -> bool:
        """Queue ``data`` as one websocket message; ``False`` if the connection is gone."""
        if self.dropped:
            return False
        self._queue.append(data)
        self._pending += len(data)
        if self._pending > self._limit:
            self.dropped = True
            size = self._pending
            self._queue.clear()
            self._pending = 0
            log.warning(
                "dropping a slow websocket client: %d bytes unsent (limit %d)", size, self._limit
            )
            self._on_drop()
            return False
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return True

    async def drain(self) -> None:
        """Wait until every queued message was handed to ``send``."""
        task = self._task
        if task is not None:
            await asyncio.shield(task)

    async def _run(self) -> None:
        queue, send = self._queue, self._send
        try:
            while queue:
                data = queue.popleft()
                self._pending -= len(data)
                if isinstance(data, str):
                    await send({"type": "websocket.send", "text": data})
                else:
                    await send({"type": "websocket.send", "bytes": data})
        except Exception:
            queue.clear()
            self._pending = 0
            self.dropped = True
        finally:
            self._task = None


class LeanReceiveQueue:
    """What uvicorn's websocket protocol uses of its receive queue — ``put_nowait``, ``get``,
    ``empty``, ``qsize`` — for a connection with one reader (a declared uvicorn seam).

    ``asyncio.Queue`` holds four deques (~2.1 KB per connection, before any message); uvicorn
    pauses reading after each message until the queue is empty, so a few items at most ever
    wait here, and a list and one waiter future do.
    """

    __slots__ = ("_items", "_loop", "_waiter")

    def __init__(self, items: list[Any] | None = None) -> None:
        self._items: list[Any] = items or []
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            # the loop is looked up once per connection: on Python 3.11 each
            # get_running_loop() is a getpid() system call (4 % of the server's samples under
            # echo, one per received message)
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def take_messages(self) -> list[str | bytes] | None:
        """Remove and return the data of every waiting message when all are
        ``websocket.receive`` (the direct reader takes them over, in order); None, and
        nothing removed, when anything else waits."""
        items = self._items
        if any(item.get("type") != "websocket.receive" for item in items):
            return None
        self._items = []
        return [item["text"] if item.get("text") is not None else item["bytes"] for item in items]

    def qsize(self) -> int:
        return len(self._items)


class LeanWritableFlag:
    """What uvicorn's websocket protocol uses of its ``writable`` event — ``set``, ``clear``,
    ``is_set``, ``wait`` — (a declared uvicorn seam) without ``asyncio.Event``'s deque of
    waiters (~0.6 KB per connection, made whether or not anything ever waits): waiters are
    held in a list made only while the transport's buffer is full and someone awaits.
    """

    __slots__ = ("_set", "_waiters")

    def __init__(self, is_set: bool) -> None:
        self._set = is_set
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        fut = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(fut)
        await fut
        return True
