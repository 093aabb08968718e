"""The application factory: one bus, a Socket.IO door wrapping a FastAPI REST door.

Socket.IO wraps FastAPI (:class:`~plugbus.api.wire.WireApp`) rather than being mounted inside it:
the Socket.IO path stays exactly ``/<socketio_path>/`` and the ASGI
lifespan reaches FastAPI, which runs ``plugbus_startup`` and ``plugbus_shutdown``.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from plugbus.core import Bus, Config, LoadedConfig, load_plugins
from plugbus.core.loader import LoadedPlugins

from .admin import admin_router
from .body_limit import BodyLimitMiddleware
from .chat_page import chat_page_router
from .lifecycle import Lifecycle
from .metrics import Metrics, RestMetricsMiddleware, metrics_router
from .problems import document_problems, install_problem_handlers
from .request_id import RequestIdMiddleware
from .rest_door import PublishLimiter, add_plugin_routes, core_router
from .socket_door import PlugbusSocketServer
from .wire import SEAM_REPORT, WireApp, limited_http_protocol, reader_protocol, seams
from .wire.reader import HEADER_LINES_UNAVAILABLE, MASK_IMPL
from .wire.upgrade import upgrade_protocol, upgrade_unavailable

log = logging.getLogger("plugbus")


@dataclass(slots=True)
class Application:
    """A built plugbus application.

    :ivar asgi: the ASGI callable to serve (Socket.IO in front, FastAPI behind).
    :ivar bus: its bus.
    :ivar rest: the FastAPI app (for tests and OpenAPI).
    :ivar sio: the Socket.IO server.
    :ivar lifecycle: the node's phase, readiness and drain.
    :ivar metrics: the node's Prometheus metrics.
    """

    asgi: WireApp
    bus: Bus
    rest: FastAPI
    sio: PlugbusSocketServer
    lifecycle: Lifecycle
    metrics: Metrics


def uvicorn_options(config: Config) -> dict[str, Any]:
    """The uvicorn settings a config implies (``plugbus serve`` and plugbus.testing use them).

    uvicorn's default websocket implementation (websockets-sansio) is what the direct write
    path in :mod:`plugbus.api.wire` needs; it is named here so that it stays so.
    """
    server = config.server
    options: dict[str, Any] = {
        "ws": "websockets-sansio",
        "ws_max_size": server.max_message_bytes,
        "ws_per_message_deflate": server.websocket_compression,
        # Engine.IO's heartbeat (server.ping_interval / ping_timeout) already finds dead
        # peers; uvicorn's own websocket PING every 20 s would cost every idle connection a
        # timer (~0.5 KB) and the server a frame each way, for nothing Engine.IO does not do
        # (Node's engine.io sends no websocket-level pings either).
        "ws_ping_interval": None,
        "timeout_graceful_shutdown": server.shutdown_timeout,
        "log_level": server.log_level,
        "lifespan": "on",
    }
    reader, _ = reader_protocol(server.websocket_writer, SEAM_REPORT)
    if reader is not None:
        # plugbus's own subclass of websockets-sansio: plain frames read without a queue,
        # a task or an ASGI event per message (wire/reader.py); /health says which is in use
        options["ws"] = reader
    limits = server.limits.max_header_bytes, server.limits.max_header_count
    if SEAM_REPORT.holds(seams.UVICORN_HTTP):
        options["http"] = limited_http_protocol(*limits)
    if upgrade_unavailable(reader, SEAM_REPORT) is None:
        # a first request that is a plain websocket upgrade skips uvicorn's HTTP request
        # handling (wire/upgrade.py); /health and the start-up log say whether it runs
        if "http" in options:
            options["http"] = upgrade_protocol(options["http"], *limits)
        else:
            options["http"] = upgrade_protocol(HttpToolsProtocol, 0, 0)
    return options


def create_app(loaded: LoadedConfig, plugins: LoadedPlugins | None = None) -> Application:
    """Build an application from a validated config: a fresh plugin manager, bus and doors.
    ``plugins`` is ``load_plugins(loaded)`` when the caller has already loaded them (the CLI
    does, to refuse a bad plugin setting before importing the doors); by default they are
    loaded here.

    :raises ConfigError: a plugin could not be loaded or configured.
    """
    config = loaded.config
    bus = Bus(config, plugins if plugins is not None else load_plugins(loaded))
    sio = PlugbusSocketServer(bus, config)
    lifecycle = Lifecycle(bus, sio.eio, config.server.drain_seconds)
    metrics = Metrics(bus, sio, lifecycle, time_hooks=config.server.metrics.enabled)
    # with metrics off, the doors count nothing
    sio.metrics = metrics if config.server.metrics.enabled else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        _log_wire(sio)
        await bus.start()
        lifecycle.started()
        try:
            yield
        finally:
            lifecycle.stopping()
            await bus.stop()

    rest = FastAPI(
        title="plugbus",
        summary="A plugin-driven real-time event bus: Socket.IO and REST over one pipeline.",
        version=_version(),
        lifespan=lifespan,
        # Starlette's trailing-slash redirect builds Location from the Host header, which the
        # client chose; a path with a stray slash is a 404 problem instead.
        redirect_slashes=False,
    )
    cors = config.server.cors
    rest.add_middleware(
        CORSMiddleware,
        allow_origins=["*"] if cors.origins == "*" else cors.origins,
        allow_methods=cors.methods,
        allow_credentials=cors.credentials,
        allow_headers=["*"],
        expose_headers=["X-Request-ID"],
    )
    rest.add_middleware(BodyLimitMiddleware, limit=config.server.max_message_bytes)
    if config.server.metrics.enabled:
        rest.state.metrics = metrics
        rest.add_middleware(RestMetricsMiddleware, metrics=metrics)
    # outermost, so that refusals by the middlewares inside carry the id too
    rest.add_middleware(RequestIdMiddleware)
    install_problem_handlers(rest)
    limits = config.server.limits
    limiter = PublishLimiter(
        limits.rest_publish_per_key, limits.rest_publish_per_address, limits.rest_publish_burst
    )
    rest.include_router(core_router(bus, sio.eio, limiter, lifecycle))
    rest.include_router(admin_router(bus, sio, page=config.server.admin_page))
    if config.server.metrics.enabled and not config.server.metrics.port:
        rest.include_router(metrics_router(bus, metrics))
    if config.server.chat_page:
        rest.include_router(chat_page_router())
    add_plugin_routes(rest, bus, limiter)
    _document_problems(rest)
    asgi = WireApp(sio, rest, config.server.socketio_path)
    return Application(asgi=asgi, bus=bus, rest=rest, sio=sio, lifecycle=lifecycle, metrics=metrics)


def _document_problems(rest: FastAPI) -> None:
    """Post-process FastAPI's OpenAPI document once: error responses as problem+json."""
    build = rest.openapi

    def openapi() -> dict[str, Any]:
        if rest.openapi_schema is None:
            rest.openapi_schema = document_problems(build())
        return rest.openapi_schema

    rest.openapi = openapi  # type: ignore[method-assign]


def _log_wire(sio: PlugbusSocketServer) -> None:
    """Say at start-up which path the wire takes, and every seam that is not as verified."""
    report = sio.eio.report
    if report.expected_path == "direct":
        log.info(
            "wire: plugbus Engine.IO v4; websockets written directly to uvicorn's transport "
            "(websocket_writer: %s)",
            report.setting,
        )
    else:
        log.warning(
            "wire: plugbus Engine.IO v4; websockets written through ASGI send "
            "(websocket_writer: %s%s)",
            report.setting,
            f"; {report.direct_unavailable_reason}" if report.direct_unavailable_reason else "",
        )
    if report.reader is not None:
        log.info(
            "wire: websocket frames read directly by %s (unmask: %s)", report.reader, MASK_IMPL
        )
    else:
        log.warning(
            "wire: websocket frames read through uvicorn's receive queue (%s)",
            report.reader_reason,
        )
    if report.reader is not None and HEADER_LINES_UNAVAILABLE:
        log.warning(
            "wire: handshake header lines matched one by one (%s)", HEADER_LINES_UNAVAILABLE
        )
    if report.upgrade_reason is None:
        log.info("wire: websocket upgrade requests parsed by plugbus (wire/upgrade.py)")
    else:
        log.warning(
            "wire: websocket upgrade requests go through uvicorn's HTTP request handling (%s)",
            report.upgrade_reason,
        )
    if not SEAM_REPORT.holds(seams.UVICORN_HTTP):
        log.warning(
            "wire: HTTP request heads are NOT bounded (server.limits.max_header_bytes and "
            "max_header_count are off): uvicorn lacks %s",
            ", ".join(SEAM_REPORT.missing(seams.UVICORN_HTTP)),
        )
    for seam in report.seams:
        if not seam["version_verified"]:
            log.warning(
                "wire: %s %s is installed, but plugbus's seams into it were verified "
                "against %s (%s)",
                seam["package"],
                seam["installed"],
                seam["verified"],
                "they hold" if seam["ok"] else "missing: " + ", ".join(seam["missing"]),
            )


def _version() -> str:
    try:
        return importlib.metadata.version("plugbus")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
