"""Room history over both doors, served by the rooms plugin: read a page, remove a message.

Socket.IO event ``room-history`` ``{room, after?, limit?}`` and REST
``GET /rooms/{room}/messages?after=ID&limit=N`` answer the same page: the room's stored events
after offset ``after`` (from the oldest kept when left out), oldest first, with ``next`` — the
cursor for the following page, or null at the end. Both follow the room's join rules (a
connection that is not in the room must be admitted by ``plugbus_authorize_join``; REST needs
the ``read`` scope). ``DELETE /rooms/{room}/messages/{id}`` (``admin``) removes one message,
for moderation. The history itself is the bus's (``bus.history``): this plugin only reads it.
Built-in plugins import only ``plugbus``; this module is the rooms plugin's, split off to keep
each module small. See docs/recovery.md.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from plugbus import (
    Bus,
    Connection,
    Event,
    EventContext,
    InvalidPayload,
    NotAllowed,
    NotFound,
    Route,
    RouteRequest,
    StoredEvent,
)

Offset = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{1,20}-[0-9]{1,20}$",
        description='A message id in history: an offset "<ms>-<seq>", ordered across rooms.',
    ),
]


class HistoryItem(BaseModel):
    """One stored event."""

    id: Offset
    ts: str = Field(description="When it was stored (ISO 8601, UTC, milliseconds).")
    event: str = Field(description="The event name it was delivered as.")
    args: list[JsonValue] = Field(
        description="Its arguments as delivered (the message, for receive-message); binary "
        'data as {"base64": "..."} over REST.'
    )


class HistoryPage(BaseModel):
    """Ack of ``room-history`` and response of ``GET /rooms/{room}/messages``."""

    room: str
    messages: list[HistoryItem]
    next: Offset | None = Field(
        description="Pass as `after` for the following page; null when this page is the last."
    )


class RoomHistory(Event):
    """Read a page of a room's history (the events sent to it), oldest first."""

    name: ClassVar[str] = "room-history"
    ack = HistoryPage
    rest_scope = "read"
    history = False
    room: str = Field(min_length=1, max_length=256, description="The room.")
    after: Offset | None = Field(None, description="Start after this message id.")
    limit: int = Field(50, ge=1, description="Most messages to return.")


class PageQuery(BaseModel):
    """Query parameters of ``GET /rooms/{room}/messages``."""

    model_config = ConfigDict(extra="forbid")

    after: Offset | None = None
    limit: int = Field(
        50, ge=1, description="Most messages to return (at most rooms.history_page_max)."
    )


class Removed(BaseModel):
    """Response of ``DELETE /rooms/{room}/messages/{id}``."""

    room: str
    id: str
    removed: bool = Field(description="True: it was in history and is gone now.")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _item(event: StoredEvent, *, binary: bool) -> dict[str, Any]:
    ts = datetime.fromtimestamp(event.ts, UTC).isoformat(timespec="milliseconds")
    return {
        "id": event.id,
        "ts": ts.replace("+00:00", "Z"),
        "event": event.event,
        "args": list(event.args) if binary else _jsonable(list(event.args)),
    }


class RoomHistoryService:
    """Room history for the rooms plugin: its ``room-history`` answer and REST routes.

    :param max_page: the most messages one page may hold.
    """

    def __init__(self, max_page: int) -> None:
        self.max_page = max_page

    async def page(
        self,
        bus: Bus,
        room: str,
        after: str | None,
        limit: int,
        connection: Connection | None = None,
        namespace: str | None = None,
    ) -> dict[str, Any]:
        """One page of ``room``'s history (see the module docstring).

        :raises NotAllowed: ``connection`` is not in the room and its join rules refuse it.
        """
        if connection is not None and not bus.is_member(connection.sid, room):
            try:
                await bus.authorize_join(connection, room)
            except NotAllowed as exc:
                raise NotAllowed(
                    f"you may not read the history of room {room!r}: its join rules do not "
                    "admit you",
                    code=exc.code,
                    details={**exc.details, "room": room},
                ) from None
        limit = min(limit, self.max_page)
        events = await bus.history.page(namespace or bus.default_namespace, room, after, limit + 1)
        more = len(events) > limit
        events = events[:limit]
        return {
            "room": room,
            "messages": [_item(e, binary=connection is not None) for e in events],
            "next": events[-1].id if more else None,
        }

    async def answer(self, event: RoomHistory, ctx: EventContext) -> dict[str, Any]:
        """The ack of ``room-history``."""
        return await self.page(
            ctx.bus, event.room, event.after, event.limit, ctx.connection, ctx.namespace
        )

    def routes(self, bus: Bus) -> list[Route]:
        """``GET /rooms/{room}/messages`` (``read``) and ``DELETE
        /rooms/{room}/messages/{id}`` (``admin``)."""

        async def get_page(req: RouteRequest) -> dict[str, Any]:
            """A page of the room's history, oldest first: the events sent to it after
            message `after` (from the oldest kept when left out); `next` is the cursor of
            the following page."""
            query = req.params
            assert isinstance(query, PageQuery)
            return await self.page(bus, req.path_params["room"], query.after, query.limit)

        async def remove(req: RouteRequest) -> dict[str, Any]:
            """Remove one message from the room's history (moderation): it is no longer
            listed nor replayed to recovering clients. Delivered copies stay delivered."""
            room, offset = req.path_params["room"], req.path_params["id"]
            if not offset.replace("-", "", 1).isdigit():
                raise InvalidPayload(
                    f"{offset!r} is not a message id (an offset such as 1700000000000-42)",
                    details={"id": offset},
                )
            if not await bus.history.delete(bus.default_namespace, room, offset):
                raise NotFound(
                    f"no message {offset!r} in the history of room {room!r}",
                    details={"room": room, "id": offset},
                )
            return {"room": room, "id": offset, "removed": True}

        return [
            Route(
                "GET",
                "/rooms/{room}/messages",
                get_page,
                response=HistoryPage,
                query=PageQuery,
                scope="read",
                summary="Read a page of a room's history",
            ),
            Route(
                "DELETE",
                "/rooms/{room}/messages/{id}",
                remove,
                response=Removed,
                scope="admin",
                summary="Remove a message from a room's history",
            ),
        ]
