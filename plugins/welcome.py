"""welcome: greets every new connection with a ``welcome`` event (the seed's greeting)."""

from __future__ import annotations

from pydantic import Field

from plugbus import Bus, Connection, Plugin, PluginSettings, hookimpl


class WelcomeSettings(PluginSettings):
    """Settings of the welcome plugin."""

    greeting: str = Field("Welcome to server", description="The text sent to each new connection.")
    event: str = Field("welcome", min_length=1, description="The event name the greeting is sent as.")


class WelcomePlugin(Plugin):
    """Sends ``settings.greeting`` as ``settings.event`` to each connection once it is accepted."""

    Settings = WelcomeSettings
    settings: WelcomeSettings

    @hookimpl
    async def plugbus_connected(self, connection: Connection, bus: Bus) -> None:
        """Greet the new connection; it receives this before any reply to its own events."""
        await bus.emit(self.settings.event, self.settings.greeting, to=connection.sid)
