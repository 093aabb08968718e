"""A third-party plugin that serves two namespaces, ``/chat`` and ``/admin``, beside the
built-ins on ``/`` — written with ``from plugbus import ...`` alone, as the issue asks.

Config: ``server.namespaces: ["/", "/chat", "/admin"]`` and
``plugins.modules: {two_ns: "fixture_plugins.two_namespaces:TwoNamespaces"}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from plugbus import (
    Bus,
    Connection,
    ConnectionDenied,
    Event,
    EventContext,
    Plugin,
    PluginSettings,
    ServerEvent,
    hookimpl,
    new_id,
)


class Chat(Event):
    """A chat line, sent as two arguments: ``socket.emit("chat", user, text, ack)``. The ack is
    plain and error-first: ``(null, id, recipients)``, or ``(error)``."""

    name: ClassVar[str] = "chat"
    namespace: ClassVar[str] = "/chat"
    positional: ClassVar[tuple[str, ...]] = ("user", "text")
    ack_style: ClassVar[str] = "plain"
    text_fields: ClassVar[tuple[str, ...]] = ("text",)

    user: str = Field(min_length=1, max_length=40)
    text: str = Field(min_length=1, max_length=500)


class Shout(Event):
    """One string, not an object: ``socket.emit("shout", "hi")``; the usual envelope ack."""

    name: ClassVar[str] = "shout"
    namespace: ClassVar[str] = "/chat"
    positional: ClassVar[tuple[str, ...]] = ("text",)

    text: str


class Enter(Event):
    """Enter a room of ``/chat``: ``socket.emit("enter", "lobby")``."""

    name: ClassVar[str] = "enter"
    namespace: ClassVar[str] = "/chat"
    positional: ClassVar[tuple[str, ...]] = ("room",)

    room: str = Field(min_length=1, max_length=40)


class Hello(Event):
    """Where am I: one class registered in two namespaces; answers with the sender's
    namespace, id and CONNECT payload as the plugin sees them."""

    name: ClassVar[str] = "hello"
    namespace: ClassVar[tuple[str, ...]] = ("/chat", "/admin")


class ChatStatus(Event):
    """``status`` on ``/chat``: how many are connected there."""

    name: ClassVar[str] = "status"
    namespace: ClassVar[str] = "/chat"


class AdminStatus(Event):
    """``status`` on ``/admin`` — the same name as on ``/chat``, another class."""

    name: ClassVar[str] = "status"
    namespace: ClassVar[str] = "/admin"

    detail: bool = False


class TwoNamespaces(Plugin):
    """Chat on ``/chat``; a token-guarded ``/admin``."""

    class Settings(PluginSettings):
        """The token an ``/admin`` connection must send in its CONNECT payload."""

        admin_token: str = "letmein"

    def __init__(self, settings: PluginSettings) -> None:
        super().__init__(settings)
        self.connected_in: dict[str, str] = {}

    @hookimpl
    def plugbus_register_events(self) -> list[type[Event] | ServerEvent]:
        """The events above, and what ``/chat`` clients receive."""
        return [
            Chat,
            Shout,
            Enter,
            Hello,
            ChatStatus,
            AdminStatus,
            ServerEvent(
                "chat",
                tuple[str, str],
                "A chat line: (user, text) as two arguments.",
                namespace="/chat",
            ),
            ServerEvent(
                "arrived", str, "Someone connected to /chat (their sid).", namespace="/chat"
            ),
        ]

    @hookimpl
    def plugbus_connect(self, connection: Connection) -> None:
        """``/admin`` wants the token; other namespaces are open."""
        if connection.namespace == "/admin":
            auth = connection.auth if isinstance(connection.auth, dict) else {}
            if auth.get("token") != self.settings.admin_token:
                raise ConnectionDenied(
                    "/admin needs the admin token",
                    code="admin_only",
                    details={"namespace": connection.namespace},
                )

    @hookimpl
    async def plugbus_connected(self, connection: Connection, bus: Bus) -> None:
        """Tell the other ``/chat`` connections someone arrived."""
        self.connected_in[connection.sid] = connection.namespace
        if connection.namespace == "/chat":
            await bus.emit("arrived", connection.sid, namespace="/chat", skip_sid=connection.sid)

    @hookimpl
    def plugbus_disconnect(self, connection: Connection) -> None:
        """Forget the connection."""
        self.connected_in.pop(connection.sid, None)

    @hookimpl
    async def plugbus_handle_event(self, event: Event, ctx: EventContext) -> Any:
        """Answer this plugin's events; None for the others."""
        bus = ctx.bus
        if isinstance(event, Chat):
            recipients = bus.namespace_size(ctx.namespace) - (ctx.sid is not None)
            await bus.emit(
                "chat", (event.user, event.text), namespace=ctx.namespace, skip_sid=ctx.sid
            )
            return new_id(), recipients
        if isinstance(event, Shout):
            return {"text": event.text.upper()}
        if isinstance(event, Enter):
            if ctx.sid is None:
                return None
            await bus.join(ctx.sid, event.room)
            return {"rooms": sorted(bus.rooms_of(ctx.sid))}
        if isinstance(event, Hello):
            connection = ctx.connection
            return {
                "namespace": ctx.namespace,
                "sid": ctx.sid,
                "connection_namespace": connection.namespace if connection else None,
                "connected_in": self.connected_in.get(ctx.sid or ""),
                "auth": connection.auth if connection else None,
            }
        if isinstance(event, ChatStatus):
            return {"namespace": ctx.namespace, "connections": bus.namespace_size(ctx.namespace)}
        if isinstance(event, AdminStatus):
            return {
                "namespace": ctx.namespace,
                "all_connections": bus.connection_count,
                "per_namespace": {ns: bus.namespace_size(ns) for ns in ("/", "/chat", "/admin")},
            }
        return None
