"""plugbus's Engine.IO v4 server, under python-socketio's ``AsyncServer``.

It answers the ``/socket.io/`` path of the ASGI app: the long-polling handshake and its GETs and
POSTs, websockets (from the start, or as an upgrade of a polling session), the heartbeat, the
connect deadline, and close. It offers python-socketio what python-socketio uses of an Engine.IO
server (``on``, ``send``, ``send_packet``, ``disconnect``, ``get_session``, ``transport``,
``create_event``, ``start_background_task``, ``sleep``, ``shutdown``, ``generate_id``,
``handle_request``, ``reason``) and nothing else.

Written to the Engine.IO v4 specification (socketio/engine.io-protocol), with Node's engine.io
as the reference where the text leaves a choice: errors are HTTP 400 with
``{"code": N, "message": ...}`` (0 unknown transport, 1 unknown session, 2 bad handshake method,
3 bad request, 5 unsupported protocol version; 4 forbidden is 403), a POST is answered ``ok``,
a missed PONG closes the session by timer, a second GET on one session closes it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson

from . import seams
from .reader import HANDSHAKES, HEADER_LINES_UNAVAILABLE, MASK_IMPL, RESUME, ReaderProtocol
from .session import (
    CLOSING,
    OPEN,
    PAYLOAD_PACKETS,
    WAKE_CLOSE,
    WAKE_NOOP,
    EngineSession,
    SessionTimers,
)
from .upgrade import UPGRADES, upgrade_unavailable
from .writers import AsgiWriter, DirectWriter, LeanReceiveQueue, LeanWritableFlag

log = logging.getLogger("plugbus.wire")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

(
    TRANSPORT_UNKNOWN,
    UNKNOWN_SID,
    BAD_HANDSHAKE_METHOD,
    BAD_REQUEST,
    FORBIDDEN,
    UNSUPPORTED_PROTOCOL,
) = range(6)
_MESSAGES = {
    TRANSPORT_UNKNOWN: "Transport unknown",
    UNKNOWN_SID: "Session ID unknown",
    BAD_HANDSHAKE_METHOD: "Bad handshake method",
    BAD_REQUEST: "Bad request",
    FORBIDDEN: "Forbidden",
    UNSUPPORTED_PROTOCOL: "Unsupported protocol version",
}


class ProtocolViolation(Exception):
    """Raised by a message handler when the client broke the protocol: the engine closes the
    session and logs one line with this reason (no traceback)."""


class Reason:
    """Why a session ended, as python-socketio names it (passed to its disconnect handler)."""

    SERVER_DISCONNECT = "server disconnect"
    CLIENT_DISCONNECT = "client disconnect"
    PING_TIMEOUT = "ping timeout"
    TRANSPORT_CLOSE = "transport close"
    TRANSPORT_ERROR = "transport error"


@dataclass(frozen=True, slots=True)
class WireSettings:
    """How the engine behaves; built from ``server`` in the config by the socket door."""

    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_payload: int = 1_000_000
    transports: tuple[str, ...] = ("polling", "websocket")
    cors_origins: tuple[str, ...] | None = None  # None: any origin
    cors_credentials: bool = True
    send_buffer_limit: int = 16 * 1024 * 1024
    connect_timeout: float = 45.0
    upgrade_timeout: float = 10.0
    websocket_writer: str = "auto"  # auto | direct | compatible
    max_sessions: int = 0
    max_sessions_per_address: int = 0


@dataclass(slots=True)
class WireReport:
    """What the wire runs on, for the start-up log and ``GET /health``."""

    setting: str
    direct_available: bool
    direct_unavailable_reason: str | None
    seams: list[dict[str, Any]]
    connections: dict[str, int] = field(default_factory=lambda: {"direct": 0, "compatible": 0})
    fallbacks: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    #: the websocket reader uvicorn was given (``plugbus.api.app.uvicorn_options``): None when
    #: websockets are read through uvicorn's receive queue, with why in ``reader_reason``
    reader: str | None = None
    reader_reason: str | None = None
    #: why a first request that is a plain websocket upgrade goes through uvicorn's HTTP
    #: request handling (None: plugbus's fast path, ``wire/upgrade.py``, takes it)
    upgrade_reason: str | None = None
    #: connections read by the direct reader or by websockets' parser (under ``reader``)
    readers: dict[str, int] = field(default_factory=lambda: {"direct": 0, "websockets": 0})
    reader_not_attached: dict[str, int] = field(default_factory=dict)
    #: connections the direct reader handed to websockets mid-way, by the first frame's kind
    reader_switched: dict[str, int] = field(default_factory=dict)

    @property
    def expected_path(self) -> str:
        """The websocket writer new connections take when served by uvicorn's default."""
        if self.setting == "compatible" or not self.direct_available:
            return "compatible"
        return "direct"

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": "plugbus Engine.IO v4",
            "websocket_writer": {
                "setting": self.setting,
                "path": self.expected_path,
                "direct_available": self.direct_available,
                "direct_unavailable_reason": self.direct_unavailable_reason,
                "connections": dict(self.connections),
                "fallbacks": dict(self.fallbacks),
            },
            "websocket_reader": {
                "path": "direct" if self.reader else "uvicorn",
                "protocol": self.reader,
                "unavailable_reason": self.reader_reason,
                "unmask": MASK_IMPL,
                "handshakes_in_process": dict(HANDSHAKES),
                "header_lines": {
                    "match": "line by line" if HEADER_LINES_UNAVAILABLE else "one regex",
                    "unavailable_reason": HEADER_LINES_UNAVAILABLE,
                },
                "upgrade": {
                    "path": "uvicorn" if self.upgrade_reason else "plugbus",
                    "unavailable_reason": self.upgrade_reason,
                    "taken_in_process": UPGRADES["taken"],
                },
                "connections_total": dict(self.readers),
                "not_attached": dict(self.reader_not_attached),
                "switched_to_websockets": dict(self.reader_switched),
            },
            "closed": dict(self.counters),
            "seams": self.seams,
        }


def _direct_protocol_class() -> type | None:
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:
        return None
    return WebSocketsSansIOProtocol


def reader_protocol(
    setting: str, seam_report: seams.SeamReport
) -> tuple[type[ReaderProtocol] | None, str | None]:
    """The websocket protocol class to give uvicorn (``Config(ws=...)``) for a
    ``server.websocket_writer`` setting, or None and why uvicorn's own is used instead."""
    if setting == "compatible":
        return None, "server.websocket_writer is 'compatible'"
    missing = [
        name
        for seam in (seams.UVICORN_READER, seams.WEBSOCKETS_PARSER, seams.ASYNCIO_TASKS)
        for name in seam_report.missing(seam)
    ]
    if missing:
        return None, "the direct reader's uvicorn/websockets seams do not hold: " + ", ".join(
            missing
        )
    return ReaderProtocol, None


class EngineServer:
    """Engine.IO v4 over ASGI, for one python-socketio server (see the module docstring).

    :ivar sessions: live sessions by Engine.IO sid.
    :ivar report: the :class:`WireReport` (``GET /health``).
    """

    async_mode = "asgi"
    reason = Reason

    def __init__(self, settings: WireSettings, seam_report: seams.SeamReport) -> None:
        self.settings = settings
        self.handlers: dict[str, Callable[..., Any]] = {}
        self.sessions: dict[str, EngineSession] = {}
        #: every session's heartbeat and connect deadlines, behind one loop timer per kind
        self.timers = SessionTimers(
            settings.ping_interval, settings.ping_timeout, settings.connect_timeout
        )
        #: set by the drain (plugbus.api.lifecycle): new sessions are refused with 503
        self.draining = False
        #: sessions opened, by transport (metrics)
        self.handshakes: dict[str, int] = {}
        self._lingering: dict[str, EngineSession] = {}
        # sessions that have not joined a namespace yet, in all and per address: the limits
        # apply to them here (a joined connection is counted and limited by the bus, which
        # refuses with a Socket.IO connect_error that says why)
        self._pending = 0
        self._pending_per_address: dict[str | None, int] = {}
        direct_ok = seam_report.holds(seams.UVICORN_WEBSOCKET)
        self._direct_class = _direct_protocol_class() if direct_ok else None
        reason = None
        if not direct_ok:
            reason = "uvicorn's websockets-sansio seams do not hold: " + ", ".join(
                seam_report.missing(seams.UVICORN_WEBSOCKET)
            )
        self.report = WireReport(
            settings.websocket_writer, direct_ok, reason, seam_report.as_dict()
        )
        reader, self.report.reader_reason = reader_protocol(settings.websocket_writer, seam_report)
        if reader is not None:
            self.report.reader = f"{reader.__module__}.{reader.__qualname__}"
        self.report.upgrade_reason = upgrade_unavailable(reader, seam_report)
        if settings.websocket_writer == "direct" and not direct_ok:
            raise seams.WireError(f"server.websocket_writer is 'direct' but {reason}")
        #: python-socketio's message handler, for the direct reader (set at its first use)
        self._on_message: Callable[..., Any] | None = None
        self._id_pool = b""
        self._id_at = 0
        handshake = {
            "pingInterval": round(settings.ping_interval * 1000),
            "pingTimeout": round(settings.ping_timeout * 1000),
            "maxPayload": settings.max_payload,
        }
        # The OPEN packet after the sid, encoded once: by upgrades offered (a polling session
        # is offered the websocket when it is served).
        self._open_tails = {
            offered: orjson.dumps({"upgrades": ["websocket"] if offered else [], **handshake})
            .decode()
            .replace("{", ",", 1)
            for offered in (False, True)
        }

    # -- what python-socketio calls -------------------------------------------------------------

    def on(self, event: str, handler: Callable[..., Any] | None = None) -> Any:
        """Register python-socketio's ``connect``, ``message`` or ``disconnect`` handler."""
        if handler is None:

            def set_handler(h: Callable[..., Any]) -> Callable[..., Any]:
                self.handlers[event] = h
                return h

            return set_handler
        self.handlers[event] = handler
        return None

    async def send(self, sid: str, data: str | bytes) -> None:
        """Send one message to session ``sid`` (silently nothing when it is gone, as a
        broadcast to a client that just left must not fail)."""
        session = self.sessions.get(sid)
        if session is not None:
            session.send_message(data)

    async def send_packet(self, sid: str, pkt: Any) -> None:
        """Send a python-engineio ``Packet`` (only MESSAGE packets are ever handed here)."""
        await self.send(sid, pkt.data)

    async def disconnect(self, sid: str | None = None) -> None:
        """Close session ``sid`` from the server side, or every session when None."""
        targets = list(self.sessions.values()) if sid is None else [self.sessions.get(sid)]
        for session in targets:
            if session is not None:
                session.close(Reason.SERVER_DISCONNECT)

    async def get_session(self, sid: str) -> dict[str, Any]:
        """python-socketio's per-session dict.

        :raises KeyError: no such session.
        """
        return self.sessions[sid].data

    def transport(self, sid: str) -> str:
        """``"polling"`` or ``"websocket"``.

        :raises KeyError: no such session.
        """
        return self.sessions[sid].transport

    def session_of(self, sid: str) -> EngineSession | None:
        """The live session ``sid``, or None."""
        return self.sessions.get(sid)

    def create_event(self) -> asyncio.Event:
        return asyncio.Event()

    def create_queue(self) -> asyncio.Queue[Any]:
        return asyncio.Queue()

    def start_background_task(
        self, target: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> asyncio.Task[Any]:
        return asyncio.ensure_future(target(*args, **kwargs))

    async def sleep(self, seconds: float = 0) -> None:
        await asyncio.sleep(seconds)

    def generate_id(self) -> str:
        """An unguessable session id: 15 bytes from the OS's CSPRNG, base64url (20 chars).

        The bytes are read from ``os.urandom`` 4 KB at a time and handed out 15 at a time: one
        system call per ~270 sessions instead of one per session (as Node's base64id does).
        """
        pool = self._id_pool
        if len(pool) - self._id_at < 15:
            pool = self._id_pool = os.urandom(4095)
            self._id_at = 0
        at = self._id_at
        self._id_at = at + 15
        return base64.urlsafe_b64encode(pool[at : at + 15]).decode("ascii")

    async def shutdown(self) -> None:
        """Close every session (the server is stopping)."""
        for session in list(self.sessions.values()):
            session.close(Reason.SERVER_DISCONNECT)
        self.timers.stop()

    def count(self, what: str) -> None:
        """Count one refusal or forced close by kind (``GET /health``)."""
        counters = self.report.counters
        counters[what] = counters.get(what, 0) + 1

    def forget(self, session: EngineSession, reason: str, *, linger: bool) -> None:
        """Called once by :meth:`EngineSession.close`: the session leaves the table (or waits,
        ``linger``, for the GET that fetches its last packets) and python-socketio is told."""
        if self.sessions.pop(session.sid, None) is None:
            return
        if not session.socketio_connected:
            session.socketio_connected = True  # so a late mark_connected counts nothing twice
            self.joined(session)
        if linger:
            session.state = CLOSING
            self._lingering[session.sid] = session
            asyncio.get_running_loop().call_later(
                min(self.settings.ping_timeout, 5.0), self._lingering.pop, session.sid, None
            )
        handler = self.handlers.get("disconnect")
        if handler is not None:
            task = asyncio.get_running_loop().create_task(handler(session.sid, reason))
            task.add_done_callback(_log_task_error)

    # -- ASGI ---------------------------------------------------------------------------------

    def handle_request(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """Serve one HTTP request or websocket under the Engine.IO path: returns the coroutine
        to await. Not a coroutine itself, so that no frame of it stays suspended above each
        open websocket for the connection's life (every idle connection holds its chain of
        coroutine frames)."""
        if scope["type"] == "websocket":
            return self._websocket(scope, receive, send)
        return self._http_request(scope, receive, send)

    async def _http_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        q, headers = _request_parts(scope)
        method = scope.get("method", "GET")
        cors = self._cors_headers(headers)
        if cors is None:
            self.count("forbidden_origin")
            await _http_error(send, 403, FORBIDDEN, "origin not allowed", [])
            return
        if method == "OPTIONS":
            allow = [(b"access-control-allow-methods", b"OPTIONS, GET, POST")]
            if "access-control-request-headers" in headers:
                allow.append(
                    (
                        b"access-control-allow-headers",
                        headers["access-control-request-headers"].encode("latin-1"),
                    )
                )
            await _http(send, 204, b"", cors + allow)
            return
        problem = self._check_query(q, websocket=False)
        if problem is not None:
            await _http_error(send, 400, *problem, cors)
            return
        sid = q.get("sid")
        if sid is None:
            if method != "GET":
                await _http_error(
                    send, 400, BAD_HANDSHAKE_METHOD, f"a handshake is a GET, not {method}", cors
                )
                return
            await self._polling_handshake(scope, send, headers, cors)
            return
        session = self.sessions.get(sid) or self._lingering.get(sid)
        if session is None:
            await _http_error(
                send, 400, UNKNOWN_SID, "no such session (it ended, or never existed)", cors
            )
            return
        if session.transport != "polling" or q.get("transport") != "polling":
            await _http_error(send, 400, BAD_REQUEST, "the session is not on long-polling", cors)
            return
        if method == "GET":
            await self._poll(session, receive, send, cors)
        elif method == "POST":
            await self._post(session, receive, send, cors)
        else:
            await _http_error(
                send, 400, BAD_REQUEST, f"method {method} is not part of long-polling", cors
            )

    def _check_query(self, q: dict[str, str], *, websocket: bool) -> tuple[int, str] | None:
        if q.get("EIO") != "4":
            return UNSUPPORTED_PROTOCOL, f"EIO must be 4, got {q.get('EIO')!r}"
        transport = q.get("transport")
        if transport is None:
            return TRANSPORT_UNKNOWN, "the transport query parameter is missing"
        if transport not in self.settings.transports or (transport == "websocket") != websocket:
            return TRANSPORT_UNKNOWN, f"transport {transport!r} is not served here"
        return None

    def _cors_headers(self, headers: dict[str, str]) -> list[tuple[bytes, bytes]] | None:
        origin = headers.get("origin")
        if origin is None:
            return []
        allowed = self.settings.cors_origins
        if allowed is not None and origin not in allowed:
            return None
        out = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        if self.settings.cors_credentials:
            out.append((b"access-control-allow-credentials", b"true"))
        return out

    def joined(self, session: EngineSession) -> None:
        """``session`` is no longer waiting to join a namespace (it joined one, or ended)."""
        self._pending -= 1
        left = self._pending_per_address.get(session.remote_addr, 1) - 1
        if left > 0:
            self._pending_per_address[session.remote_addr] = left
        else:
            self._pending_per_address.pop(session.remote_addr, None)

    def _admit(self, scope: Scope) -> tuple[str | None, str | None]:
        """(remote address, refusal message or None) for a new session: sessions that have not
        joined a namespace yet are bounded by the connection limits, in all and per address."""
        client = scope.get("client")
        addr = client[0] if client else None
        if self.draining:
            return addr, "server is draining: connect to another node"
        s = self.settings
        if s.max_sessions and self._pending >= s.max_sessions:
            return addr, (
                f"server is busy: {s.max_sessions} sessions are waiting to join a "
                "namespace (server.limits.max_connections)"
            )
        if (
            s.max_sessions_per_address
            and self._pending_per_address.get(addr, 0) >= s.max_sessions_per_address
        ):
            return addr, (
                f"too many sessions from your address are waiting to join a namespace "
                f"(limit {s.max_sessions_per_address})"
            )
        return addr, None

    def _new_session(
        self, scope: Scope, transport: str, addr: str | None, headers: dict[str, str]
    ) -> EngineSession:
        # The request's headers once, lower-cased, under "plugbus.headers" (the socket door
        # hands this very dict to the Connection), not copied again as WSGI's HTTP_* keys:
        # every idle connection keeps its environ, and nothing reads those keys.
        environ: dict[str, Any] = {
            "asgi.scope": scope,
            "REMOTE_ADDR": addr,
            "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
            "plugbus.headers": headers,
        }
        sid = self.generate_id()
        self.handshakes[transport] = self.handshakes.get(transport, 0) + 1
        session = EngineSession(self, sid, transport, environ, addr)
        self.sessions[sid] = session
        self._pending += 1
        self._pending_per_address[addr] = self._pending_per_address.get(addr, 0) + 1
        return session

    def _open_packet(self, session: EngineSession) -> str:
        offered = session.transport == "polling" and "websocket" in self.settings.transports
        # generate_id's sids are base64url: nothing in them needs JSON escaping
        return '0{"sid":"' + session.sid + '"' + self._open_tails[offered]

    async def _connect_handler(self, session: EngineSession) -> bool:
        handler = self.handlers.get("connect")
        if handler is None:
            return True
        return await handler(session.sid, session.environ) is not False

    # -- long-polling -------------------------------------------------------------------------

    async def _polling_handshake(
        self, scope: Scope, send: Send, headers: dict[str, str], cors: list[tuple[bytes, bytes]]
    ) -> None:
        addr, refusal = self._admit(scope)
        if refusal is not None:
            self.count("draining" if self.draining else "session_limit")
            await _http_error(send, 503, FORBIDDEN, refusal, cors)
            return
        session = self._new_session(scope, "polling", addr, headers)
        if not await self._connect_handler(session):
            self.sessions.pop(session.sid, None)
            self.joined(session)
            await _http_error(send, 403, FORBIDDEN, "connection refused", cors)
            return
        session.start(self.settings.connect_timeout)
        await _http(send, 200, self._open_packet(session).encode(), cors + _TEXT)

    async def _poll(
        self, session: EngineSession, receive: Receive, send: Send, cors: list[tuple[bytes, bytes]]
    ) -> None:
        if session.poll is not None:
            # two GETs at once: the first is answered with a CLOSE, this one with 400
            session.close(Reason.TRANSPORT_ERROR)
            self.count("overlapping_poll")
            await _http_error(
                send, 400, BAD_REQUEST, "overlapping GET requests on one session", cors
            )
            return
        why: str | None = None
        if not session.outbox and session.state == OPEN:
            if session.upgrading:
                why = WAKE_NOOP
            else:
                fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
                session.poll = fut
                gone = asyncio.ensure_future(_wait_disconnect(receive))
                try:
                    await asyncio.wait((fut, gone), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    session.poll = None
                    gone.cancel()
                if not fut.done():
                    fut.cancel()
                    session.close(Reason.TRANSPORT_CLOSE, flush=False)
                    return  # the client hung up on its own GET
                why = fut.result()
        closing = session.state != OPEN or why == WAKE_CLOSE
        payload = session.take_outbox(PAYLOAD_PACKETS - 1 if closing else PAYLOAD_PACKETS)
        if closing:
            self._lingering.pop(session.sid, None)
            if session.close_reason == Reason.CLIENT_DISCONNECT:
                payload = payload or "6"  # the client closed it: nothing more to say
            else:
                payload = payload + "\x1e1" if payload else "1"
        elif not payload:
            payload = "6"  # NOOP: ends this GET so the client can finish its upgrade
        await _http(send, 200, payload.encode(), cors + _TEXT)

    async def _post(
        self, session: EngineSession, receive: Receive, send: Send, cors: list[tuple[bytes, bytes]]
    ) -> None:
        if session.state != OPEN:
            await _http_error(send, 400, BAD_REQUEST, "the session is closing", cors)
            return
        if session.posting:
            session.close(Reason.TRANSPORT_ERROR)
            await _http_error(
                send, 400, BAD_REQUEST, "overlapping POST requests on one session", cors
            )
            return
        session.posting = True
        try:
            body = await _read_body(receive, self.settings.max_payload)
            if body is None:
                self.count("payload_too_large")
                session.close(Reason.TRANSPORT_ERROR)
                await _http_error(
                    send,
                    413,
                    BAD_REQUEST,
                    f"payload larger than maxPayload ({self.settings.max_payload} bytes)",
                    cors,
                )
                return
            try:
                text = body.decode("utf-8")
                for encoded in text.split("\x1e"):
                    await self._receive_packet(session, encoded)
                    if session.state != OPEN:
                        break
            except (ProtocolViolation, UnicodeDecodeError) as exc:
                self._violation(
                    session,
                    str(exc) if isinstance(exc, ProtocolViolation) else "payload is not UTF-8",
                )
                await _http_error(send, 400, BAD_REQUEST, str(exc), cors)
                return
        finally:
            session.posting = False
        await _http(send, 200, b"ok", cors + _TEXT)

    async def _receive_packet(self, session: EngineSession, encoded: str) -> None:
        """One Engine.IO packet from a long-polling payload."""
        kind = encoded[:1]
        if kind == "4":
            await self._deliver(session, encoded[1:])
        elif kind == "b":
            try:
                data = base64.b64decode(encoded[1:], validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolViolation("a binary packet that is not base64") from None
            await self._deliver(session, data)
        else:
            self._control(session, encoded)

    def _control(self, session: EngineSession, encoded: str) -> None:
        kind = encoded[:1]
        if kind == "3":
            session.on_pong()
        elif kind == "1":
            session.close(Reason.CLIENT_DISCONNECT)
        elif kind == "6":
            pass  # NOOP
        elif kind == "2":
            raise ProtocolViolation("a PING from the client (in Engine.IO v4 the server pings)")
        else:
            raise ProtocolViolation(f"not an Engine.IO packet: {encoded[:20]!r}")

    async def _deliver(self, session: EngineSession, data: str | bytes) -> None:
        handler = self.handlers.get("message")
        if handler is not None and session.state == OPEN:
            await handler(session.sid, data)

    def _violation(self, session: EngineSession, reason: str) -> None:
        log.warning(
            "closing %s from %s: protocol violation: %s", session.sid, session.remote_addr, reason
        )
        self.count("protocol_violation")
        session.close(Reason.TRANSPORT_ERROR)

    # -- websocket ----------------------------------------------------------------------------

    async def _websocket_open(
        self, scope: Scope, receive: Receive, send: Send
    ) -> EngineSession | None:
        """The websocket's handshake (a new session, or a polling session's upgrade): the
        session it carries from now on, or None when it was refused or closed."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return None
        q, headers = _request_parts(scope)
        problem = self._check_query(q, websocket=True)
        if problem is None and self._cors_headers(headers) is None:
            self.count("forbidden_origin")
            problem = (FORBIDDEN, "origin not allowed")
        sid = q.get("sid")
        session: EngineSession | None = None
        if problem is None and sid is not None:
            session = self.sessions.get(sid)
            if session is None:
                problem = (UNKNOWN_SID, "no such session (it ended, or never existed)")
        if problem is None and sid is None:
            addr, refusal = self._admit(scope)
            if refusal is not None:
                self.count("draining" if self.draining else "session_limit")
                problem = (FORBIDDEN, refusal)
            else:
                session = self._new_session(scope, "websocket", addr, headers)
                if not await self._connect_handler(session):
                    self.sessions.pop(session.sid, None)
                    self.joined(session)
                    problem = (FORBIDDEN, "connection refused")
        if problem is not None or session is None:
            code, text = problem or (BAD_REQUEST, "bad request")
            await _deny_websocket(scope, send, 403 if code == FORBIDDEN else 400, code, text)
            return None
        await send({"type": "websocket.accept"})
        if sid is not None:
            if session.transport != "polling" or session.upgrading or session.state != OPEN:
                # a second websocket for a session that has one (or is getting one)
                await send({"type": "websocket.close", "code": 1008})
                return None
            if not await self._upgrade(session, receive, send):
                return None
        else:
            writer = self._make_writer(send, session)
            if writer is None:
                session.close(Reason.TRANSPORT_ERROR)
                await send({"type": "websocket.close", "code": 1011})
                return None
            writer.send(self._open_packet(session))
            session.use_writer(writer, send)
            session.start(self.settings.connect_timeout)
        return session

    async def _upgrade(self, session: EngineSession, receive: Receive, send: Send) -> bool:
        """The probe handshake of a polling session moving to this websocket."""
        session.upgrading = True
        ok = False
        try:
            message = await asyncio.wait_for(receive(), self.settings.upgrade_timeout)
            if message.get("text") != "2probe":
                return False
            await send({"type": "websocket.send", "text": "3probe"})
            session.wake(WAKE_NOOP)  # the pending GET ends, so the client can send UPGRADE
            message = await asyncio.wait_for(receive(), self.settings.upgrade_timeout)
            if message.get("text") != "5" or session.state != OPEN:
                return False
            writer = self._make_writer(send, session)
            if writer is None:
                return False
            session.use_writer(writer, send)
            session.wake(WAKE_NOOP)
            ok = True
            return True
        except (TimeoutError, KeyError):
            return False
        finally:
            session.upgrading = False
            if not ok:
                try:
                    await send({"type": "websocket.close", "code": 1002})
                except Exception:
                    pass

    def _make_writer(self, send: Send, session: EngineSession) -> DirectWriter | AsgiWriter | None:
        limit = self.settings.send_buffer_limit
        dropped = session.drop_slow
        setting = self.settings.websocket_writer
        if setting != "compatible":
            proto = getattr(send, "__self__", None)
            cls = self._direct_class
            # exact types, not isinstance: a subclass of uvicorn's protocol other than
            # plugbus's own reader may write frames its own way
            if cls is not None and (type(proto) is cls or type(proto) is ReaderProtocol):
                self.report.connections["direct"] += 1
                _trim(proto)
                return DirectWriter(proto, limit, dropped)
            if cls is None:
                reason = self.report.direct_unavailable_reason or "direct writer unavailable"
            elif proto is None:
                reason = "the ASGI send callable is not uvicorn's (an ASGI middleware wraps it)"
            else:
                reason = (
                    f"websockets are served by {type(proto).__module__}.{type(proto).__qualname__}"
                )
            first = reason not in self.report.fallbacks
            self.report.fallbacks[reason] = self.report.fallbacks.get(reason, 0) + 1
            if setting == "direct":
                if first:
                    log.error(
                        "server.websocket_writer is 'direct' but %s: websocket refused", reason
                    )
                return None
            if first:
                log.warning(
                    "websocket writer: compatible path (ASGI send) because %s; the "
                    "slow-consumer limit still holds",
                    reason,
                )
        self.report.connections["compatible"] += 1
        return AsgiWriter(send, limit, dropped)

    def _attach_reader(
        self, session: EngineSession, send: Send, upgraded: bool
    ) -> ReaderProtocol | None:
        """Give the connection to the direct reader (:mod:`.reader`) when uvicorn serves it
        with :class:`~.reader.ReaderProtocol` and the direct writer; from then on its messages
        reach ``on_message`` from the protocol's ``data_received``, and the receive loop of
        :meth:`_websocket` only sees the disconnect, and :data:`~.reader.RESUME` when a
        message suspended in its eager step and this task is to finish it."""
        proto = getattr(send, "__self__", None)
        if type(proto) is not ReaderProtocol:
            return None
        self._on_message = self.handlers.get("message")
        readers = self.report.readers
        writer = session.writer
        if writer is None or not writer.direct:
            reason = "the connection has the compatible writer"
        elif (host := asyncio.current_task()) is None:  # pragma: no cover - uvicorn's task
            reason = "no current task"
        elif proto.attach(self, session, host):
            readers["direct"] += 1
            return proto
        elif upgraded:
            reason = "upgraded from long-polling: a message came right behind the upgrade"
        else:
            reason = "frames arrived before the handshake's answer"
        readers["websockets"] += 1
        not_attached = self.report.reader_not_attached
        not_attached[reason] = not_attached.get(reason, 0) + 1
        return None

    # -- what the direct reader (.reader.ReaderProtocol) calls -----------------------------
    # methods of the engine with the session passed in, not closures per connection: an idle
    # connection holds nothing for them

    def reader_message(self, session: EngineSession, data: str | bytes) -> Any:
        """One message: the same checks as :meth:`_websocket`'s loop; ``on_message``'s
        coroutine for the reader to drive, or None."""
        if session.state != OPEN:
            return None
        on_message = self._on_message
        try:
            if type(data) is str:
                if data[:1] == "4" and on_message is not None:
                    if len(data) > self.settings.max_payload:
                        raise ProtocolViolation("message larger than maxPayload")
                    return on_message(session.sid, data[1:])
                self._control(session, data)
                return None
            if len(data) > self.settings.max_payload:
                raise ProtocolViolation("message larger than maxPayload")
            return on_message(session.sid, data) if on_message is not None else None
        except ProtocolViolation as exc:
            self._violation(session, str(exc))
            return None

    def reader_failed(self, session: EngineSession, exc: BaseException) -> None:
        """A message's coroutine raised: the session closes (one log line)."""
        if isinstance(exc, ProtocolViolation):
            self._violation(session, str(exc))
            return
        log.error("closing %s: its message handler failed", session.sid, exc_info=exc)
        session.close(Reason.TRANSPORT_ERROR)

    def reader_switched(self, reason: str) -> None:
        """The reader handed a connection to websockets' parser (counted by ``reason``)."""
        switches = self.report.reader_switched
        switches[reason] = switches.get(reason, 0) + 1

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One websocket, from its handshake to its end. Its frame is the one this connection
        keeps for its life (the handshake's locals are gone with ``_websocket_open``'s)."""
        session = await self._websocket_open(scope, receive, send)
        if session is None:
            return
        reader = self._attach_reader(session, send, b"sid=" in scope.get("query_string", b""))
        on_message = self.handlers.get("message")
        sid = session.sid
        max_payload = self.settings.max_payload
        try:
            while session.state == OPEN:
                message = await receive()
                if message is RESUME and reader is not None:
                    # the direct reader's message suspended: this task finishes it
                    await reader.run_pending()
                    continue
                if message["type"] != "websocket.receive":
                    session.close(Reason.TRANSPORT_CLOSE)
                    break
                text = message.get("text")
                try:
                    if text is not None:
                        if text[:1] == "4" and on_message is not None:
                            if len(text) > max_payload:
                                raise ProtocolViolation("message larger than maxPayload")
                            await on_message(sid, text[1:])
                        else:
                            self._control(session, text)
                    else:
                        data = message.get("bytes") or b""
                        if len(data) > max_payload:
                            raise ProtocolViolation("message larger than maxPayload")
                        if on_message is not None:
                            await on_message(sid, data)
                except ProtocolViolation as exc:
                    self._violation(session, str(exc))
        finally:
            if reader is not None:
                reader.abandon()
            writer = session.writer
            if writer is not None:
                self.report.connections["direct" if writer.direct else "compatible"] -= 1
            session.close(Reason.TRANSPORT_CLOSE)


_TEXT = [(b"content-type", b"text/plain; charset=UTF-8")]


def _request_parts(scope: Scope) -> tuple[dict[str, str], dict[str, str]]:
    """The query (first value of each parameter) and the headers (lower-cased names, the last
    of a repeated header) of a request."""
    text = scope.get("query_string", b"").decode("latin-1")
    headers = {
        k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())
    }
    if "%" in text or "+" in text:
        return {k: v[0] for k, v in parse_qs(text).items()}, headers
    # every handshake's query (EIO=4&transport=websocket&t=...) has nothing to decode: split
    # it as parse_qs would (blank values and names without "=" dropped, the first value kept)
    query: dict[str, str] = {}
    for pair in text.split("&"):
        name, _, value = pair.partition("=")
        if value and name not in query:
            query[name] = value
    return query, headers


def _trim(proto: Any) -> None:
    """uvicorn keeps the handshake's request and response (~3.5 KB) for the connection's life
    but reads neither after the accept, an asyncio.Queue for received messages that one
    reader (this engine) needs far less of, and an asyncio.Event for "writable" that holds a
    deque of waiters whether or not anything waits (declared seams).

    The request's headers are emptied as well as dropped: websockets' handshake parser is a
    generator that stays suspended in its frame-parsing loop for the connection's life with
    the request (~1.5 KB of headers) still in a local variable. uvicorn copied them into the
    ASGI scope before the application ran, and nothing reads the request again.
    """
    request = proto.request
    if request is not None:
        request.headers.clear()
    proto.request = proto.response = None
    # The scope's raw header list (~0.8 KB) too: the engine parsed it into the session's
    # environ before this runs, the ASGI app (this engine) is the scope's only reader from
    # here on, and uvicorn keeps the scope for the connection's life.
    scope = getattr(proto, "scope", None)
    if scope is not None:
        scope["headers"] = []
    if type(proto.queue) is asyncio.Queue:
        proto.queue = LeanReceiveQueue(list(proto.queue._queue))  # type: ignore[attr-defined]
    if type(proto.writable) is asyncio.Event:
        proto.writable = LeanWritableFlag(proto.writable.is_set())


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _http(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _http_error(
    send: Send, status: int, code: int, detail: str, cors: list[tuple[bytes, bytes]]
) -> None:
    body = orjson.dumps({"code": code, "message": f"{_MESSAGES[code]}: {detail}"})
    await _http(send, status, body, [*cors, (b"content-type", b"application/json")])


async def _deny_websocket(scope: Scope, send: Send, status: int, code: int, detail: str) -> None:
    """Refuse a websocket handshake with an HTTP status and the JSON error body where the
    server supports ASGI's websocket denial response; a bare 403 otherwise."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = orjson.dumps({"code": code, "message": f"{_MESSAGES[code]}: {detail}"})
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("disconnect handler failed", exc_info=task.exception())
