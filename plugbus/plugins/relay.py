"""relay: messages to a room (the seed's), to one connection, or to everyone.

Socket.IO events ``send-message`` ``{message, roomID}``, ``send-direct`` ``{to, message}`` and
``broadcast`` ``{message, include_self}`` all deliver as ``settings.event`` (the seed's
``receive-message``): the bare message by default, or an envelope with id, sender and
timestamp. The REST routes send the very same events through ``bus.dispatch``, so moderation
applies to both doors alike. Each message is encoded once and handed to one ``bus.emit``; the
recipient count comes from the transport's room sizes, never from a loop over recipients.
See docs/plugins/relay.md.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    JsonValue,
    PlainValidator,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError, core_schema

from plugbus import (
    Bus,
    Event,
    EventContext,
    InvalidPayload,
    NotAllowed,
    NotFound,
    Origin,
    Plugin,
    PluginSettings,
    Route,
    RouteRequest,
    hookimpl,
    new_id,
)


def _one_error(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Report a wrong message as one error at ``message``, not one per member of the union."""
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError(
            "message_type", "Input should be a valid string, or a JSON object or array"
        ) from None


def _strict_bytes(value: Any) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise PydanticCustomError("bytes_type", "Input should be binary data")
    return bytes(value)


#: The schema-level bound on one message event (its JSON text, or its binary data): 64 KiB.
MAX_MESSAGE_BYTES = 65_536

Message = Annotated[
    str | dict[str, JsonValue] | list[JsonValue],
    WrapValidator(_one_error),
    Field(description="The message: text, or structured JSON (an object or an array)."),
]


#: Over Socket.IO a message may also be binary (a Buffer / ArrayBuffer / bytes attachment),
#: relayed as binary. Only bytes objects count: a JSON string is never coerced to bytes.
class _OneError:
    """Report a value that fits no member of a union as one error of its own (``type_`` and
    ``message``), not one per member: set on the union's core schema
    (``custom_error_type``), so pydantic-core reports it itself, with no Python call per
    value (what a ``WrapValidator`` catching the union's error costs every message)."""

    def __init__(self, type_: str, message: str) -> None:
        self.type_ = type_
        self.message = message

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        schema = handler(source)
        if schema["type"] != "union":  # pragma: no cover - the annotation below is a union
            raise TypeError(f"_OneError annotates a union, not a {schema['type']} schema")
        union = cast("core_schema.UnionSchema", schema)
        union["custom_error_type"] = self.type_
        union["custom_error_message"] = self.message
        return union


SocketMessage = Annotated[
    # text first: pydantic's smart union stops at the first exact match, so the common case
    # never calls the bytes validator
    str | Annotated[bytes, PlainValidator(_strict_bytes)] | dict[str, JsonValue] | list[JsonValue],
    _OneError(
        "message_type", "Input should be a valid string, a JSON object or array, or binary data"
    ),
    Field(
        description="The message: text, structured JSON (an object or an array), or binary data."
    ),
]
MessageId = Annotated[
    str | None,
    Field(
        description="The message id (32 hex digits, unique across nodes), also in every delivery's envelope; "
        "null when moderation dropped the message silently."
    ),
]
Recipients = Annotated[
    int, Field(ge=0, description="Connections on this node it was delivered to.")
]
RoomName = Annotated[
    str, Field(min_length=1, max_length=256, description="The room to deliver it to.")
]
Sid = Annotated[
    str,
    Field(
        min_length=1, max_length=256, description="The id (sid) of the connection to deliver it to."
    ),
]


class Delivered(BaseModel):
    """Ack of ``send-message`` and response of ``POST /rooms/{room}/messages``."""

    id: MessageId
    room: str = Field(description="The room the message went to.")
    recipients: Recipients


class DirectDelivered(BaseModel):
    """Ack of ``send-direct`` and response of ``POST /connections/{sid}/messages``."""

    id: MessageId
    to: str = Field(description="The connection the message went to.")
    recipients: Recipients


class BroadcastDelivered(BaseModel):
    """Ack of ``broadcast`` and response of ``POST /messages``."""

    id: MessageId
    recipients: Recipients


class SendMessage(Event):
    """Send a message to everyone in a room (the sender too, if it is in the room)."""

    name: ClassVar[str] = "send-message"
    ack = Delivered
    text_fields = ("message",)
    max_bytes = MAX_MESSAGE_BYTES
    rest_scope = "publish"
    room_field = "roomID"
    message: SocketMessage
    roomID: RoomName


class SendDirect(Event):
    """Send a message to one connection."""

    name: ClassVar[str] = "send-direct"
    ack = DirectDelivered
    text_fields = ("message",)
    max_bytes = MAX_MESSAGE_BYTES
    rest_scope = "publish"
    to: Sid
    message: SocketMessage


class Broadcast(Event):
    """Send a message to every connection (by default all but the sender)."""

    name: ClassVar[str] = "broadcast"
    ack = BroadcastDelivered
    text_fields = ("message",)
    max_bytes = MAX_MESSAGE_BYTES
    rest_scope = "publish"
    message: SocketMessage
    include_self: bool = Field(False, strict=True, description="Deliver to the sender too.")


class _Body(BaseModel):
    """A REST message body: ``{"message": ...}`` and nothing else."""

    model_config = ConfigDict(extra="forbid")
    message: Message


class RoomMessage(_Body):
    """Body of ``POST /rooms/{room}/messages``."""


class DirectMessage(_Body):
    """Body of ``POST /connections/{sid}/messages``."""


class BroadcastMessage(_Body):
    """Body of ``POST /messages``."""


RelayEvent = Literal["send-message", "send-direct", "broadcast"]


class RelaySettings(PluginSettings):
    """Settings of the relay plugin."""

    event: str = Field(
        "receive-message",
        min_length=1,
        description="Event name every delivery uses (room, direct and broadcast).",
    )
    envelope: bool = Field(
        False,
        description=(
            "Deliver {id, room, to, from, user, ts, message} instead of the bare message."
        ),
    )
    echo: bool = Field(
        True,
        description=(
            "Room messages reach the sender too when it is in the room (the seed's io.to(room)); "
            "false leaves the sender out (socket.to(room))."
        ),
    )
    require_membership: bool = Field(
        False,
        description=("A connection must be in a room to send to it (REST senders are exempt)."),
    )
    structured: bool = Field(
        True, description=("Accept JSON objects and arrays as messages; false accepts text only.")
    )
    binary: bool = Field(
        True,
        description=(
            "Accept binary messages over Socket.IO (relayed as binary); false refuses them."
        ),
    )
    direct: bool = Field(
        True, description="Offer send-direct and POST /connections/{sid}/messages."
    )
    broadcast: bool = Field(True, description="Offer broadcast and POST /messages.")
    sender_roles: dict[RelayEvent, list[str]] = Field(
        default_factory=dict,
        description=(
            "Per event, the identity roles (any one) a connection needs to send it; events not "
            "listed, or listed with [], are open to every connection. REST senders are exempt."
        ),
    )


class RelayPlugin(Plugin):
    """Delivers messages to a room, one connection or everyone, from sockets and from REST."""

    Settings = RelaySettings
    settings: RelaySettings

    @hookimpl
    def plugbus_register_events(self) -> list[type[Event]]:
        """``send-message``, plus ``send-direct`` and ``broadcast`` unless switched off."""
        events: list[type[Event]] = [SendMessage]
        if self.settings.direct:
            events.append(SendDirect)
        if self.settings.broadcast:
            events.append(Broadcast)
        return events

    @hookimpl
    def plugbus_handle_event(
        self, event: Event, ctx: EventContext
    ) -> Awaitable[dict[str, Any]] | None:
        """Deliver a relay event with one ``bus.emit``; return ``{id, ..., recipients}``.
        (The delivery's coroutine itself, for the caller to await, and None at once for
        other events: one coroutine less per message.)

        :raises InvalidPayload: a structured message while ``structured`` is off.
        :raises NotAllowed: the sender lacks a role ``sender_roles`` asks for, or is not in
            the room while ``require_membership`` is on.
        :raises NotFound: ``send-direct`` to a connection that does not exist (on any node).
        """
        # The exact class first: isinstance on a pydantic model class goes through ABCMeta's
        # Python-level __instancecheck__, several times an event otherwise.
        if type(event) is SendMessage:
            if type(event.message) is not str or self.settings.sender_roles:
                self._check_sender(event, ctx)  # (text, with no roles asked for, passes it)
            return self._to_room(event, ctx, new_id())
        if not isinstance(event, SendMessage | SendDirect | Broadcast):
            return None
        self._check_sender(event, ctx)
        message_id = new_id()
        if isinstance(event, SendMessage):
            return self._to_room(event, ctx, message_id)
        if isinstance(event, SendDirect):
            return self._to_connection(event, ctx, message_id)
        return self._to_everyone(event, ctx, message_id)

    async def _to_room(
        self, event: SendMessage, ctx: EventContext, message_id: str
    ) -> dict[str, Any]:
        room, connection, settings = event.roomID, ctx.connection, self.settings
        sid = connection.sid if connection is not None else None  # ctx.sid, without its call
        member = False
        if connection is not None and sid is not None:
            member = ctx.bus.is_member(sid, room)
            if settings.require_membership and not member:
                raise NotAllowed(
                    f"not a member of room {room!r}: join it before sending to it",
                    details={"room": room, "field": "roomID"},
                )
            if not member:
                # Who may not join a room may not post into it either (the join rules of the
                # auth plugin, or whatever plugin answers plugbus_authorize_join).
                try:
                    await ctx.bus.authorize_join(connection, room)
                except NotAllowed as exc:
                    raise NotAllowed(
                        f"you may not post into room {room!r}: its join rules do not admit you",
                        code=exc.code,
                        details={**exc.details, "room": room, "field": "roomID"},
                    ) from None
        skip = sid if member and not settings.echo else None
        recipients = ctx.bus.room_size(room, ctx.namespace) - (skip is not None)
        if settings.envelope:
            await self._emit(ctx, message_id, event.message, room=room, skip_sid=skip)
        else:  # _emit's bare-message case, without its coroutine (every message to a room)
            await ctx.bus.emit(
                settings.event,
                event.message,
                room=room,
                skip_sid=skip,
                namespace=ctx.namespace,
                history=ctx.history,
                last=True,
            )
        return {"id": message_id, "room": room, "recipients": recipients}

    async def _to_connection(
        self, event: SendDirect, ctx: EventContext, message_id: str
    ) -> dict[str, Any]:
        if not await ctx.bus.presence.is_connected(event.to):  # on any node
            raise NotFound(
                f"no connection with id {event.to!r}", details={"sid": event.to, "field": "to"}
            )
        await self._emit(ctx, message_id, event.message, to=event.to)
        return {"id": message_id, "to": event.to, "recipients": 1}

    async def _to_everyone(
        self, event: Broadcast, ctx: EventContext, message_id: str
    ) -> dict[str, Any]:
        skip = ctx.sid if not event.include_self else None
        recipients = ctx.bus.namespace_size(ctx.namespace) - (skip is not None)
        await self._emit(ctx, message_id, event.message, skip_sid=skip)
        return {"id": message_id, "recipients": recipients}

    def _check_sender(self, event: SendMessage | SendDirect | Broadcast, ctx: EventContext) -> None:
        if type(event.message) is str:
            pass  # text is always accepted: the common message skips both checks of its kind
        elif isinstance(event.message, bytes):
            if not self.settings.binary:
                text = "Input should be text or JSON (binary messages are switched off)"
                raise InvalidPayload(
                    f"invalid payload for {event.event_name!r}: message: {text}",
                    details={
                        "event": event.event_name,
                        "errors": [{"loc": "message", "message": text, "type": "bytes_type"}],
                    },
                )
        elif not self.settings.structured and not isinstance(event.message, str):
            text = "Input should be a valid string (structured messages are switched off)"
            raise InvalidPayload(
                f"invalid payload for {event.event_name!r}: message: {text}",
                details={
                    "event": event.event_name,
                    "errors": [{"loc": "message", "message": text, "type": "string_type"}],
                },
            )
        roles = self.settings.sender_roles
        needed = roles.get(event.event_name) if roles else None  # type: ignore[call-overload]
        if needed and ctx.connection is not None:
            identity = ctx.connection.identity
            if identity is None or not set(needed) & set(identity.roles):
                raise NotAllowed(
                    f"sending {event.event_name!r} needs one of the roles: {', '.join(needed)}",
                    details={"roles": needed},
                )

    async def _emit(
        self,
        ctx: EventContext,
        message_id: str,
        message: Any,
        *,
        room: str | None = None,
        to: str | None = None,
        skip_sid: str | None = None,
    ) -> None:
        """One ``bus.emit`` for all recipients, with the bare message or its envelope."""
        data = message
        if self.settings.envelope:
            identity = ctx.connection.identity if ctx.connection is not None else None
            data = {
                "id": message_id,
                "room": room,
                "to": to,
                "from": ctx.sid,
                "user": identity.user_id if identity is not None else None,
                "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "message": message,
            }
        await ctx.bus.emit(
            self.settings.event,
            data,
            room=room,
            to=to,
            skip_sid=skip_sid,
            namespace=ctx.namespace,
            history=ctx.history,
            # every caller returns its result right after this (bus.emit's ``last``)
            last=True,
        )

    @hookimpl
    def plugbus_routes(self, bus: Bus) -> list[Route]:
        """``POST /rooms/{room}/messages``, ``/connections/{sid}/messages`` and ``/messages``.

        Each needs the ``publish`` API-key scope when an authentication plugin checks REST callers.
        """

        async def send(event: str, payload: dict[str, Any], dropped: dict[str, Any]) -> Any:
            result = await bus.dispatch(event, payload, bus.context(Origin.REST))
            return dropped if result is None else result  # None: moderation dropped it silently

        async def post_room(req: RouteRequest) -> Any:
            """Send a message to everyone in a room, through the same pipeline as
            `send-message` (moderation applies). `id` is null and `recipients` 0 when
            moderation dropped the message silently."""
            assert isinstance(req.body, RoomMessage)
            room = req.path_params["room"]
            return await send(
                SendMessage.name,
                {"message": req.body.message, "roomID": room},
                {"id": None, "room": room, "recipients": 0},
            )

        async def post_direct(req: RouteRequest) -> Any:
            """Send a message to one connection, as `send-direct` (404 when no connection
            has that id). `id` is null and `recipients` 0 when moderation dropped it silently."""
            assert isinstance(req.body, DirectMessage)
            sid = req.path_params["sid"]
            return await send(
                SendDirect.name,
                {"message": req.body.message, "to": sid},
                {"id": None, "to": sid, "recipients": 0},
            )

        async def post_all(req: RouteRequest) -> Any:
            """Send a message to every connection, as `broadcast`. `id` is null and
            `recipients` 0 when moderation dropped the message silently."""
            assert isinstance(req.body, BroadcastMessage)
            return await send(
                Broadcast.name, {"message": req.body.message}, {"id": None, "recipients": 0}
            )

        routes = [
            Route(
                "POST",
                "/rooms/{room}/messages",
                post_room,
                body=RoomMessage,
                response=Delivered,
                summary="Send a message to a room",
                scope="publish",
            )
        ]
        if self.settings.direct:
            routes.append(
                Route(
                    "POST",
                    "/connections/{sid}/messages",
                    post_direct,
                    body=DirectMessage,
                    response=DirectDelivered,
                    summary="Send a message to one connection",
                    scope="publish",
                )
            )
        if self.settings.broadcast:
            routes.append(
                Route(
                    "POST",
                    "/messages",
                    post_all,
                    body=BroadcastMessage,
                    response=BroadcastDelivered,
                    summary="Send a message to everyone",
                    scope="publish",
                )
            )
        return routes
