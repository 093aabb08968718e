"""Every place plugbus depends on a private detail of another library, in one list.

plugbus serves Engine.IO itself (:mod:`plugbus.api.wire.engine`), so python-engineio's internals
are no longer used at all. What remains private is declared here, each with the upstream version
it was verified against:

* **python-socketio** — plugbus's Socket.IO server is ``socketio.AsyncServer`` with its
  packet codec and client managers. plugbus replaces its Engine.IO server through
  ``_engineio_server_class`` and takes over the parts of the Socket.IO session that the
  specification and plugbus's limits need (packet intake, CONNECT handling, event dispatch);
  the room index wraps the managers' ``basic_*`` room operations (python-socketio's Redis
  manager is not used: events cross nodes on plugbus's history feed).
* **uvicorn** — the direct websocket reader (:mod:`plugbus.api.wire.reader`) subclasses its
  websockets-sansio protocol: ``data_received`` parses plain frames itself and the messages
  websockets assembles are routed to the same dispatcher (``send_receive_event_to_app``);
  the direct websocket writer writes frames to the asyncio transport of uvicorn's
  websockets-sansio protocol, found as the ``__self__`` of the ASGI ``send`` callable, and trims
  that protocol's per-connection memory (``request``, ``response``, ``queue``, ``writable``, the scope's ``headers``); the HTTP head
  limits subclass its httptools protocol (``data_received`` and the parser callbacks).
* **websockets** — the direct reader unmasks with ``websockets.speedups.apply_mask`` (C), and
  takes a connection over only where ``ServerProtocol``'s parse generator waits between two
  messages (``StreamReader.at_eof``, an empty buffer, no fragmented message under way).

:func:`check` runs at import (a python-socketio attribute that is gone is a start-up error: the
server cannot work without it) and its :class:`SeamReport` is logged at start-up and served in
``GET /health``. A version other than the verified one is reported as *unverified*, not
silently trusted; the direct writer is only taken when its uvicorn seams hold.
"""

from __future__ import annotations

import importlib.metadata
import sys
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Seam:
    """One private dependence: which package, what, why, and the version it was verified on."""

    package: str
    verified: str
    names: tuple[str, ...]
    why: str
    required: bool = True  # False: an optional fast path that has a public-API alternative


SOCKETIO_SERVER = Seam(
    "python-socketio",
    "5.18.1",
    (
        "AsyncServer._engineio_server_class",
        "AsyncServer._handle_eio_connect",
        "AsyncServer._handle_eio_message",
        "AsyncServer._handle_eio_disconnect",
        "AsyncServer._handle_connect",
        "AsyncServer._handle_event_internal",
        "AsyncServer._handle_ack",
        "AsyncServer._send_packet",
        "AsyncServer._trigger_event",
    ),
    "plugbus's Engine.IO server under python-socketio, and plugbus's own packet intake, "
    "CONNECT handling and event dispatch (spec conformance, limits, acks)",
)
SOCKETIO_MANAGERS = Seam(
    "python-socketio",
    "5.18.1",
    (
        "AsyncManager.basic_enter_room",
        "AsyncManager.basic_leave_room",
        "AsyncManager.basic_disconnect",
        "AsyncManager.rooms",
        "AsyncManager.get_participants",
    ),
    "the room index beside the managers' room table, and a connection's own room as a plain "
    "dict (room_index.SidRoom: get_participants reads a room's forward map as room._fwdm)",
)
UVICORN_WEBSOCKET = Seam(
    "uvicorn",
    "0.54.0",
    (
        "WebSocketsSansIOProtocol.send.__self__",
        "WebSocketsSansIOProtocol.transport",
        "WebSocketsSansIOProtocol.conn",
        "WebSocketsSansIOProtocol.close_sent",
        "WebSocketsSansIOProtocol.request",
        "WebSocketsSansIOProtocol.response",
        "WebSocketsSansIOProtocol.queue",
        "WebSocketsSansIOProtocol.writable",
        "WebSocketsSansIOProtocol.scope",
    ),
    "the direct websocket writer: frames written to the connection's transport without a "
    "task or a queue per message (a loop turn's frames in one write: meanwhile the writer "
    "stands in for `transport`, which uvicorn reads at each use and only writes, closes, asks "
    "is_closing and pauses or resumes reading on), and the connection's idle memory trimmed",
    required=False,
)
UVICORN_HTTP = Seam(
    "uvicorn",
    "0.54.0",
    (
        "HttpToolsProtocol.data_received",
        "HttpToolsProtocol.on_message_begin",
        "HttpToolsProtocol.on_header",
        "HttpToolsProtocol.on_headers_complete",
        "HttpToolsProtocol.on_message_complete",
        "HttpToolsProtocol.send_400_response",
        "HttpToolsProtocol.server_state",
        "HttpToolsProtocol.client",
        "HttpToolsProtocol.transport",
    ),
    "bounds on an HTTP request's head (server.limits.max_header_bytes, max_header_count): "
    "bytes counted before uvicorn's httptools parser is fed, headers in its header callback",
    required=False,
)
UVICORN_READER = Seam(
    "uvicorn",
    "0.54.0",
    (
        "WebSocketsSansIOProtocol.data_received",
        "WebSocketsSansIOProtocol.send_receive_event_to_app",
        "WebSocketsSansIOProtocol.handle_parser_exception",
        "WebSocketsSansIOProtocol.connection_lost",
        "WebSocketsSansIOProtocol.handshake_initiated",
        "WebSocketsSansIOProtocol.close_sent",
        "WebSocketsSansIOProtocol.read_paused",
        "WebSocketsSansIOProtocol.frames",
        "WebSocketsSansIOProtocol.curr_msg_data_type",
        "WebSocketsSansIOProtocol.queue",
        "WebSocketsSansIOProtocol.conn",
        "WebSocketsSansIOProtocol.config",
        "WebSocketsSansIOProtocol.loop",
        "WebSocketsSansIOProtocol.logger",
        "WebSocketsSansIOProtocol.transport",
        # the opening handshake it answers itself
        "WebSocketsSansIOProtocol.send",
        "WebSocketsSansIOProtocol.run_asgi",
        "WebSocketsSansIOProtocol.on_task_complete",
        "WebSocketsSansIOProtocol.tasks",
        "WebSocketsSansIOProtocol.default_headers",
        "WebSocketsSansIOProtocol.writable",
        "WebSocketsSansIOProtocol.disconnected",
        "WebSocketsSansIOProtocol.handshake_complete",
        "WebSocketsSansIOProtocol.start_keepalive",
        "WebSocketsSansIOProtocol.root_path",
        "WebSocketsSansIOProtocol.asgi_version",
        "WebSocketsSansIOProtocol.app_state",
        "WebSocketsSansIOProtocol.scheme",
        "WebSocketsSansIOProtocol.server",
        "WebSocketsSansIOProtocol.client",
        "utils.ClientDisconnected",
        "utils.get_client_addr",
        "utils.get_path_with_query_string",
    ),
    "the direct websocket reader (plugbus.api.wire.reader.ReaderProtocol, given to uvicorn "
    "as Config(ws=...)): plain frames parsed in data_received and dispatched eagerly; "
    "websockets' messages routed to the same dispatcher after a switch; the opening "
    "handshake answered without websockets' HTTP parser (uvicorn's scope, task and 101)",
    required=False,
)
UVICORN_UPGRADE = Seam(
    "uvicorn",
    "0.54.0",
    (
        "HttpToolsProtocol.data_received",
        "HttpToolsProtocol.ws_protocol_class",
        "HttpToolsProtocol.config",
        "HttpToolsProtocol.server_state",
        "HttpToolsProtocol.app_state",
        "HttpToolsProtocol.connections",
        "HttpToolsProtocol.transport",
        "HttpToolsProtocol.server",
        "HttpToolsProtocol.client",
        "HttpToolsProtocol.scheme",
        "HttpToolsProtocol.logger",
        "WebSocketsSansIOProtocol.connections",
        "WebSocketsSansIOProtocol.server",
        "WebSocketsSansIOProtocol.client",
        "WebSocketsSansIOProtocol.scheme",
        "WebSocketsSansIOProtocol.transport",
        "WebSocketsSansIOProtocol.logger",
    ),
    "a connection's first request, when it is a plain websocket upgrade, made into the "
    "direct reader's protocol by plugbus (plugbus.api.wire.upgrade) without uvicorn's HTTP "
    "scope, its request written out again, and a second read of the socket's addresses "
    "(what HttpToolsProtocol.handle_websocket_upgrade and connection_made do)",
    required=False,
)
WEBSOCKETS_SPEEDUPS = Seam(
    "websockets",
    "17.4",
    ("speedups.apply_mask",),
    "the direct websocket reader unmasks frames with websockets' C helper (its pure-Python "
    "twin in websockets.utils is used when the C extension is absent)",
    required=False,
)
WEBSOCKETS_PARSER = Seam(
    "websockets",
    "17.4",
    (
        "ServerProtocol.parser",
        "ServerProtocol.reader",
        "ServerProtocol.current_size",
        "ServerProtocol.max_message_size",
        "ServerProtocol.max_fragment_size",
        "StreamReader.at_eof",
        "StreamReader.buffer",
        # the opening handshake: websockets' grammar and limits, its state and parser
        "http11._token_re",
        "http11._value_re",
        "http11.MAX_NUM_HEADERS",
        "http11.MAX_LINE_LENGTH",
        "ServerProtocol.state",
        "ServerProtocol.parse",
        "ServerProtocol.logger",
    ),
    "the direct websocket reader takes a connection over only where websockets' parser is "
    "between two messages: no byte buffered, no fragmented message under way, its parse "
    "generator waiting in StreamReader.at_eof; and it refuses frames above the same size; "
    "a handshake it answers is checked with websockets' header grammar and limits, and the "
    "connection is then put in the OPEN state with its parser restarted",
    required=False,
)
ASYNCIO_TASKS = Seam(
    "python",
    "3.11",
    ("tasks._enter_task", "tasks._leave_task"),
    "the direct websocket reader runs a message's first step inside the connection's own "
    "ASGI task (what asyncio.current_task() and redis-py's timeouts ask for) without a task "
    "per message: the pair asyncio's tasks and 3.12's eager tasks use around each step",
    required=False,
)
SEAMS = (
    SOCKETIO_SERVER,
    SOCKETIO_MANAGERS,
    UVICORN_WEBSOCKET,
    UVICORN_HTTP,
    UVICORN_READER,
    UVICORN_UPGRADE,
    WEBSOCKETS_SPEEDUPS,
    WEBSOCKETS_PARSER,
    ASYNCIO_TASKS,
)


class WireError(RuntimeError):
    """A library plugbus's wire depends on lacks what plugbus needs from it."""


@dataclass(slots=True)
class SeamReport:
    """What :func:`check` found: per seam, the installed version and whether it holds."""

    results: dict[Seam, dict[str, Any]] = field(default_factory=dict)

    def holds(self, seam: Seam) -> bool:
        """True when every name of ``seam`` was found."""
        return bool(self.results[seam]["ok"])

    def missing(self, seam: Seam) -> list[str]:
        """The names of ``seam`` that were not found."""
        return list(self.results[seam]["missing"])

    def as_dict(self) -> list[dict[str, Any]]:
        """The report as ``/health`` serves it, one entry per seam."""
        return list(self.results.values())


def _installed(package: str) -> str | None:
    if package == "python":  # the interpreter's own modules: its minor version
        return f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


_MISSING = object()


def _resolve(names: tuple[str, ...], roots: dict[str, Any]) -> list[str]:
    """The names that do not resolve: ``Owner.attr[.attr]`` looked up on a class, or on a
    throw-away instance where the attribute is set by ``__init__``; attributes set later in a
    connection's life (``_late`` of a probe) and ``__self__`` of a bound method are checked per
    connection instead."""
    missing = []
    for name in names:
        owner_name, _, attr = name.partition(".")
        obj: Any = roots.get(owner_name, _MISSING)
        late = getattr(obj, "_late", ())
        for part in attr.split("."):
            if obj is _MISSING or part == "__self__" or part in late:
                break
            obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            missing.append(name)
    return missing


def _socketio_roots() -> dict[str, Any]:
    import socketio

    return {
        "AsyncServer": socketio.AsyncServer,
        "AsyncManager": _ManagerProbe(),
    }


class _ManagerProbe:
    """An AsyncManager instance (``rooms`` is set in ``__init__``)."""

    def __getattr__(self, name: str) -> Any:
        import socketio

        return getattr(socketio.AsyncManager(), name)


def _uvicorn_roots() -> dict[str, Any]:
    try:
        from uvicorn.config import Config
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
        from uvicorn.server import ServerState
    except ImportError:
        return {}

    class _Probe:
        # set during the websocket handshake, so not on a fresh instance
        _late = ("request", "response", "scope")

        def __init__(self) -> None:
            # log_config=None: a Config applies uvicorn's logging config by default, which
            # would reconfigure the logging of whatever process imports plugbus
            config = Config(app=_no_app, ws="websockets-sansio", log_config=None)
            # a placeholder loop: the probe is never connected, and asking asyncio for the
            # current loop at import would create one that nobody closes
            self._proto = WebSocketsSansIOProtocol(
                config=config,
                server_state=ServerState(),
                app_state={},
                _loop=_NotALoop(),  # type: ignore[arg-type]
            )

        def __getattr__(self, name: str) -> Any:
            return getattr(self._proto, name)

    roots: dict[str, Any] = {}
    try:
        from uvicorn.protocols import utils

        roots["utils"] = utils
    except ImportError:
        pass
    try:
        roots["WebSocketsSansIOProtocol"] = _Probe()
    except Exception:
        pass
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        roots["HttpToolsProtocol"] = HttpToolsProtocol(
            config=Config(app=_no_app, http="httptools", log_config=None),
            server_state=ServerState(),
            app_state={},
            _loop=_NotALoop(),  # type: ignore[arg-type]
        )
    except Exception:  # httptools missing, or the constructor changed: the seam reports it
        pass
    return roots


def _python_roots() -> dict[str, Any]:
    import asyncio.tasks

    return {"tasks": asyncio.tasks}


def _websockets_roots() -> dict[str, Any]:
    roots: dict[str, Any] = {}
    try:
        from websockets import http11
        from websockets.server import ServerProtocol
        from websockets.streams import StreamReader

        roots["ServerProtocol"] = ServerProtocol()
        roots["StreamReader"] = StreamReader()
        roots["http11"] = http11
    except Exception:  # renamed or its constructor changed: the seam reports the names
        pass
    try:
        from websockets import speedups

        roots["speedups"] = speedups
    except ImportError:
        pass
    return roots


class _NotALoop:
    """Stands in for the event loop of a protocol object that is only inspected."""


async def _no_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never served
    return None


def check() -> SeamReport:
    """Check every seam against the installed libraries.

    :raises WireError: a required seam (python-socketio) is missing a name; the message names
        the package, the installed and the verified version, and what is missing.
    """
    report = SeamReport()
    roots = {
        "python-socketio": _socketio_roots,
        "uvicorn": _uvicorn_roots,
        "websockets": _websockets_roots,
        "python": _python_roots,
    }
    for seam in SEAMS:
        installed = _installed(seam.package)
        missing = _resolve(seam.names, roots[seam.package]()) if installed else list(seam.names)
        ok = not missing
        report.results[seam] = {
            "package": seam.package,
            "verified": seam.verified,
            "installed": installed,
            "version_verified": installed == seam.verified,
            "ok": ok,
            "missing": missing,
            "why": seam.why,
        }
        if seam.required and not ok:
            raise WireError(
                f"plugbus's wire needs {', '.join(missing)} from {seam.package} (verified against "
                f"{seam.verified}, installed: {installed or 'none'}); install {seam.package}=={seam.verified}"
            )
    return report
