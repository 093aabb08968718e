"""plugbus's wire: Engine.IO v4 served by plugbus itself, under python-socketio's Socket.IO.

Everything a client touches below the Socket.IO packets — handshake, heartbeat, long-polling,
websocket, upgrade, framing, close, the limits that protect the server — lives in this package,
and every private detail of another library plugbus depends on is declared in
:mod:`plugbus.api.wire.seams` with the version it was verified against. The seams are checked
when this package is imported (:data:`SEAM_REPORT`); a missing required one stops start-up.

* :mod:`.engine` — :class:`EngineServer`, the Engine.IO server python-socketio runs on.
* :mod:`.session` — :class:`EngineSession`, one client's session.
* :mod:`.writers` — how packets reach a websocket: the direct writer and the ASGI writer.
* :mod:`.reader` — how frames come in: the direct reader under uvicorn (eager dispatch).
* :mod:`.asgi` — :class:`WireApp`, the ASGI app: the Engine.IO path, everything else to FastAPI.
* :mod:`.http_limits` — bounds on an HTTP request's head, enforced below the parser.
"""

from __future__ import annotations

from . import seams
from .asgi import WireApp
from .engine import EngineServer, ProtocolViolation, WireReport, WireSettings, reader_protocol
from .http_limits import limited_http_protocol
from .session import EngineSession
from .writers import encode_frame

#: The seam check made at import (raises :class:`~plugbus.api.wire.seams.WireError` when a
#: required seam is missing).
SEAM_REPORT = seams.check()

__all__ = [
    "SEAM_REPORT",
    "EngineServer",
    "EngineSession",
    "ProtocolViolation",
    "WireApp",
    "WireReport",
    "WireSettings",
    "encode_frame",
    "limited_http_protocol",
    "reader_protocol",
    "seams",
]
