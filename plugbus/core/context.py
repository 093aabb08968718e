"""Who an event comes from: connections, origins and the per-event context plugins receive."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .protocols import Bus


class Origin(StrEnum):
    """Which door an event came through."""

    SOCKET = "socket"
    REST = "rest"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is behind a connection, once an authentication plugin has established it.

    :ivar user_id: the stable user id (what bans and mutes by identity refer to).
    :ivar name: a display name.
    :ivar roles: role names, e.g. ``("admin",)``.
    """

    user_id: str
    name: str | None = None
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling the REST door, once an authentication plugin has established it.

    :ivar name: the API key's name (never the key itself).
    :ivar scopes: what it may do, e.g. ``("publish",)`` or ``("publish", "read", "admin")``.
    """

    name: str
    scopes: frozenset[str] = frozenset()


@dataclass(slots=True, eq=False)
class Connection:
    """One live Socket.IO connection, as plugins see it.

    Created by the socket door before ``plugbus_connect`` runs and dropped after
    ``plugbus_disconnect``. A connection belongs to one ``namespace``: a client connected to
    two namespaces is two connections, each with its own ``sid`` (Socket.IO gives each
    namespace its own), its own rooms and its own hooks. ``auth`` is the client's CONNECT
    payload exactly as sent (``{}`` stays ``{}``; None when the client sent none; a recovering
    client adds ``pid`` and ``offset``). ``state`` is a free dict where plugins keep
    per-connection data (prefix keys with the plugin's name); it lives as long as this
    transport connection. ``data`` is the same for JSON-able data that belongs to the
    *session*: it is kept when the connection drops and given back when the client recovers
    (Node's ``socket.data``). ``identity`` is None until an authentication plugin sets it
    during ``plugbus_connect``.

    Connection state recovery (``server.recovery``): ``pid`` is the private session id the
    client was given (None when it was not offered recovery; a secret — never log or send
    it); ``recovered`` is True when this connection continues a dropped session (same sid,
    rooms, identity and data; set before ``plugbus_authenticate`` runs); ``suspended`` is
    True in ``plugbus_disconnect`` when the session is kept for recovery.
    """

    sid: str
    namespace: str
    remote_addr: str | None = None
    auth: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    identity: Identity | None = None
    state: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    pid: str | None = None
    recovered: bool = False
    suspended: bool = False
    #: offsets this connection is owed events after: "" for broadcasts and direct messages
    #: (where it started), and each room's (where it joined); kept for recovery
    marks: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(slots=True)
class EventContext:
    """Everything about one event besides its payload.

    :ivar bus: the bus, to emit, join rooms or look up connections.
    :ivar origin: the door the event came through.
    :ivar connection: the sending connection, or None for REST and server-side events.
    :ivar wants_ack: True when the sender asked for an acknowledgement.
    :ivar namespace: the namespace the event arrived on: the connection's, or for REST and
        server-side events the one the caller named (the default namespace otherwise).
        Emit back into it with ``ctx.bus.emit(..., namespace=ctx.namespace)``.
    :ivar history: whether what the handler delivers for this event is kept in room history
        (and replayed to recovering clients): the event class's ``history`` to begin with; a
        ``plugbus_moderate`` implementation may set it to False to keep a message out.
    """

    bus: Bus
    origin: Origin
    connection: Connection | None = None
    wants_ack: bool = False
    namespace: str = "/"
    history: bool = True

    @property
    def sid(self) -> str | None:
        """The sending connection's id, or None when the event has no connection."""
        return self.connection.sid if self.connection is not None else None
