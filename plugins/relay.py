"""relay: ``send-message`` ``{message, roomID}`` → ``receive-message`` to the room (the seed's).

Also over REST: ``POST /rooms/{room}/messages`` with ``{"message": ...}`` runs the very same
event through the same pipeline, so moderation applies to both doors alike.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

from plugbus import (
    Event,
    EventContext,
    Origin,
    Plugin,
    PluginSettings,
    Route,
    RouteRequest,
    hookimpl,
)
from plugbus import Bus


class Delivered(BaseModel):
    """Ack of ``send-message`` and response of ``POST /rooms/{room}/messages``."""

    room: str = Field(description="The room the message went to.")
    recipients: int = Field(description="Connections on this node it was delivered to.")


class SendMessage(Event):
    """Send a message to everyone in a room (the sender too, if it is in the room)."""

    name: ClassVar[str] = "send-message"
    ack = Delivered
    text_fields = ("message",)
    message: str = Field(description="The text to deliver.")
    roomID: str = Field(min_length=1, max_length=256, description="The room to deliver it to.")


class RoomMessage(BaseModel):
    """Body of ``POST /rooms/{room}/messages``."""

    model_config = {"extra": "forbid"}
    message: str = Field(description="The text to deliver as `receive-message`.")


class RelaySettings(PluginSettings):
    """Settings of the relay plugin."""

    event: str = Field("receive-message", min_length=1, description="Event name deliveries use.")


class RelayPlugin(Plugin):
    """Delivers room messages, from sockets and from REST."""

    Settings = RelaySettings
    settings: RelaySettings

    @hookimpl
    def plugbus_register_events(self) -> list[type[Event]]:
        """``send-message``."""
        return [SendMessage]

    @hookimpl
    async def plugbus_handle_event(self, event: Event, ctx: EventContext) -> dict[str, object] | None:
        """Deliver a ``send-message`` to its room, encoded once for all members."""
        if not isinstance(event, SendMessage):
            return None
        recipients = ctx.bus.room_size(event.roomID)
        await ctx.bus.emit(self.settings.event, event.message, room=event.roomID)
        return {"room": event.roomID, "recipients": recipients}

    @hookimpl
    def plugbus_routes(self, bus: Bus) -> list[Route]:
        """``POST /rooms/{room}/messages``."""

        async def post_message(req: RouteRequest) -> dict[str, object]:
            """Broadcast `receive-message` into a room; moderation applies as for sockets."""
            assert isinstance(req.body, RoomMessage)
            payload = {"message": req.body.message, "roomID": req.path_params["room"]}
            return await bus.dispatch(SendMessage.name, payload, bus.context(Origin.REST))  # type: ignore[no-any-return]

        return [Route("POST", "/rooms/{room}/messages", post_message, body=RoomMessage,
                      response=Delivered, summary="Send a message to a room")]
