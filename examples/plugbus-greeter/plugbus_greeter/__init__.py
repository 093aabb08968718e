"""plugbus-greeter: an example plugin package.

It can stand in for the built-in ``welcome`` plugin (switch that off in config.yaml and this
one greets instead, with a template), and it adds an event of its own, ``greet`` ``{name}``,
whose ack is a greeting — over Socket.IO, or over REST as ``POST /events/greet``.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from plugbus import Bus, Connection, Event, EventContext, Plugin, PluginSettings, hookimpl

__version__ = "1.0.0"


class GreeterSettings(PluginSettings):
    """``plugins.settings.greeter`` in config.yaml."""

    greeting: str = Field(
        "Hello from plugbus-greeter, {sid}!", description="Template; {sid} is the connection id."
    )
    event: str = Field("welcome", description="Event name the greeting is sent as.")


class Greet(Event):
    """Ask the server to greet someone by name."""

    name: ClassVar[str] = "greet"
    text_fields = ("who",)
    who: str = Field(min_length=1, max_length=100)


class GreeterPlugin(Plugin):
    """Greets new connections and answers ``greet``."""

    Settings = GreeterSettings
    settings: GreeterSettings

    @hookimpl
    async def plugbus_connected(self, connection: Connection, bus: Bus) -> None:
        """Send the templated greeting to the new connection."""
        await bus.emit(
            self.settings.event,
            self.settings.greeting.format(sid=connection.sid),
            to=connection.sid,
        )

    @hookimpl
    def plugbus_register_events(self) -> list[type[Event]]:
        """The ``greet`` event."""
        return [Greet]

    @hookimpl
    def plugbus_handle_event(self, event: Event, ctx: EventContext) -> dict[str, str] | None:
        """Answer ``greet`` with a greeting in the ack."""
        if isinstance(event, Greet):
            return {"greeting": f"Hello, {event.who}!"}
        return None
