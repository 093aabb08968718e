"""rooms: join, leave and list rooms, with name rules, membership notices and presence.

Socket.IO events: ``join-room`` ``{room}`` (the seed's), ``leave-room`` ``{room}``,
``my-rooms`` (no payload), ``room-members`` ``{room}`` and ``room-history`` ``{room, after?,
limit?}``. REST: ``GET /rooms``, ``GET /rooms/{room}``, ``GET /rooms/{room}/messages``,
``DELETE /rooms/{room}/messages/{id}``, and ``PUT``/``DELETE /rooms/{room}/members/{sid}`` to
put a connection into a room or take it out from the server side. Both doors apply the same
rules and both fire the same ``plugbus_room_joined``/``plugbus_room_left`` hooks, hence the
same notices. Room history is read through :mod:`plugbus.plugins.rooms.history`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, ClassVar

from pydantic import BaseModel, Field, RootModel, field_validator, model_validator

from plugbus import (
    Bus,
    Connection,
    ConnectionRequired,
    Event,
    EventContext,
    InvalidPayload,
    NotAllowed,
    NotFound,
    Plugin,
    PluginSettings,
    Route,
    RouteRequest,
    ServerEvent,
    hookimpl,
)

from .history import RoomHistory, RoomHistoryService

#: Any characters but control characters (C0, DEL and C1); the whole name must match.
DEFAULT_NAME_PATTERN = r"[^\x00-\x1f\x7f-\x9f]+"


# -- settings ---------------------------------------------------------------------------------


class RoomsSettings(PluginSettings):
    """Settings of the rooms plugin (``plugins.settings.rooms``); every key is optional."""

    max_name_length: int = Field(
        128, ge=1, description="Most characters in a room name a connection may join."
    )
    name_pattern: str = Field(
        DEFAULT_NAME_PATTERN,
        description="Regular expression (Python `re` syntax) the whole room name must match to "
        "be joined; the default allows any characters except control characters.",
    )
    max_rooms_per_connection: int = Field(
        100, ge=0, description="Most rooms one connection may be in at once; 0 = no limit."
    )
    notify_membership: bool = Field(
        False,
        description="Tell a room's other members when a connection joins or leaves it "
        "(including by disconnecting).",
    )
    joined_event: str = Field(
        "user-joined", min_length=1, description="Event name of the notice that someone joined."
    )
    left_event: str = Field(
        "user-left", min_length=1, description="Event name of the notice that someone left."
    )

    @field_validator("name_pattern")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    history_page_max: int = Field(
        100,
        ge=1,
        le=1000,
        description="Most messages one page of room history may hold (room-history, "
        "GET /rooms/{room}/messages).",
    )

    @model_validator(mode="after")
    def _notices_differ(self) -> RoomsSettings:
        if self.joined_event == self.left_event:
            raise ValueError(
                f"joined_event and left_event are both {self.joined_event!r}; "
                f"clients could not tell a join from a leave"
            )
        return self


# -- wire models ------------------------------------------------------------------------------


class JoinAck(BaseModel):
    """Ack of ``join-room``."""

    room: str = Field(description="The room asked for.")
    joined: bool = Field(
        description="True when the connection joined; false when it already was a member."
    )
    rooms: list[str] = Field(description="All rooms the connection is in afterwards, sorted.")


class LeaveAck(BaseModel):
    """Ack of ``leave-room``."""

    room: str = Field(description="The room asked for.")
    left: bool = Field(description="True when the connection left; false when it was not a member.")
    rooms: list[str] = Field(description="All rooms the connection is in afterwards, sorted.")


class MyRoomsAck(BaseModel):
    """Ack of ``my-rooms``."""

    rooms: list[str] = Field(description="All rooms the connection is in, sorted.")


class Member(BaseModel):
    """One member of a room."""

    sid: str = Field(description="The member's connection id.")
    user_id: str | None = Field(description="Its identity's user id, or null without an identity.")
    name: str | None = Field(description="Its identity's display name, or null.")


class RoomMembers(BaseModel):
    """Ack of ``room-members`` and response of ``GET /rooms/{room}``."""

    room: str
    count: int = Field(
        description="Members, on every node when the backend is shared (0 for a room nobody is in)."
    )
    members: list[Member]


class RoomCount(BaseModel):
    """One room of ``GET /rooms``."""

    room: str
    count: int = Field(description="Members, on every node when the backend is shared.")


class RoomList(RootModel[list[RoomCount]]):
    """Response of ``GET /rooms``: every room with members (on every node when the backend is
    shared), sorted by name."""


class MemberJoined(BaseModel):
    """Response of ``PUT /rooms/{room}/members/{sid}``."""

    room: str
    sid: str
    joined: bool = Field(description="True when it joined; false when it already was a member.")
    rooms: list[str] = Field(description="All rooms the connection is in afterwards, sorted.")


class MemberLeft(BaseModel):
    """Response of ``DELETE /rooms/{room}/members/{sid}``."""

    room: str
    sid: str
    left: bool = Field(description="True when it left; false when it was not a member.")
    rooms: list[str] = Field(description="All rooms the connection is in afterwards, sorted.")


class MembershipNotice(BaseModel):
    """Payload of the ``user-joined``/``user-left`` notices (when ``notify_membership`` is on)."""

    room: str
    sid: str = Field(description="The connection that joined or left.")
    user: str | None = Field(description="Its identity's user id, or null.")
    count: int = Field(
        description="Members of the room afterwards, on every node when the backend is shared."
    )


# -- events -----------------------------------------------------------------------------------


class JoinRoom(Event):
    """Join a room; messages sent to it reach this connection from now on."""

    name: ClassVar[str] = "join-room"
    ack = JoinAck
    room: str = Field(min_length=1, description="The room to join.")


class LeaveRoom(Event):
    """Leave a room."""

    name: ClassVar[str] = "leave-room"
    ack = LeaveAck
    room: str = Field(min_length=1, description="The room to leave.")


class MyRooms(Event):
    """Ask which rooms this connection is in (no payload needed)."""

    name: ClassVar[str] = "my-rooms"
    ack = MyRoomsAck


class ListMembers(Event):
    """Ask who is in a room (works over REST too, through ``POST /events/room-members``, with
    the ``read`` scope). A connection may list a room it is in, or one it would be allowed to
    join; the members of a room closed to it are refused like a join."""

    name: ClassVar[str] = "room-members"
    ack = RoomMembers
    rest_scope = "read"
    room: str = Field(min_length=1, description="The room to list.")


def _refuse_connection_id(bus: Bus, room: str) -> None:
    """Rooms named like a live connection's id are that connection's own: never joined or listed."""
    if bus.is_connection_id(room):
        raise NotAllowed(
            "room name is reserved: it is the id of a connection",
            details={"room": room, "field": "room"},
        )


def _invisible_character(name: str) -> str | None:
    """The first invisible formatting character of ``name`` — bidi controls, zero-width
    characters, the BOM (Unicode category Cf) and line/paragraph separators — as
    ``"U+202E (RIGHT-TO-LEFT OVERRIDE)"``, or None."""
    if name.isascii():
        return None
    for char in name:
        if unicodedata.category(char) in ("Cf", "Zl", "Zp"):
            return f"U+{ord(char):04X} ({unicodedata.name(char, 'unnamed')})"
    return None


# -- the plugin -------------------------------------------------------------------------------


class RoomsPlugin(Plugin):
    """Puts connections into rooms and takes them out, by their own request or the server's.

    :ivar settings: the validated :class:`RoomsSettings`.
    """

    Settings = RoomsSettings
    settings: RoomsSettings

    def __init__(self, settings: RoomsSettings) -> None:
        super().__init__(settings)
        self._pattern = re.compile(settings.name_pattern)
        self.history = RoomHistoryService(settings.history_page_max)

    # -- operations shared by both doors -------------------------------------------------

    def check_name(self, bus: Bus, room: str) -> None:
        """Refuse a room name a connection may not join.

        :raises InvalidPayload: too long, or not matching ``name_pattern``.
        :raises NotAllowed: the name is the id of a live connection (those rooms are reserved).
        """
        limit = self.settings.max_name_length
        if len(room) > limit:
            message = f"room name is {len(room)} characters long; the limit is {limit}"
            raise InvalidPayload(
                message,
                details={
                    "field": "room",
                    "setting": "max_name_length",
                    "limit": limit,
                    "length": len(room),
                    "errors": [{"loc": "room", "message": message, "type": "string_too_long"}],
                },
            )
        if "/" in room:
            message = (
                "room name contains '/': REST routes name a room in one path segment "
                "(/rooms/{room}/...), so such a room could not be reached over REST"
            )
            raise InvalidPayload(
                message,
                details={
                    "field": "room",
                    "character": "U+002F",
                    "errors": [{"loc": "room", "message": message, "type": "string_slash"}],
                },
            )
        invisible = _invisible_character(room)
        if invisible is not None:
            message = (
                f"room name contains the invisible character {invisible}; names that look "
                f"alike but differ must not sit side by side in room lists"
            )
            raise InvalidPayload(
                message,
                details={
                    "field": "room",
                    "character": invisible.split(" ", 1)[0],
                    "errors": [{"loc": "room", "message": message, "type": "string_invisible"}],
                },
            )
        if self._pattern.fullmatch(room) is None:
            pattern = self.settings.name_pattern
            message = f"room name does not match the allowed pattern {pattern!r}"
            raise InvalidPayload(
                message,
                details={
                    "field": "room",
                    "setting": "name_pattern",
                    "pattern": pattern,
                    "errors": [
                        {"loc": "room", "message": message, "type": "string_pattern_mismatch"}
                    ],
                },
            )
        _refuse_connection_id(bus, room)

    async def join(self, bus: Bus, sid: str, room: str) -> bool:
        """Put connection ``sid`` into ``room`` after checking the name and the room limit.

        :return: True when it joined, False when it already was a member (nothing re-checked).
        :raises NotFound: no live connection has that id.
        :raises InvalidPayload: the name breaks ``max_name_length`` or ``name_pattern``.
        :raises NotAllowed: the name is reserved, or the connection is in
            ``max_rooms_per_connection`` rooms already.
        """
        if bus.connection(sid) is None:
            raise NotFound(f"no connection with id {sid!r}", details={"sid": sid})
        current = bus.rooms_of(sid)
        if room in current:
            return False
        self.check_name(bus, room)
        limit = self.settings.max_rooms_per_connection
        if limit and len(current) >= limit:
            raise NotAllowed(
                f"a connection may be in at most {limit} rooms; leave one first",
                details={
                    "field": "room",
                    "setting": "max_rooms_per_connection",
                    "limit": limit,
                    "rooms": len(current),
                },
            )
        return await bus.join(sid, room)

    async def members(
        self, bus: Bus, room: str, connection: Connection | None = None
    ) -> dict[str, Any]:
        """Who is in ``room`` (``{room, count, members}``), on every node when the backend is
        shared; empty if nobody is.

        :param connection: the connection asking (None for REST and the server): unless it is
            in the room, the room's join rules (``plugbus_authorize_join``) must admit it.
        :raises NotAllowed: ``room`` is the id of a live connection, or its join rules refuse
            ``connection`` (``forbidden_room`` from the auth plugin).
        """
        _refuse_connection_id(bus, room)
        if connection is not None and not bus.is_member(connection.sid, room):
            try:
                await bus.authorize_join(connection, room)
            except NotAllowed as exc:
                raise NotAllowed(
                    f"you may not list the members of room {room!r}: its join rules do not admit you",
                    code=exc.code,
                    details={**exc.details, "room": room},
                ) from None
        members = [
            {"sid": m.sid, "user_id": m.user_id, "name": m.name}
            for m in await bus.presence.members(room)
        ]
        return {"room": room, "count": len(members), "members": members}

    async def _notify(
        self, bus: Bus, event: str, connection: Connection, room: str, count: int
    ) -> None:
        identity = connection.identity
        await bus.emit(
            event,
            {
                "room": room,
                "sid": connection.sid,
                "user": identity.user_id if identity else None,
                "count": count,
            },
            room=room,
            skip_sid=connection.sid,
            namespace=connection.namespace,
        )

    # -- hooks --------------------------------------------------------------------------------

    @hookimpl
    def plugbus_register_events(self) -> list[type[Event] | ServerEvent]:
        """Called once at start-up: ``join-room``, ``leave-room``, ``my-rooms``,
        ``room-members`` and ``room-history``, plus the two notices when ``notify_membership``
        is on."""
        events: list[type[Event] | ServerEvent] = [
            JoinRoom,
            LeaveRoom,
            MyRooms,
            ListMembers,
            RoomHistory,
        ]
        if self.settings.notify_membership:
            events += [
                ServerEvent(
                    self.settings.joined_event,
                    MembershipNotice,
                    "Someone joined a room you are in (you are not told of your own joins).",
                ),
                ServerEvent(
                    self.settings.left_event,
                    MembershipNotice,
                    "Someone left a room you are in, or disconnected while in it.",
                ),
            ]
        return events

    @hookimpl
    async def plugbus_handle_event(self, event: Event, ctx: EventContext) -> dict[str, Any] | None:
        """Called once per event that passed moderation; answers this plugin's four events.

        :return: the ack data (see the ack models above), or None for other plugins' events.
        :raises ConnectionRequired: ``join-room``, ``leave-room`` or ``my-rooms`` came without a
            connection (over REST); ``room-members`` works from both doors.
        :raises InvalidPayload, NotAllowed: a refused join (see :meth:`join`).
        """
        if isinstance(event, ListMembers):
            return await self.members(ctx.bus, event.room, ctx.connection)
        if isinstance(event, RoomHistory):
            return await self.history.answer(event, ctx)
        if not isinstance(event, JoinRoom | LeaveRoom | MyRooms):
            return None
        if ctx.connection is None:
            raise ConnectionRequired(
                f"{event.event_name!r} acts on the sender's own connection; it cannot be sent "
                f"over REST",
                details={"event": event.event_name},
            )
        bus, sid = ctx.bus, ctx.connection.sid
        if isinstance(event, JoinRoom):
            joined = await self.join(bus, sid, event.room)
            return {"room": event.room, "joined": joined, "rooms": sorted(bus.rooms_of(sid))}
        if isinstance(event, LeaveRoom):
            left = await bus.leave(sid, event.room)
            return {"room": event.room, "left": left, "rooms": sorted(bus.rooms_of(sid))}
        return {"rooms": sorted(bus.rooms_of(sid))}

    @hookimpl
    async def plugbus_room_joined(self, connection: Connection, room: str, bus: Bus) -> None:
        """Called after any join (socket or REST); with ``notify_membership`` on, sends
        ``joined_event`` to the room's other members. Returns nothing."""
        await self._notify_membership(bus, self.settings.joined_event, connection, room)

    @hookimpl
    async def plugbus_room_left(self, connection: Connection, room: str, bus: Bus) -> None:
        """Called after any leave (socket or REST); with ``notify_membership`` on, sends
        ``left_event`` to the room's remaining members. Returns nothing."""
        await self._notify_membership(bus, self.settings.left_event, connection, room)

    async def _notify_membership(
        self, bus: Bus, event: str, connection: Connection, room: str
    ) -> None:
        """With ``notify_membership`` on, tell ``room``'s other members that ``connection``
        joined or left (``event``), with the room's member count now."""
        if self.settings.notify_membership:
            count = await bus.presence.count(room, connection.namespace)
            await self._notify(bus, event, connection, room, count)

    @hookimpl
    async def plugbus_disconnect(self, connection: Connection, reason: str, bus: Bus) -> None:
        """Called once a connection closed, while its rooms are still readable; with
        ``notify_membership`` on, sends ``left_event`` to each of its rooms — unless the
        session is kept for recovery (``connection.suspended``): then the notice waits for
        ``plugbus_session_expired``, so a client that comes back never seems to have left.
        Returns nothing."""
        if not self.settings.notify_membership or connection.suspended:
            return
        for room in bus.rooms_of(connection.sid, connection.namespace):
            count = max(
                await bus.presence.count(room, connection.namespace) - 1, 0
            )  # still counted until dropped
            await self._notify(bus, self.settings.left_event, connection, room, count)

    @hookimpl
    def plugbus_startup(self, bus: Bus) -> None:
        """Called once at start-up: registers the cluster operations ``rooms.join`` and
        ``rooms.leave``, which the REST routes run on whichever node holds the connection."""

        async def join_here(p: dict[str, Any]) -> dict[str, Any]:
            joined = await self.join(bus, p["sid"], p["room"])
            return {
                "room": p["room"],
                "sid": p["sid"],
                "joined": joined,
                "rooms": sorted(bus.rooms_of(p["sid"])),
            }

        async def leave_here(p: dict[str, Any]) -> dict[str, Any]:
            left = await bus.leave(p["sid"], p["room"])
            return {
                "room": p["room"],
                "sid": p["sid"],
                "left": left,
                "rooms": sorted(bus.rooms_of(p["sid"])),
            }

        bus.cluster.register("rooms.join", join_here)
        bus.cluster.register("rooms.leave", leave_here)

    @hookimpl
    async def plugbus_session_expired(
        self, connection: Connection, rooms: list[str], bus: Bus
    ) -> None:
        """Called when a session kept for recovery expired unclaimed; with
        ``notify_membership`` on, sends the ``left_event`` its drop did not. Returns nothing."""
        if not self.settings.notify_membership:
            return
        for room in rooms:
            count = await bus.presence.count(room, connection.namespace)
            await self._notify(bus, self.settings.left_event, connection, room, count)

    @hookimpl
    def plugbus_routes(self, bus: Bus) -> list[Route]:
        """Called once at start-up: the REST routes (see the module docstring). Reading needs
        the ``read`` API-key scope, changing membership ``admin`` (when REST keys are checked)."""

        async def list_rooms(req: RouteRequest) -> list[dict[str, Any]]:
            """Every room with members (on every node when the backend is shared), with its
            member count, sorted by name."""
            rooms = await bus.presence.rooms()
            return [{"room": room, "count": count} for room, count in sorted(rooms.items())]

        async def get_room(req: RouteRequest) -> dict[str, Any]:
            """The members of one room (an empty list for a room nobody is in)."""
            return await self.members(bus, req.path_params["room"])

        async def put_member(req: RouteRequest) -> dict[str, Any]:
            """Put a connection into a room (a server-side join: same rules, same notices),
            on whichever node holds it."""
            room, sid = req.path_params["room"], req.path_params["sid"]
            return await bus.cluster.on_owner(sid, "rooms.join", {"room": room})  # type: ignore[no-any-return]

        async def delete_member(req: RouteRequest) -> dict[str, Any]:
            """Take a connection out of a room (a server-side leave; same notices), on
            whichever node holds it."""
            room, sid = req.path_params["room"], req.path_params["sid"]
            return await bus.cluster.on_owner(sid, "rooms.leave", {"room": room})  # type: ignore[no-any-return]

        members = "/rooms/{room}/members/{sid}"
        return [
            *self.history.routes(bus),
            Route(
                "GET",
                "/rooms",
                list_rooms,
                response=RoomList,
                scope="read",
                summary="List rooms with member counts",
            ),
            Route(
                "GET",
                "/rooms/{room}",
                get_room,
                response=RoomMembers,
                scope="read",
                summary="List a room's members",
            ),
            Route(
                "PUT",
                members,
                put_member,
                response=MemberJoined,
                scope="admin",
                summary="Put a connection into a room",
            ),
            Route(
                "DELETE",
                members,
                delete_member,
                response=MemberLeft,
                scope="admin",
                summary="Take a connection out of a room",
            ),
        ]
