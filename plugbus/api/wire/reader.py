"""The direct websocket reader: plain frames parsed in ``data_received`` and handed to the
engine without a queue, a task or an ASGI event per message.

:class:`ReaderProtocol` is uvicorn's websockets-sansio protocol (declared seams,
:mod:`plugbus.api.wire.seams`) with a fast path in front of websockets' frame parser. uvicorn
takes it through its public ``Config(ws=<class>)`` parameter (:func:`plugbus.api.app.uvicorn_options`).
websockets keeps everything but the common case: the handshake, close, ping/pong, fragmented and
compressed messages, and every error. Once the engine has attached a reader
(:meth:`ReaderProtocol.attach`), a frame is taken directly when it is FIN, RSV-clear, masked,
text or binary, not above ``ws_max_size`` and (text) valid UTF-8; the first frame that is not
is handed, with every byte after it, to websockets for the rest of the connection, so the answer
to anything unusual is websockets' own (1009 for oversized, 1007 for invalid UTF-8, 1002 for a
protocol error), and message order is kept across the switch because websockets' messages are
then routed to the same dispatcher.

Dispatch is eager: the engine's handler returns the message's coroutine, which is driven at
once with ``send(None)``; if it completes without suspending, no task is made. If it suspends,
later messages of the connection wait behind it (order per connection is kept: Socket.IO acks
and events stay in order) and one task finishes them; while any wait, reading is paused, as
uvicorn's receive queue does.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

log = logging.getLogger("plugbus.wire")

#: The engine's per-message handler: the message's coroutine, or None when nothing waits.
Handler = Callable[[str | bytes], Coroutine[Any, Any, None] | None]
#: Called with an exception raised by a message's coroutine (the engine closes the session).
OnError = Callable[[BaseException], None]

try:  # the C helper websockets' own parser uses; its pure-Python twin is ~20x slower
    from websockets.speedups import apply_mask

    MASK_IMPL = "websockets.speedups (C)"
except ImportError:  # pragma: no cover - a websockets build without its C extension
    from websockets.utils import apply_mask

    MASK_IMPL = "websockets.utils (pure Python)"

_TEXT = 0x81  # FIN, RSV clear, opcode 1
_BINARY = 0x82  # FIN, RSV clear, opcode 2


class _Resume:
    """Awaiting this continues a coroutine that was started by hand and suspended on
    ``yielded``: what ``yield from`` does, so a task can take the coroutine over mid-way
    (Python 3.12's eager tasks do the same inside asyncio)."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, None]:
        coro, value = self._coro, self._yielded
        self._yielded = None
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation and the like reach the coroutine
                try:
                    value = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = coro.send(sent)
                except StopIteration:
                    return


class ReaderProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol with plugbus's direct frame reader and eager,
    in-order dispatch (see the module docstring)."""

    #: whether the connection's handshake chunk ended exactly at the request's end
    #: (nothing of a frame went into websockets' parser before :meth:`attach`)
    _clean = False
    #: the attached reader: the engine's handler, or None (websockets' path, ASGI queue)
    _handler: Handler | None = None
    _on_error: OnError | None = None
    #: True while frames are parsed here; False once websockets has them for good
    _direct = False
    _partial: bytes = b""
    _on_switch: Callable[[str], None] | None = None
    _backlog: deque[str | bytes] | None = None
    #: the task finishing a suspended message (and those behind it), or None
    _task: asyncio.Task[None] | None = None

    # -- reading ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._direct:
            self._read(self._partial + data if self._partial else data)
            return
        if self._handler is None and not self.handshake_initiated:
            super().data_received(data)
            # uvicorn's httptools protocol hands over exactly the upgrade request's head;
            # a chunk that ends anywhere else may hold (part of) a frame websockets has
            # started to parse, and the connection keeps websockets' reader
            self._clean = (
                self.handshake_initiated
                and data.endswith(b"\r\n\r\n")
                and data.find(b"\r\n\r\n") == len(data) - 4
            )
            return
        self._clean = False
        super().data_received(data)

    def _read(self, buf: bytes) -> None:
        """Parse the plain frames at the head of ``buf``; keep a partial one; hand the
        rest to websockets at the first frame this reader does not take."""
        n = len(buf)
        pos = 0
        max_size = self.config.ws_max_size
        while n - pos >= 2:
            if self.close_sent:
                break  # the closing handshake is websockets'
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if (b0 != _TEXT and b0 != _BINARY) or b1 < 0x80:
                break  # a control frame, a fragment, RSV1 (compressed), or unmasked
            length = b1 & 0x7F
            head = pos + 2
            if length == 126:
                if n - pos < 8:
                    self._partial = buf[pos:]
                    return
                length = int.from_bytes(buf[head : head + 2], "big")
                head += 2
            elif length == 127:
                if n - pos < 14:
                    self._partial = buf[pos:]
                    return
                length = int.from_bytes(buf[head : head + 8], "big")
                head += 8
            if length > max_size:
                break  # websockets answers: close 1009
            end = head + 4 + length
            if end > n:
                self._partial = buf[pos:]
                return
            payload = apply_mask(buf[head + 4 : end], buf[head : head + 4])
            if b0 == _TEXT:
                try:
                    message: str | bytes = payload.decode()
                except UnicodeDecodeError:
                    break  # websockets' path answers: close 1007
            else:
                message = payload
            pos = end
            self._deliver(message)
        else:
            self._partial = buf[pos:] if pos < n else b""
            return
        self._switch(buf[pos:])

    def _switch(self, rest: bytes) -> None:
        """Hand the connection's bytes to websockets from this frame boundary on, for the
        rest of the connection (its messages still come to :meth:`_deliver`)."""
        self._direct = False
        self._partial = b""
        if self._on_switch is not None:
            self._on_switch(_why(rest, self))
        super().data_received(rest)

    # -- dispatch -----------------------------------------------------------------------

    def attach(self, handler: Handler, on_error: OnError, on_switch: Callable[[str], None]) -> bool:
        """Take the connection's messages from now on: parsed here while frames are plain,
        by websockets otherwise, and dispatched to ``handler`` in order. ``False`` (and
        nothing changes) when websockets already holds bytes of a frame."""
        if not self._clean or not self.queue.empty() or self.close_sent:
            return False
        self._handler = handler
        self._on_error = on_error
        self._on_switch = on_switch
        self._direct = True
        return True

    def send_receive_event_to_app(self) -> None:
        handler = self._handler
        if handler is None:
            super().send_receive_event_to_app()
            return
        # a message websockets assembled (after a switch): same checks as uvicorn's
        frames = self.frames
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        self.frames = []
        if self.close_sent:
            return
        if self.curr_msg_data_type == "text":
            try:
                text = bytes(data).decode()
            except UnicodeDecodeError:
                self.logger.exception("Invalid UTF-8 sequence received from client.")
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
            self._deliver(text)
        else:
            self._deliver(bytes(data))

    def _deliver(self, message: str | bytes) -> None:
        if self._task is not None:
            backlog = self._backlog
            if backlog is None:
                backlog = self._backlog = deque()
            backlog.append(message)
            if not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()
            return
        coro = self._handler(message)  # type: ignore[misc]
        if coro is None:
            return
        try:
            yielded = coro.send(None)
        except StopIteration:
            return
        except Exception as exc:
            self._on_error(exc)  # type: ignore[misc]
            return
        self._task = self.loop.create_task(self._finish(coro, yielded))

    async def _finish(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        """Finish a suspended message, then the messages that arrived behind it."""
        handler = self._handler
        assert handler is not None
        try:
            await _Resume(coro, yielded)
            backlog = self._backlog
            while backlog:
                next_coro = handler(backlog.popleft())
                if next_coro is not None:
                    await next_coro
        except Exception as exc:
            if self._backlog:
                self._backlog.clear()
            self._on_error(exc)  # type: ignore[misc]
        finally:
            self._task = None
            if self.read_paused and not self.close_sent:
                self.read_paused = False
                self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._backlog:
            self._backlog.clear()
        self._partial = b""
        self._direct = False
        super().connection_lost(exc)


def _why(rest: bytes, proto: Any) -> str:
    """Why a connection left the direct reader (``/health`` counts them by reason)."""
    if proto.close_sent:
        return "closing"
    b0 = rest[0]
    if not b0 & 0x80:
        return "fragmented message"
    if b0 & 0x70:
        return "RSV bit set (compressed message)"
    opcode = b0 & 0x0F
    if opcode >= 8:
        return "control frame"
    if opcode not in (1, 2):
        return "unexpected opcode"
    if len(rest) > 1 and not rest[1] & 0x80:
        return "unmasked frame"
    return "oversized or invalid frame"
