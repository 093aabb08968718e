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

The opening handshake is answered here too when it is plain and valid (:meth:`ReaderProtocol._handshake`:
uvicorn's httptools protocol has parsed the request already, and websockets' Python HTTP
parser, ``Request``/``Response`` objects and ``accept`` cost a fifth of a connection's CPU);
the 101 written on the accept is byte for byte the one websockets and uvicorn would write.
Any other request is websockets', with its answers.

Dispatch is eager: the engine's handler returns the message's coroutine, which is driven at
once with ``send(None)``; if it completes without suspending, no task is woken or made. The
step runs as the connection's own ASGI task (``asyncio.current_task()`` is that task, as on
uvicorn's path: ``asyncio.timeout``, redis-py and ``Bus.close_connection`` need one) and in a
context of the connection's own. If it suspends, later messages of the connection wait behind
it (order per connection is kept: Socket.IO acks and events stay in order) and the
connection's task, woken through uvicorn's receive queue, finishes them; while any wait,
reading is paused, as uvicorn's receive queue does. One exception: a Socket.IO event suspended
on nothing but its own history append (``Parking``, in :mod:`plugbus.core.history`) lets the
next event start (at most :data:`MAX_PARKED` wait so), which is what lets one connection's
appends go to Redis in batches; what runs after each append, and everything else, still runs
in arrival order (docs/deployment.md, "The order of a connection's events").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
import sys
from collections import deque
from collections.abc import Coroutine, Generator
from contextvars import Context, copy_context
from typing import Any, NamedTuple, Protocol
from urllib.parse import unquote

from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.utils import ClientDisconnected, get_client_addr, get_path_with_query_string
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS
from websockets.protocol import State
from websockets.streams import StreamReader

from plugbus.core.history import PARKING, Parking

from .writers import LeanReceiveQueue

# A declared seam (seams.ASYNCIO_TASKS): without it the engine gives uvicorn its own class.
_enter_task: Any = getattr(asyncio.tasks, "_enter_task", None)
_leave_task: Any = getattr(asyncio.tasks, "_leave_task", None)

log = logging.getLogger("plugbus.wire")

try:  # websockets' header grammar (declared seams: without them the reader is not used)
    from websockets.http11 import _token_re as _TOKEN
    from websockets.http11 import _value_re as _VALUE
except ImportError:  # pragma: no cover
    _TOKEN = _VALUE = None  # type: ignore[assignment]


class Sink(Protocol):
    """What the reader hands messages to (the engine), with the connection's session."""

    def reader_message(self, session: Any, data: str | bytes) -> Any:
        """The message's coroutine, or None when nothing waits."""

    def reader_failed(self, session: Any, exc: BaseException) -> None:
        """A message's coroutine raised (the engine closes the session)."""

    def reader_switched(self, reason: str) -> None:
        """The connection was handed to websockets' parser, because of ``reason``."""


try:  # the C helper websockets' own parser uses; its pure-Python twin is ~20x slower
    from websockets.speedups import apply_mask

    MASK_IMPL = "websockets.speedups (C)"
except ImportError:  # pragma: no cover - a websockets build without its C extension
    from websockets.utils import apply_mask

    MASK_IMPL = "websockets.utils (pure Python)"

_TEXT = 0x81  # FIN, RSV clear, opcode 1
_BINARY = 0x82  # FIN, RSV clear, opcode 2


#: what a suspended message's coroutine has not done yet (its first step)
_NOT_STARTED = object()

#: put in uvicorn's receive queue to wake the connection's task: a message suspended
RESUME: Any = {"type": "plugbus.reader.resume"}

#: messages of one connection suspended on their own history appends at most (then reading
#: waits, as behind any other suspension)
MAX_PARKED = 64


class _Resume:
    """Awaiting this drives a message's coroutine to its end from wherever it is: not started
    (``_NOT_STARTED``) or suspended on ``yielded`` after an eager step. Each step runs in the
    connection's context, like its eager steps, so that a context variable set before a
    suspension is still set after it (what ``yield from`` does, plus the context)."""

    __slots__ = ("_context", "_coro", "_yielded")

    def __init__(self, context: Context, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        self._context = context
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, None]:
        run, coro, value = self._context.run, self._coro, self._yielded
        self._yielded = None
        try:
            if value is _NOT_STARTED:
                value = run(coro.send, None)
            while True:
                try:
                    sent = yield value
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:  # a cancellation reaches the coroutine
                    value = run(coro.throw, exc)
                else:
                    value = run(coro.send, sent)
        except StopIteration:
            return


async def _raising(exc: Exception) -> None:
    raise exc


class _Parked:
    """Awaiting this finishes a message parked on its own append (``future``, the line's):
    while the host waits for that future and nothing else, the reader may start the
    connection's next message; once the future is answered, the rest runs as :class:`_Resume`
    runs it."""

    __slots__ = ("_context", "_coro", "_future", "_reader")

    def __init__(
        self, reader: ReaderProtocol, context: Context, coro: Coroutine[Any, Any, None], future: Any
    ) -> None:
        self._reader = reader
        self._context = context
        self._coro = coro
        self._future = future

    def __await__(self) -> Generator[Any, Any, None]:
        reader, coro = self._reader, self._coro
        reader._host_running = False
        try:
            sent = yield self._future
        except GeneratorExit:
            reader._host_running = True
            coro.close()
            raise
        except BaseException as exc:  # the append's failure, or a cancellation
            reader._host_running = True
            try:
                value = self._context.run(coro.throw, exc)
            except StopIteration:
                return
        else:
            reader._host_running = True
            try:
                value = self._context.run(coro.send, sent)
            except StopIteration:
                return
        yield from _Resume(self._context, coro, value).__await__()


class ReaderProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol with plugbus's direct frame reader and eager,
    in-order dispatch (see the module docstring)."""

    #: the largest frame websockets would take as a message's first (its max_size)
    _max_size = 0
    #: a handshake taken by :meth:`_handshake`: its Sec-WebSocket-Accept until the accept
    #: is sent, and what the client sent before that answer
    _accept: bytes | None = None
    _early: list[bytes] | None = None
    #: the attached reader's engine and session; None: websockets' path, ASGI queue
    _sink: Sink | None = None
    _session: Any = None
    #: True while frames are parsed here; False once websockets has them for good
    _direct = False
    _partial: bytes = b""
    #: the connection's ASGI task, and the context every message's steps run in
    _host: asyncio.Task[Any]  # set by attach, before any message is delivered
    _context: Context | None = None
    #: a message suspended in its eager step, for the host to finish; messages behind it
    _pending: tuple[Coroutine[Any, Any, None], Any] | None = None
    _backlog: deque[str | bytes] | None = None
    _busy = False
    #: messages suspended on nothing but their own history append, in order, not yet taken
    #: by the host; the connection's :class:`Parking`; whether the host runs anything
    #: but the wait for a parked message's append
    _parked: deque[tuple[Context, Coroutine[Any, Any, None], Any]] | None = None
    _parking: Parking | None = None
    _host_running = False
    #: the context of the held message when it started behind parked ones (else None)
    _pending_context: Context | None = None

    # -- reading ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._direct:
            self._read(self._partial + data if self._partial else data)
        elif self._early is not None:
            # a client that did not wait for the handshake's answer: its bytes wait for it
            # (websockets' parser still expects an HTTP request), reading paused meanwhile
            self._early.append(data)
            if not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()
        elif self.handshake_initiated or not self._handshake(data):
            super().data_received(data)

    # -- the opening handshake (RFC 6455 §4.2) ------------------------------------------

    def _handshake(self, data: bytes) -> bool:
        """Take a plain, valid opening handshake without websockets' HTTP parser; False
        (nothing done) for anything else, which websockets then parses and answers.

        ``data`` is uvicorn's re-built request head (httptools parsed it first). Taken: one
        complete head; ``GET`` with an ASCII origin-form target over ``HTTP/1.1``; header
        names and values that websockets' own grammar accepts, no more of them or longer
        lines than it takes; a ``Host``; ``Upgrade`` exactly ``websocket``; a ``Connection``
        with the ``upgrade`` token; one ``Sec-WebSocket-Key`` that is base64 of 16 bytes; one
        ``Sec-WebSocket-Version: 13``; no body; no ``Sec-WebSocket-Protocol`` (websockets
        negotiates it), and no ``Sec-WebSocket-Extensions`` when compression is on.
        """
        if self.conn.state is not State.CONNECTING or _TOKEN is None:
            return False
        taken = self._take_handshake(data)
        if taken is False:
            HANDSHAKES["websockets"] += 1
            return False
        if taken is not True:
            # a refusal websockets would not answer as RFC 6455 asks (see _refusal)
            HANDSHAKES["refused"] += 1
            client = self.client
            self.logger.info(
                '%s - "WebSocket" 400 (%s)', f"{client[0]}:{client[1]}" if client else "-", taken
            )
            self.transport.write(_refusal(taken))
            self.transport.close()
            return True
        HANDSHAKES["direct"] += 1
        return True

    def _take_handshake(self, data: bytes) -> bool | str:
        """True: taken; False: websockets' to answer; a string: a websocket upgrade request
        to refuse (400), saying why."""
        taken = parse_handshake(data, self.config.ws_per_message_deflate)
        if not isinstance(taken, Handshake):
            return taken
        self.begin(taken)
        return True

    def adopt(self, http: Any) -> None:
        """``connection_made`` for a connection whose HTTP protocol read its addresses
        already: uvicorn's ``connection_made`` reads them again (a socket object and two
        system calls), for the same values."""
        self.connections.add(self)
        self.transport = http.transport
        self.server = http.server
        self.client = http.client
        self.scheme = "wss" if http.scheme == "https" else "ws"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sWebSocket connection made", prefix)

    def begin(self, handshake: Handshake) -> None:
        """Take a handshake :func:`parse_handshake` accepted: the ASGI scope, the connect
        event and the connection's task, as uvicorn's ``handle_connect`` makes them; the 101
        goes out with the application's accept (:meth:`send`)."""
        target, headers, key = handshake.target, handshake.headers, handshake.key
        self._accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self._early = []
        # uvicorn's handle_connect keeps websockets' Request here; nothing reads it after
        # the scope is built (plugbus's _trim drops it)
        self.request = None  # type: ignore[assignment]
        self.handshake_initiated = True
        raw_path, _, query_string = target.partition(b"?")
        root_path = self.root_path
        self.scope = {
            "type": "websocket",
            "asgi": {"version": self.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": self.scheme,
            "server": self.server,
            "client": self.client,
            "root_path": root_path,
            "path": root_path + unquote(raw_path.decode("ascii")),
            "raw_path": root_path.encode("ascii") + raw_path,
            "query_string": query_string,
            "headers": headers,
            "subprotocols": [],
            "state": self.app_state.copy(),
            "extensions": {"websocket.http.response": {}},
        }
        # the lean queue the engine gives every connection of this class (wire/engine.py's
        # _trim) from the start: uvicorn's asyncio.Queue would be filled, then copied out
        self.queue = LeanReceiveQueue([{"type": "websocket.connect"}])  # type: ignore[assignment]
        task = self.loop.create_task(self.run_asgi())
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)

    async def send(self, message: Any) -> None:
        accept = self._accept
        if accept is None or message["type"] != "websocket.accept":
            # websockets' handshake, every refusal, and everything after the accept
            await super().send(message)
            return
        self._accept = None
        await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        # uvicorn's line; its arguments (the path quoted again) cost ~1.5 µs per connection,
        # so they are made only when the line is logged (plugbus serves at warning by default)
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info(
                '%s - "WebSocket %s" [accepted]',
                get_client_addr(self.scope),
                get_path_with_query_string(self.scope),
            )
        # the same head websockets' Response would serialize: its three headers, then
        # uvicorn's default headers and the application's, names lower-cased (uvicorn's
        # send drops websockets' Date in favour of its own)
        out = [_SWITCHING, accept, b"\r\n"]
        for name, value in [*self.default_headers, *message.get("headers", [])]:
            out += [name.lower(), b": ", value, b"\r\n"]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            out += [b"Sec-WebSocket-Protocol: ", subprotocol.encode("latin-1"), b"\r\n"]
        out.append(b"\r\n")
        early, self._early = self._early, None
        if self.transport.is_closing():
            return
        self.handshake_complete = True
        conn = self.conn
        conn.state = State.OPEN
        conn.logger.info("connection open")  # what websockets' send_response logs
        # websockets' parser, restarted in the open state, waits for the first frame
        conn.parser = conn.parse()
        next(conn.parser)
        self.transport.write(b"".join(out))
        self.start_keepalive()
        if early:
            super().data_received(b"".join(early))

    def _read(self, buf: bytes) -> None:
        """Parse the plain frames at the head of ``buf``; keep a partial one; hand the
        rest to websockets at the first frame this reader does not take."""
        n = len(buf)
        pos = 0
        max_size = self._max_size
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
        if self._sink is not None:
            self._sink.reader_switched(_why(rest, self))
        super().data_received(rest)

    # -- dispatch -----------------------------------------------------------------------

    def attach(self, sink: Sink, session: Any, host: asyncio.Task[Any]) -> bool:
        """Take the connection's messages from now on: parsed here while frames are plain,
        by websockets otherwise, and dispatched to ``sink.reader_message`` in order. ``False`` (and
        nothing changes) when websockets is not between two messages (it holds bytes of a
        frame or part of a fragmented message) or a message waits in uvicorn's queue.

        ``host`` is the connection's ASGI task (the caller): each message's eager step runs
        as if in it (``asyncio.current_task()`` is ``host``, as ``asyncio.timeout`` and
        redis-py need) and in a context of the connection's own (copied from the caller's);
        a message that suspends is finished by ``host``, woken by :data:`RESUME` in
        uvicorn's receive queue, which then awaits :meth:`run_pending`.
        """
        conn = self.conn
        if self.close_sent or not _at_frame_boundary(conn):
            return False
        queued: list[str | bytes] = []
        if not self.queue.empty():
            # messages websockets parsed before now (right behind an upgrade): taken over,
            # in order, ahead of anything read from here on
            take = getattr(self.queue, "take_messages", None)
            taken = take() if take is not None else None
            if taken is None:
                return False
            queued = taken
        limits = [n for n in (conn.max_message_size, conn.max_fragment_size) if n is not None]
        self._max_size = min(limits) if limits else sys.maxsize
        self._sink = sink
        self._session = session
        self._host = host
        self._context = copy_context()
        if Parking.wanted:
            self._parking = Parking()
            self._parked = deque()
            self._context.run(PARKING.set, self._parking)
        self._direct = True
        if queued:
            # the caller is the host task itself, so these cannot run eagerly: the first
            # waits (not started) and the rest queue behind it for run_pending
            first = sink.reader_message(session, queued[0])
            self._backlog = deque(queued[1:])
            if first is not None:
                self._pend(first, _NOT_STARTED)
            elif self._backlog:
                self._busy = True
                self._pending = None
                self.queue.put_nowait(RESUME)
        return True

    def send_receive_event_to_app(self) -> None:
        if self._sink is None:
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
        behind = False
        if self._busy:
            parked = self._parked
            if (
                parked is not None
                and self._pending is None
                and not self._host_running
                and not self._backlog
                and len(parked) < MAX_PARKED
                and type(message) is str
                and message[:2] == "42"
            ):
                # everything before it waits for its own append only: a Socket.IO event
                # may start now (its answer waits for its turn: the socket door)
                behind = True
            else:
                backlog = self._backlog
                if backlog is None:
                    backlog = self._backlog = deque()
                backlog.append(message)
                if not self.read_paused:
                    self.read_paused = True
                    self.transport.pause_reading()
                return
        coro = self._sink.reader_message(self._session, message)  # type: ignore[union-attr]
        if coro is None:
            return
        # only a Socket.IO event (an Engine.IO message, "4", of packet type EVENT, "2") may
        # park: its handler's append is what it may wait for while the next one starts
        parking = self._parking
        if parking is not None and (type(message) is not str or message[:2] != "42"):
            parking = None
        loop, host = self.loop, self._host
        try:
            _enter_task(loop, host)
        except RuntimeError:  # pragma: no cover - called from inside a task, not a callback
            self._pend(coro, _NOT_STARTED)
            return
        if parking is not None:
            parking.eager = True
            parking.behind = behind
            parking.future = None
        # a message started behind parked ones runs in a copy of the connection's context:
        # what it sets (log fields) must not show in theirs, which finish after it started
        context = self._context
        if behind:
            context = context.copy()  # type: ignore[union-attr]
        try:
            yielded = context.run(coro.send, None)  # type: ignore[union-attr]
        except StopIteration:
            return
        except Exception as exc:
            if behind:
                # what the failure does (the session closes) waits for the events before it
                self._pending = (_raising(exc), _NOT_STARTED)
                self._pending_context = context
                return
            self._sink.reader_failed(self._session, exc)  # type: ignore[union-attr]
            return
        finally:
            _leave_task(loop, host)
            if parking is not None:
                parking.eager = parking.behind = False
        if parking is not None and yielded is parking.future and yielded is not None:
            parking.future = None
            self._parked.append((context, coro, yielded))  # type: ignore[union-attr,arg-type]
            if not self._busy:
                self._busy = True
                self.queue.put_nowait(RESUME)
            return
        if behind:
            self._pending = (coro, yielded)
            self._pending_context = context
            return
        self._pend(coro, yielded)

    def _pend(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        self._busy = True
        self._pending = (coro, yielded)
        self.queue.put_nowait(RESUME)

    async def run_pending(self) -> None:
        """Finish the suspended message, then the messages that arrived behind it (called
        by the connection's task when it receives :data:`RESUME`)."""
        sink, session, context = self._sink, self._session, self._context
        assert sink is not None and context is not None
        parked = self._parked
        self._host_running = True
        try:
            # the parked messages first (each started before anything held), then the one
            # held behind them, then those read while it was held: the order they came in
            while True:
                if parked:
                    await _Parked(self, *parked.popleft())
                    continue
                pending, self._pending = self._pending, None
                if pending is not None:
                    own, self._pending_context = self._pending_context, None
                    await _Resume(own or context, *pending)
                    continue
                backlog = self._backlog
                if not backlog:
                    break
                coro = sink.reader_message(session, backlog.popleft())
                if coro is not None:
                    await _Resume(context, coro, _NOT_STARTED)
        except Exception as exc:
            if self._backlog:
                self._backlog.clear()
            for _, coro, _ in parked or ():
                coro.close()
            if parked:
                parked.clear()
            sink.reader_failed(session, exc)
        finally:
            self._host_running = False
            self._busy = False
            if self.read_paused and not self.close_sent:
                self.read_paused = False
                self.transport.resume_reading()

    def abandon(self) -> None:
        """The connection's task is ending: drop what waits (a suspended message is closed)."""
        pending, self._pending = self._pending, None
        self._pending_context = None
        if pending is not None:
            pending[0].close()
        parked = self._parked
        while parked:
            parked.popleft()[1].close()
        if self._backlog:
            self._backlog.clear()
        self._busy = False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._backlog:
            self._backlog.clear()
        self._partial = b""
        self._direct = False
        super().connection_lost(exc)


class Handshake(NamedTuple):
    """A plain, valid opening handshake (:func:`parse_handshake`)."""

    #: the request target (origin-form, ASCII)
    target: bytes
    #: the headers, names lower-cased (as ASGI and uvicorn's scope have them)
    headers: list[tuple[bytes, bytes]]
    #: Sec-WebSocket-Key
    key: bytes
    #: how many Connection headers the request carries
    connection_headers: int


def parse_handshake(data: bytes, deflate: bool) -> Handshake | bool | str:
    """Parse one request head as a websocket opening handshake (RFC 6455 §4.2.1).

    A :class:`Handshake`: plain and valid, taken. ``False``: anything else, for websockets
    to parse and answer. A string: a websocket upgrade request to refuse (400), saying why.

    Taken: one complete head; ``GET`` with an ASCII origin-form target over ``HTTP/1.1``;
    header names and values that websockets' own grammar accepts, no more of them or longer
    lines than it takes; a ``Host``; ``Upgrade`` exactly ``websocket``; a ``Connection`` with
    the ``upgrade`` token; one ``Sec-WebSocket-Key`` that is base64 of 16 bytes; one
    ``Sec-WebSocket-Version: 13``; no body; no ``Sec-WebSocket-Protocol`` (websockets
    negotiates it), and no ``Sec-WebSocket-Extensions`` when compression (``deflate``) is on.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0 or end != len(data) - 4:
        return False
    lines = data[:end].split(b"\r\n")
    if len(lines) > _MAX_HEADERS + 1 or max(map(len, lines)) > _MAX_LINE:
        return False
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[2] != b"HTTP/1.1":
        return False
    target = parts[1]
    if not target.startswith(b"/") or not target.isascii():
        return False
    headers: list[tuple[bytes, bytes]] = []
    key = version = upgrade = None
    host = connection_upgrade = False
    connections = 0
    plain = True  # False: a header websockets negotiates or checks is present
    block = _HEADER_LINES
    if block is not None and not block.fullmatch(data, len(lines[0]) + 2, end + 2):
        return False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        value = value.strip(b" \t")
        if block is None and (
            not colon or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value)
        ):
            return False
        lname = name.lower()
        headers.append((lname, value))
        if lname == b"sec-websocket-key":
            if key is not None:
                return False
            key = value
        elif lname == b"sec-websocket-version":
            if version is not None:
                return False
            version = value
        elif lname == b"upgrade":
            if upgrade is not None:
                return False
            upgrade = value
        elif lname == b"connection":
            connections += 1
            for token in value.split(b","):
                token = token.strip(b" \t")
                if not _TOKEN.fullmatch(token):
                    return False
                connection_upgrade = connection_upgrade or token.lower() == b"upgrade"
        elif lname == b"host":
            host = True
        elif (
            lname in _NEGOTIATED
            or (lname == b"sec-websocket-extensions" and deflate)
            or (lname == b"content-length" and value != b"0")
        ):
            plain = False
    if not connection_upgrade or upgrade is None or upgrade.lower() != b"websocket":
        return False
    # §4.2.1: a handshake without Host "MUST" be refused (websockets accepts it); §4.2.2
    # and §4.4: one of another version MUST be answered with the versions the server
    # speaks (websockets answers 400 without them). Checked before anything is handed
    # to websockets, so no request shape escapes them.
    if not host:
        return "missing Host header"
    if version != b"13":
        return "missing or unsupported Sec-WebSocket-Version (this server speaks 13)"
    if not plain or key is None:
        return False
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return False
    except binascii.Error:
        return False
    return Handshake(target, headers, key, connections)


def _header_lines(token: Any, value: Any) -> Any:
    """One regex for a head's header lines (each ``name:value`` then CRLF) that matches
    exactly when every line's name is a websockets token and its value, stripped of spaces
    and tabs, a websockets value (~1.7 µs less per handshake than a match per name and
    value). Built from websockets' own patterns, and only when their shape makes the two the
    same: a token is one or more, a value any number of, bytes of a class; a token has no
    ``:``; neither has CR or LF; a value may hold spaces and tabs (so stripping them changes
    nothing). Otherwise None, and each line is matched on its own."""
    if token is None or value is None:
        return None
    tp, vp = token.pattern, value.pattern
    if not (
        isinstance(tp, bytes)
        and tp[:1] == b"["
        and tp.endswith(b"]+")
        and tp.count(b"]") == 1
        and isinstance(vp, bytes)
        and vp[:1] == b"["
        and vp.endswith(b"]*")
        and vp.count(b"]") == 1
    ):
        return None
    if token.fullmatch(b":") or any(
        token.fullmatch(c) or value.fullmatch(c) for c in (b"\r", b"\n")
    ):
        return None
    if not value.fullmatch(b" \t"):
        return None
    return re.compile(b"(?:" + tp + b":" + vp + b"\r\n)*")


#: every header line of a head at once (None: websockets' grammar is not of that shape)
_HEADER_LINES = _header_lines(_TOKEN, _VALUE)
#: why a head's header lines are matched one by one (None: by one regex); ``GET /health``
#: and the start-up log say it
HEADER_LINES_UNAVAILABLE = (
    None
    if _HEADER_LINES is not None
    else "websockets' header grammar (websockets.http11's _token_re and _value_re) is not "
    "of the shape one regex needs"
)

#: opening handshakes in this process, by who parsed them (``GET /health``)
HANDSHAKES = {"direct": 0, "websockets": 0, "refused": 0}


def _refusal(reason: str) -> bytes:
    """The 400 answer to a refused opening handshake: what was wrong in a text body, the
    version this server speaks (RFC 6455 §4.4), and the connection closed after it."""
    body = f"Failed to open a WebSocket connection: {reason}.\n".encode()
    return (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: close\r\n\r\n" + body
    )


_AT_EOF = StreamReader.at_eof.__code__
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
_SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)
# websockets' request limits and header grammar (websockets.http11), so that what is taken
# here is exactly what its parser would take
_MAX_HEADERS = MAX_NUM_HEADERS
_MAX_LINE = MAX_LINE_LENGTH - 2  # its limit counts the CRLF
#: request headers websockets negotiates or refuses: such a request takes its path
_NEGOTIATED = frozenset((b"sec-websocket-protocol", b"transfer-encoding"))


def _at_frame_boundary(conn: Any) -> bool:
    """Whether websockets' parser waits for the first byte of a new message: open, no byte
    buffered, no fragmented message under way, and its parse generator suspended in
    ``StreamReader.at_eof`` (where ``Protocol.parse`` waits between frames; mid-frame it is
    in ``read_exact``) — declared websockets seams."""
    if conn.state is not State.OPEN or conn.reader.buffer or conn.current_size is not None:
        return False
    gen = conn.parser
    while (inner := getattr(gen, "gi_yieldfrom", None)) is not None:
        gen = inner
    return getattr(gen, "gi_code", None) is _AT_EOF


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
