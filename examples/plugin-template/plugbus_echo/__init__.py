# examples/plugin-template/plugbus_echo/__init__.py
"""plugbus-echo: answers ``echo`` in the ack and relays the text to everyone else."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from plugbus import Event, EventContext, Plugin, PluginSettings, hookimpl

__version__ = "0.1.0"


class Echo(Event):
    """``echo`` ``{text}``: what a client sends (validated before any plugin sees it)."""

    name: ClassVar[str] = "echo"
    text_fields = ("text",)  # user-written text: moderation plugins check it
    text: str = Field(min_length=1, max_length=500)


class EchoPlugin(Plugin):
    """Answers ``echo`` and sends the text to every other connection as ``echoed``."""

    class Settings(PluginSettings):
        """``plugins.settings.echo`` in config.yaml, checked at start-up."""

        prefix: str = Field("", description="Put before every echo.")

    settings: Settings

    @hookimpl
    def plugbus_register_events(self) -> list[type[Event]]:
        """The events this plugin accepts from clients."""
        return [Echo]

    @hookimpl
    async def plugbus_handle_event(self, event: Event, ctx: EventContext) -> dict[str, Any] | None:
        """Carry out ``echo``; return None for every other plugin's events."""
        if not isinstance(event, Echo):
            return None
        text = self.settings.prefix + event.text
        await ctx.bus.emit("echoed", text, skip_sid=ctx.sid)  # everyone but the sender
        return {"echo": text}  # the sender's ack data
