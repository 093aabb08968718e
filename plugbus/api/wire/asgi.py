"""The ASGI app plugbus serves: the Engine.IO path to the socket server, the rest to FastAPI.

Socket.IO in front of FastAPI rather than mounted inside it, so the path stays exactly
``/<socketio_path>/`` and the lifespan reaches FastAPI (which starts and stops the bus).
"""

from __future__ import annotations

from typing import Any

from .engine import Receive, Scope, Send


class WireApp:
    """Routes ``/<socketio_path>/`` (with or without the trailing slash) to ``sio``'s engine
    and every other request, and the lifespan, to ``other``.

    :ivar sio: the python-socketio server (requests go straight to its engine, ``sio.eio``).
    :ivar other: the ASGI app behind it (FastAPI).
    """

    def __init__(self, sio: Any, other: Any, socketio_path: str = "socket.io") -> None:
        self.sio = sio
        # the engine itself, not python-socketio's handle_request that only awaits it: one
        # coroutine frame less held by every open websocket for its whole life
        self._engine = sio.eio
        self.other = other
        path = "/" + socketio_path.strip("/")
        self._paths = (path, path + "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope.get("path") in self._paths:
            await self._engine.handle_request(scope, receive, send)
        else:
            await self.other(scope, receive, send)
