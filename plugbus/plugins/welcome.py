"""welcome: greets every new connection (the seed's ``welcome``) and, optionally, every join.

Greetings are templates: ``{sid}``, ``{server}`` and ``{user}`` in the connection greeting, the
same plus ``{room}`` in room greetings; ``{{`` and ``}}`` write literal braces. Templates are
checked when they are set — at start-up and by ``PUT /welcome`` — so rendering never fails.
``GET /welcome`` shows the greetings in use and ``PUT /welcome`` changes them at run time
(kept in the plugin's store, so with a Redis backend every node uses the new ones).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from plugbus import (
    Bus,
    Connection,
    Plugin,
    PluginSettings,
    Route,
    RouteRequest,
    ServerEvent,
    Store,
    hookimpl,
)

#: The variables of the connection greeting, and those of room greetings.
GREETING_VARIABLES = ("sid", "server", "user")
ROOM_GREETING_VARIABLES = ("sid", "server", "user", "room")


def template_checker(variables: tuple[str, ...]) -> Callable[[str], str]:
    """A pydantic ``AfterValidator`` function accepting templates that use only ``variables``.

    The returned function returns the template unchanged or raises ``ValueError`` naming the
    unknown variable, a format spec or conversion (not supported), or a stray brace.
    """
    allowed = ", ".join(f"{{{v}}}" for v in variables)

    def check(template: str) -> str:
        try:
            parts = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ValueError(
                f"not a valid template ({exc}); write {{{{ and }}}} for literal braces"
            ) from None
        for _literal, field, spec, conversion in parts:
            if field is None:
                continue
            if field not in variables:
                raise ValueError(
                    f"unknown template variable {{{field}}}; the variables are {allowed}"
                )
            if spec or conversion:
                raise ValueError(
                    f"{{{field}}} may not carry a format spec or conversion; write just {{{field}}}"
                )
        return template

    return check


Greeting = Annotated[str, AfterValidator(template_checker(GREETING_VARIABLES))]
RoomGreeting = Annotated[str, AfterValidator(template_checker(ROOM_GREETING_VARIABLES))]


class WelcomeSettings(PluginSettings):
    """Settings of the welcome plugin (``plugins.settings.welcome``); every key is optional."""

    greeting: Greeting = Field(
        "Welcome to server",
        description="Template sent to each new connection; variables {sid}, {server} "
        "(server.name) and {user} (identity name or user id, else the sid).",
    )
    event: str = Field(
        "welcome", min_length=1, description="The event name the greeting is sent as."
    )
    room_greetings: dict[str, RoomGreeting] = Field(
        default_factory=dict,
        description="Room name -> template sent to a connection that has just joined that room; "
        "variables {sid}, {server}, {user}, {room}. An empty template sends nothing.",
    )
    default_room_greeting: RoomGreeting = Field(
        "", description="Template for joins of rooms not in room_greetings; empty = none."
    )
    room_event: str = Field(
        "welcome", min_length=1, description="The event name room greetings are sent as."
    )


class Greetings(BaseModel):
    """The greetings in use: response of ``GET /welcome`` and ``PUT /welcome``."""

    greeting: str = Field(description="The connection greeting template.")
    room_greetings: dict[str, str] = Field(description="Room name -> room greeting template.")
    default_room_greeting: str = Field(description="Room greeting for other rooms; empty = none.")


class GreetingsUpdate(BaseModel):
    """Body of ``PUT /welcome``: the greetings to change; keys left out (or null) stay as they
    are. ``room_greetings`` replaces the whole map."""

    model_config = ConfigDict(extra="forbid")

    greeting: Greeting | None = Field(None, description="New connection greeting template.")
    room_greetings: dict[str, RoomGreeting] | None = Field(
        None, description="New room greetings map."
    )
    default_room_greeting: RoomGreeting | None = Field(
        None, description="New default room greeting."
    )


def user_of(connection: Connection) -> str:
    """What ``{user}`` stands for: the identity's name, else its user id, else the sid."""
    identity = connection.identity
    if identity is None:
        return connection.sid
    return identity.name or identity.user_id


class WelcomePlugin(Plugin):
    """Sends the greeting as ``settings.event`` to each accepted connection, and room greetings
    as ``settings.room_event`` to each connection that joins a room.

    :ivar settings: the validated :class:`WelcomeSettings`.
    :ivar greetings: the greetings in use (start from the settings; ``PUT /welcome`` replaces them).
    """

    Settings = WelcomeSettings
    settings: WelcomeSettings

    def __init__(self, settings: WelcomeSettings) -> None:
        super().__init__(settings)
        self.greetings = Greetings(
            greeting=settings.greeting,
            room_greetings=dict(settings.room_greetings),
            default_room_greeting=settings.default_room_greeting,
        )
        # read on every connect: the store object made once per bus, and the greetings a
        # PUT stored validated once per value, not once per connection
        self._store: tuple[Bus, Store] | None = None
        self._stored: tuple[Any, Greetings] | None = None

    def _store_of(self, bus: Bus) -> Store:
        held = self._store
        if held is None or held[0] is not bus:
            held = self._store = (bus, bus.store("welcome"))
        return held[1]

    @hookimpl
    def plugbus_register_events(self) -> list[ServerEvent]:
        """Called once at start-up: declares the greeting events (a string each) for the event
        contract; this plugin accepts no client events."""
        greeting, room = self.settings.event, self.settings.room_event
        if greeting == room:
            return [
                ServerEvent(
                    greeting,
                    str,
                    "A greeting: on connect, and after joining a room that has a room greeting.",
                )
            ]
        return [
            ServerEvent(greeting, str, "The greeting, sent once on connect."),
            ServerEvent(room, str, "A room's greeting, sent after joining a room that has one."),
        ]

    async def current(self, bus: Bus) -> Greetings:
        """The greetings in use: the last ones a ``PUT /welcome`` stored in the plugin's store
        (``bus.store("welcome")``, shared by every node with a Redis backend), else those of
        the settings."""
        stored = await self._store_of(bus).get("greetings")
        if stored:
            known = self._stored
            if known is not None and known[0] == stored:
                return known[1]
            greetings = Greetings.model_validate(stored)
            self._stored = (stored, greetings)
            return greetings
        return self.greetings

    @hookimpl
    async def plugbus_connected(self, connection: Connection, bus: Bus) -> None:
        """Called once per accepted connection, before its first event is handled: sends it the
        rendered greeting (so it arrives before any reply). Returns nothing. Only connections
        of the default namespace are greeted: the seed's ``welcome`` belongs there, and a
        client that also opens ``/admin`` should not be greeted twice."""
        if connection.namespace != bus.default_namespace:
            return
        greetings = await self.current(bus)
        text = greetings.greeting.format(
            sid=connection.sid, server=bus.server_name, user=user_of(connection)
        )
        await bus.emit(self.settings.event, text, to=connection.sid)

    @hookimpl
    async def plugbus_room_joined(self, connection: Connection, room: str, bus: Bus) -> None:
        """Called after a connection joined a room (by ``join-room`` or over REST): sends it the
        room's greeting, if there is one, before its join is acknowledged. Returns nothing.
        Default namespace only, like the connect greeting."""
        if connection.namespace != bus.default_namespace:
            return
        greetings = await self.current(bus)
        template = greetings.room_greetings.get(room, greetings.default_room_greeting)
        if template:
            text = template.format(
                sid=connection.sid, server=bus.server_name, user=user_of(connection), room=room
            )
            await bus.emit(self.settings.room_event, text, to=connection.sid)

    @hookimpl
    def plugbus_routes(self, bus: Bus) -> list[Route]:
        """Called once at start-up: ``GET /welcome`` (API-key scope ``read``) and ``PUT /welcome``
        (scope ``admin``), when REST keys are checked."""

        async def get_greetings(req: RouteRequest) -> Greetings:
            """The greetings in use."""
            return await self.current(bus)

        async def put_greetings(req: RouteRequest) -> Greetings:
            """Change greetings at run time (for every node when the backend is shared); an
            invalid template is a 422 problem naming the field, and changes nothing."""
            assert isinstance(req.body, GreetingsUpdate)
            current = await self.current(bus)
            self.greetings = current.model_copy(update=req.body.model_dump(exclude_none=True))
            await self._store_of(bus).set("greetings", self.greetings.model_dump())
            return self.greetings

        return [
            Route(
                "GET",
                "/welcome",
                get_greetings,
                response=Greetings,
                scope="read",
                summary="Show the greetings",
            ),
            Route(
                "PUT",
                "/welcome",
                put_greetings,
                body=GreetingsUpdate,
                response=Greetings,
                scope="admin",
                summary="Change the greetings at run time",
            ),
        ]
