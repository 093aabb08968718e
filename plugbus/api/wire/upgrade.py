"""A connection's first request, when it is a plain websocket upgrade, answered without
uvicorn's HTTP request handling.

uvicorn's httptools protocol takes an upgrade request through its HTTP machinery first: the
parser's callbacks, an HTTP scope, the request's head written out again as bytes, then a
websocket protocol whose ``connection_made`` reads the socket's addresses a second time, and
:class:`~plugbus.api.wire.reader.ReaderProtocol` parses that head once more. For a websocket
server nearly every connection is one such request, so :func:`upgrade_protocol` gives uvicorn
(``Config(http=...)``) a subclass of its HTTP protocol whose ``data_received`` looks at the
connection's first read: when it is exactly one request head that
:func:`~plugbus.api.wire.reader.parse_handshake` takes, that httptools would parse to the
same request and uvicorn would upgrade, the reader protocol is made at once with this
protocol's addresses (:meth:`~plugbus.api.wire.reader.ReaderProtocol.adopt`) and the
handshake (:meth:`~plugbus.api.wire.reader.ReaderProtocol.begin`), as uvicorn's
``handle_websocket_upgrade`` would have made it. Every other read, and every other request,
goes to uvicorn's class unchanged, so every refusal and error answer is the one it gives now.

What httptools would do differently is declined, not re-implemented: a target byte outside
``0x21``–``0x7e`` (httptools refuses control bytes, DEL and non-ASCII in the path), more
than one ``Connection`` header (uvicorn reads only the last, which may not ask for the
upgrade), a head over ``server.limits.max_header_bytes`` or with more headers than
``max_header_count`` (answered 431 by :mod:`.http_limits`), and a request that comes in more
than one read. ``tests/test_upgrade_fast_path.py`` holds the two paths side by side.

The uvicorn attributes used are declared in :mod:`plugbus.api.wire.seams`
(``UVICORN_UPGRADE``); without them uvicorn's own upgrade runs, and the start-up log and
``GET /health`` (``websocket_reader.upgrade``) say so.
"""

from __future__ import annotations

from typing import Any

from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import seams
from .reader import HANDSHAKES, Handshake, ReaderProtocol, parse_handshake

#: upgrade requests answered by this fast path in this process (``GET /health``)
UPGRADES = {"taken": 0}


def upgrade_unavailable(reader: type | None, seam_report: seams.SeamReport) -> str | None:
    """Why the fast path cannot be had (None: it can) with ``reader`` as the websocket
    protocol class (:func:`~plugbus.api.wire.engine.reader_protocol`)."""
    if reader is not ReaderProtocol:
        return "the direct websocket reader is not in use"
    missing = seam_report.missing(seams.UVICORN_UPGRADE)
    if missing:
        return "uvicorn's HTTP upgrade seams do not hold: " + ", ".join(missing)
    return None


def upgrade_protocol(
    base: type[HttpToolsProtocol], max_head_bytes: int, max_headers: int
) -> type[HttpToolsProtocol]:
    """``base`` (uvicorn's httptools protocol, or plugbus's bounded one) with the fast path
    for a first request that is a plain websocket upgrade; ``max_head_bytes`` and
    ``max_headers`` are ``base``'s limits (0: off), which the fast path leaves to ``base``.

    :return: a protocol class for ``uvicorn.Config(http=...)``.
    """

    class UpgradeProtocol(base):  # type: ignore[valid-type, misc]
        """One HTTP/1.1 connection; a first read that is a plain websocket upgrade becomes
        plugbus's websocket reader protocol without an HTTP request cycle."""

        _first = True

        def data_received(self, data: bytes) -> None:
            if self._first:
                self._first = False
                if self._upgrade(data):
                    return
            super().data_received(data)

        def _upgrade(self, data: bytes) -> bool:
            if data[:4] != b"GET " or self.ws_protocol_class is not ReaderProtocol:
                return False
            if max_head_bytes and len(data) > max_head_bytes:
                return False
            handshake = parse_handshake(data, self.config.ws_per_message_deflate)
            if not isinstance(handshake, Handshake):
                return False
            if max_headers and len(handshake.headers) > max_headers:
                return False
            if handshake.connection_headers != 1:
                return False
            target = handshake.target
            if min(target) < 0x21 or max(target) > 0x7E:
                return False
            if self.logger.level <= TRACE_LOG_LEVEL:
                prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
                self.logger.log(TRACE_LOG_LEVEL, "%sUpgrading to WebSocket", prefix)
            # what uvicorn's handle_websocket_upgrade does, less the HTTP scope and the
            # request written out again for the websocket protocol to parse
            self.connections.discard(self)
            protocol: Any = ReaderProtocol(
                config=self.config, server_state=self.server_state, app_state=self.app_state
            )
            protocol.adopt(self)
            protocol.begin(handshake)
            self.transport.set_protocol(protocol)
            HANDSHAKES["direct"] += 1
            UPGRADES["taken"] += 1
            return True

    return UpgradeProtocol
