"""The built-in chat page: ``GET /`` and the socket.io-client it loads, served locally.

``static/socket.io.min.js`` is the file from the npm package ``socket.io-client`` at the version
pinned in ``tests/interop/package-lock.json`` (a test keeps the two identical), so the page
needs no CDN. ``server.chat_page: false`` switches both routes off.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent / "static"


def chat_page_router() -> APIRouter:
    """Routes for the chat page and its script (left out of the OpenAPI document)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def chat_page() -> FileResponse:
        return FileResponse(STATIC / "chat.html", media_type="text/html; charset=utf-8")

    @router.get("/static/socket.io.min.js")
    async def socketio_client() -> FileResponse:
        return FileResponse(
            STATIC / "socket.io.min.js",
            media_type="text/javascript; charset=utf-8",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    return router
