"""The admin view: ``GET /admin`` (a page) and ``GET /connections`` (what it shows first).

The page is static — it holds no data and no secret — and reads everything through the REST
API with the API key the operator types in (kept in the tab's ``sessionStorage`` only): this
node's phase and counters (``/ready``, ``/health``), its connections (``/connections``, admin
scope), rooms and their members (``/rooms``), plugins and their hooks (``/plugins``), and the
moderation log (``/moderation/log``, when the moderation plugin runs). It polls every two
seconds. ``server.admin_page: false`` leaves the page out; the routes stay behind their scopes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from plugbus.core import Bus

from .rest_door import require_scope

STATIC = Path(__file__).resolve().parent / "static"


class ConnectionView(BaseModel):
    """One live connection on this node."""

    sid: str
    namespace: str
    user_id: str | None = Field(description="The authenticated user, or null.")
    name: str | None
    roles: list[str]
    remote_addr: str | None
    transport: str | None = Field(description='"websocket" or "polling".')
    rooms: list[str] = Field(description="The rooms it is in (its own id room left out).")


class ConnectionList(BaseModel):
    """``GET /connections``."""

    server: str = Field(description="server.name of the node that answered.")
    count: int = Field(description="Live connections on this node.")
    connections: list[ConnectionView] = Field(description="Up to ``limit`` of them.")


def admin_router(bus: Bus, sio: Any, *, page: bool) -> APIRouter:
    """``GET /connections`` (admin scope) and, with ``page``, the admin page at ``/admin``."""
    router = APIRouter()

    @router.get(
        "/connections",
        response_model=ConnectionList,
        tags=["server"],
        dependencies=[require_scope(bus, "admin")],
        summary="This node's live connections, with identity, transport and rooms",
    )
    async def connections(
        limit: int = Query(1000, ge=1, le=10_000, description="Most connections listed."),
    ) -> ConnectionList:
        """Connections held by the node that answers (behind a balancer, one node's share;
        room membership and presence across nodes are under ``/rooms``)."""
        live = bus.connections()
        views = []
        for connection in live[:limit]:
            identity = connection.identity
            eio_sid = sio.manager.eio_sid_from_sid(connection.sid, connection.namespace)
            session = sio.eio.session_of(eio_sid) if eio_sid is not None else None
            views.append(
                ConnectionView(
                    sid=connection.sid,
                    namespace=connection.namespace,
                    user_id=identity.user_id if identity else None,
                    name=identity.name if identity else None,
                    roles=list(identity.roles) if identity else [],
                    remote_addr=connection.remote_addr,
                    transport=session.transport if session is not None else None,
                    rooms=bus.rooms_of(connection.sid, connection.namespace),
                )
            )
        return ConnectionList(server=bus.server_name, count=len(live), connections=views)

    if page:

        @router.get("/admin", include_in_schema=False)
        async def admin_page() -> FileResponse:
            return FileResponse(
                STATIC / "admin.html",
                media_type="text/html; charset=utf-8",
                headers={
                    # the page runs only its own inline script and talks only to this origin
                    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                    "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
                    "Cache-Control": "no-store",
                },
            )

    return router
