"""rooms: ``join-room`` ``{room}`` (the seed's) and ``leave-room`` ``{room}``."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

from plugbus import (
    ConnectionRequired,
    Event,
    EventContext,
    NotAllowed,
    Plugin,
    PluginSettings,
    hookimpl,
)


class RoomAck(BaseModel):
    """Ack of ``join-room`` and ``leave-room``."""

    room: str
    rooms: list[str] = Field(description="All rooms the connection is in afterwards.")


class JoinRoom(Event):
    """Join a room; messages sent to it reach this connection from now on."""

    name: ClassVar[str] = "join-room"
    ack = RoomAck
    room: str = Field(min_length=1, max_length=256, description="The room to join.")


class LeaveRoom(Event):
    """Leave a room."""

    name: ClassVar[str] = "leave-room"
    ack = RoomAck
    room: str = Field(min_length=1, max_length=256, description="The room to leave.")


class RoomsSettings(PluginSettings):
    """Settings of the rooms plugin (room name rules arrive with the complete rooms issue)."""


class RoomsPlugin(Plugin):
    """Puts connections into rooms and takes them out."""

    Settings = RoomsSettings

    @hookimpl
    def plugbus_register_events(self) -> list[type[Event]]:
        """``join-room`` and ``leave-room``."""
        return [JoinRoom, LeaveRoom]

    @hookimpl
    async def plugbus_handle_event(self, event: Event, ctx: EventContext) -> dict[str, object] | None:
        """Join or leave; refuses a room named like another connection's id."""
        if not isinstance(event, JoinRoom | LeaveRoom):
            return None
        if ctx.connection is None:
            raise ConnectionRequired(
                f"{event.event_name!r} acts on the sender's own connection; it cannot be sent "
                f"over REST", details={"event": event.event_name},
            )
        sid = ctx.connection.sid
        if isinstance(event, JoinRoom):
            if event.room != sid and ctx.bus.is_connection_id(event.room):
                raise NotAllowed(
                    "room name is reserved: it is the id of a connection",
                    details={"room": event.room, "field": "room"},
                )
            await ctx.bus.join(sid, event.room)
        else:
            await ctx.bus.leave(sid, event.room)
        return {"room": event.room, "rooms": ctx.bus.rooms_of(sid)}
