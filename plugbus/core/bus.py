"""The bus: one pipeline for every event, whichever door it came through.

``dispatch`` is the pipeline — validate, moderate, handle — and the delivery methods (``emit``,
``join``, ``leave``) are the one way plugins reach connections. The socket door and the REST
door both call ``dispatch``; nothing here knows about HTTP or python-socketio.
"""

from __future__ import annotations

import logging
from typing import Any

from .backend import Backend
from .cluster import Cluster
from .config import Config
from .context import Connection, EventContext, Origin
from .errors import (
    ConfigError,
    ConnectionDenied,
    ErrorPayload,
    EventDropped,
    NotFound,
    PlugbusError,
)
from .events import Event, EventRegistry, ModeratedText, ServerEvent
from .hooks import Hooks
from .loader import LoadedPlugins, PluginInfo
from .moderation import ModerationRule
from .presence import LocalPresence, SharedPresence
from .protocols import TextDecision
from .store import Store
from .transport import Transport

log = logging.getLogger("plugbus.bus")

#: Store names plugbus uses itself (``bus.store`` refuses them).
RESERVED_STORES = frozenset({"presence", "cluster", "socketio"})


class Bus:
    """The running heart of one plugbus application.

    Built once per application from a validated config and its loaded plugins. Plugins receive
    it in hooks (``bus``, or ``ctx.bus``) typed as :class:`plugbus.Bus`, the protocol of what
    they may use (docs/plugins/bus.md); the rest — the attributes below and the connection
    life cycle — is for the doors in api/ and the test kit.

    :ivar config: the validated configuration.
    :ivar hooks: the typed hook caller.
    :ivar events: the registry of event schemas.
    :ivar plugins: what was loaded, in registration order.
    :ivar pm: the plugin manager.
    :ivar backend: where shared state lives (memory, or Redis shared by several nodes).
    :ivar presence: who is connected and in which room, on every node.
    :ivar cluster: runs operations on the node that holds a connection.
    """

    def __init__(self, config: Config, loaded: LoadedPlugins) -> None:
        """:raises ConfigError: two plugins registered the same event name, or a bad event class."""
        self.config = config
        self.plugins: list[PluginInfo] = loaded.plugins
        self.pm = loaded.pm
        self.hooks = Hooks(loaded.pm)
        server = config.server
        self.default_namespace = server.default_namespace
        self.events = EventRegistry(server.default_namespace, tuple(server.namespaces))
        for owner, event_cls in self.hooks.register_events():
            try:
                self.events.register(event_cls, owner=owner)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        self.events.register(
            ServerEvent(
                "error",
                ErrorPayload,
                "An event the client sent without asking for an ack was refused; says why.",
                namespace=tuple(server.namespaces),
            ),
            owner="plugbus",
        )
        self.backend = Backend(config.server.backend)
        self.presence: LocalPresence = LocalPresence(self)
        self.cluster = Cluster(self, self.backend.store("cluster"))
        self._moderation_rules: list[ModerationRule] | None = None
        self.cluster.register("bus.join", lambda p: self._join_here(p["sid"], p["room"]))
        self.cluster.register("bus.leave", lambda p: self._leave_here(p["sid"], p["room"]))
        self.cluster.register("bus.disconnect", lambda p: self._disconnect_here(p["sid"]))
        self._connections: dict[str, Connection] = {}
        self._per_address: dict[str | None, int] = {}
        self._transport: Transport | None = None

    # -- wiring -----------------------------------------------------------------------------

    def attach(self, transport: Transport) -> None:
        """Give the bus the socket server it delivers through (done once, by the socket door)."""
        self._transport = transport

    @property
    def transport(self) -> Transport:
        """The attached transport.

        :raises RuntimeError: before the socket door attached one.
        """
        if self._transport is None:
            raise RuntimeError("no transport attached to the bus yet")
        return self._transport

    @property
    def server_name(self) -> str:
        """``server.name`` from the config."""
        return self.config.server.name

    @property
    def node_id(self) -> str:
        """This node's id (random per process)."""
        return self.backend.node_id

    def store(self, name: str, *, local: bool = False) -> Store:
        """The store ``name``: in Redis shared by every node when the backend is, else (or
        with ``local``) in this process.

        :raises ValueError: an empty name, a name with ``:``, or one plugbus uses itself.
        """
        if not name or ":" in name or name in RESERVED_STORES:
            raise ValueError(
                f"store name {name!r}: use your plugin's name (not empty, no ':', and not one "
                f"of {', '.join(sorted(RESERVED_STORES))})"
            )
        return self.backend.store(name, local=local)

    @property
    def moderation_rules(self) -> list[ModerationRule]:
        """Every rule from ``plugbus_moderation_rules``, collected the first time it is read."""
        if self._moderation_rules is None:
            self._moderation_rules = self.hooks.moderation_rules(self)
        return list(self._moderation_rules)

    # -- the pipeline -----------------------------------------------------------------------

    def context(
        self,
        origin: Origin,
        connection: Connection | None = None,
        *,
        wants_ack: bool = False,
        namespace: str | None = None,
    ) -> EventContext:
        """A context for an event arriving through ``origin``: in the connection's namespace,
        else in ``namespace`` (the default namespace when None).

        :raises NotFound: ``namespace`` is not one of ``server.namespaces``.
        """
        if connection is not None:
            namespace = connection.namespace
        elif namespace is None:
            namespace = self.default_namespace
        else:
            self.check_namespace(namespace)
        return EventContext(self, origin, connection, wants_ack, namespace)

    def check_namespace(self, namespace: str) -> str:
        """Return ``namespace`` when the server serves it.

        :raises NotFound: it is not one of ``server.namespaces``.
        """
        if namespace not in self.events.served:
            raise NotFound(
                f"namespace {namespace!r} is not served (served: {', '.join(self.events.served)})",
                details={"namespace": namespace, "served": list(self.events.served)},
            )
        return namespace

    async def dispatch(self, name: Any, payload: Any, ctx: EventContext) -> Any:
        """Run one event through the pipeline: validate, moderate, handle.

        :param name: the event name as received.
        :param payload: the raw payload, the object of named fields (REST's form).
        :param ctx: where it came from; ``ctx.namespace`` picks the schema.
        :return: the ack data of the handling plugin (None if it had nothing to say).
        :raises UnknownEvent: no plugin registered ``name`` in that namespace.
        :raises InvalidPayload: the payload does not fit the schema.
        :raises MessageRejected: moderation vetoed it.
        :raises PlugbusError: the handler refused it.
        """
        return await self.publish(self.events.parse(name, payload, ctx.namespace), ctx)

    async def dispatch_args(self, name: Any, args: list[Any], ctx: EventContext) -> Any:
        """:meth:`dispatch` for a Socket.IO event's arguments (everything after its name):
        positional arguments for events that declare ``positional``, else one payload."""
        return await self.publish(self.events.parse_args(name, args, ctx.namespace), ctx)

    async def publish(self, event: Event, ctx: EventContext) -> Any:
        """Run an already-validated event through moderation and handling.

        :return: the handler's ack data, or None when moderation dropped the event silently.
        """
        try:
            event = await self.hooks.moderate(event, ctx)
        except EventDropped as drop:
            log.info("dropped %s from %s: %s", event.event_name, ctx.sid or ctx.origin, drop.reason)
            return None
        return await self.hooks.handle_event(event, ctx)

    async def moderate_text(
        self, text: str, *, connection: Connection | None = None
    ) -> TextDecision:
        """Run ``text`` through ``plugbus_moderate`` — the active rules — as the one text field
        of an event of its own (``ModeratedText``, name ``plugbus.text``), and report what
        they decided. Without ``connection`` only rules about content apply (length, blocked
        words, other plugins' content rules); with it, rules about the sender too (bans,
        mutes, and flood control, which counts the call as an event).
        """
        ctx = self.context(Origin.SERVER if connection is None else Origin.SOCKET, connection)
        try:
            moderated = await self.hooks.moderate(ModeratedText(text=text), ctx)
            assert isinstance(moderated, ModeratedText)  # a replacement keeps the type
        except EventDropped as drop:
            return TextDecision("drop", None, reason=drop.reason)
        except PlugbusError as exc:
            return TextDecision("refuse", None, exc, exc.message)
        if moderated.text == text:
            return TextDecision("pass", text)
        return TextDecision("mask", moderated.text)

    # -- delivery ---------------------------------------------------------------------------

    async def emit(
        self,
        event: str,
        data: Any,
        *,
        room: str | None = None,
        to: str | None = None,
        skip_sid: str | None = None,
        namespace: str | None = None,
    ) -> None:
        """Send ``event`` to a room, to one connection (``to``), or to everyone (neither), in
        ``namespace`` (the default namespace when None).

        The payload is encoded once for all recipients. ``skip_sid`` leaves one connection out
        (the sender, for "everyone but me"). A tuple ``data`` is sent as several arguments
        (``socket.on("chat", (user, text) => ...)``), None as none. Rooms and connection ids
        belong to one namespace: emitting to a connection of ``/admin`` needs
        ``namespace="/admin"`` (``connection.namespace``, or ``ctx.namespace`` in a handler).
        """
        await self.transport.emit(
            event,
            data,
            room=room if room is not None else to,
            skip_sid=skip_sid,
            namespace=namespace or self.default_namespace,
        )

    async def join(self, sid: str, room: str) -> bool:
        """Put connection ``sid`` into ``room``: ``plugbus_authorize_join`` first, then the
        join, then ``plugbus_room_joined`` — on whichever node holds the connection.

        :return: True when it joined, False when it was already a member (no hook runs).
        :raises NotFound: no live connection has that id.
        :raises NotAllowed: a plugin refused the join.
        """
        return bool(await self.cluster.on_owner(sid, "bus.join", {"room": room}))

    async def _join_here(self, sid: str, room: str) -> bool:
        connection = self._require(sid)
        ns = connection.namespace
        if room == sid or self.transport.is_member(sid, room, namespace=ns):
            return False  # a connection is always in its own id room
        await self.hooks.authorize_join(connection, room, self)
        await self.transport.enter_room(sid, room, namespace=ns)
        await self.presence.joined(connection, room)
        await self.hooks.room_joined(connection, room, self)
        return True

    async def authorize_join(self, connection: Connection, room: str) -> None:
        """Ask ``plugbus_authorize_join`` whether ``connection`` may be in ``room``, without
        joining it: what else a room offers (its member list, posting into it) follows the same
        rules as joining it.

        :raises NotAllowed: a plugin refused.
        """
        await self.hooks.authorize_join(connection, room, self)

    def is_member(self, sid: str, room: str) -> bool:
        """Whether connection ``sid`` (on this node) is in ``room``."""
        return room == sid or self.transport.is_member(sid, room)

    async def leave(self, sid: str, room: str) -> bool:
        """Take connection ``sid`` out of ``room`` and run ``plugbus_room_left`` — on whichever
        node holds the connection.

        :return: True when it left, False when it was not a member (no hook runs).
        :raises NotFound: no live connection has that id.
        """
        return bool(await self.cluster.on_owner(sid, "bus.leave", {"room": room}))

    async def _leave_here(self, sid: str, room: str) -> bool:
        connection = self._require(sid)
        ns = connection.namespace
        if room == sid or not self.transport.is_member(sid, room, namespace=ns):
            return False  # nobody leaves its own id room
        await self.transport.leave_room(sid, room, namespace=ns)
        await self.presence.left(connection, room)
        await self.hooks.room_left(connection, room, self)
        return True

    def rooms_of(self, sid: str, namespace: str | None = None) -> list[str]:
        """The rooms connection ``sid`` is in (its own id room not counted), in its namespace
        (pass ``namespace`` when the connection may be gone, as in ``plugbus_disconnect``)."""
        return self.transport.rooms_of(sid, namespace=namespace or self._namespace_of(sid))

    def rooms(self, namespace: str | None = None) -> dict[str, int]:
        """Every named room of ``namespace`` (default namespace when None) on this node with
        its member count."""
        return self.transport.rooms(namespace=namespace or self.default_namespace)

    def members(self, room: str, namespace: str | None = None) -> list[str]:
        """The connection ids in ``room`` of ``namespace`` (default when None) on this node."""
        return self.transport.members(room, namespace=namespace or self.default_namespace)

    def room_size(self, room: str, namespace: str | None = None) -> int:
        """How many connections on this node are in ``room`` of ``namespace`` (default when None)."""
        return self.transport.room_size(room, namespace=namespace or self.default_namespace)

    def namespace_size(self, namespace: str | None = None) -> int:
        """How many connections this node holds in ``namespace`` (default when None);
        ``connection_count`` counts every namespace."""
        return self.transport.connection_count(namespace=namespace or self.default_namespace)

    def _namespace_of(self, sid: str) -> str:
        connection = self._connections.get(sid)
        return connection.namespace if connection is not None else self.default_namespace

    async def disconnect(self, sid: str) -> None:
        """Close connection ``sid``, on whichever node holds it.

        :raises NotFound: no live connection has that id.
        """
        await self.cluster.on_owner(sid, "bus.disconnect", {})

    async def _disconnect_here(self, sid: str) -> None:
        connection = self._require(sid)
        await self.transport.disconnect(sid, namespace=connection.namespace)

    # -- connections ------------------------------------------------------------------------

    def connection(self, sid: str) -> Connection | None:
        """The live connection with id ``sid``, or None."""
        return self._connections.get(sid)

    def connections(self) -> list[Connection]:
        """Every live connection on this node."""
        return list(self._connections.values())

    def _require(self, sid: str) -> Connection:
        connection = self._connections.get(sid)
        if connection is None:
            raise NotFound(f"no connection with id {sid!r}", details={"sid": sid})
        return connection

    def is_connection_id(self, name: str) -> bool:
        """True when ``name`` is the id of a live connection (such rooms are reserved)."""
        return name in self._connections

    @property
    def connection_count(self) -> int:
        """Live connections on this node, in every namespace (a client connected to two
        namespaces counts twice)."""
        return len(self._connections)

    async def open_connection(self, connection: Connection) -> None:
        """Admit a new connection: check the limits, run ``plugbus_authenticate`` (setting
        ``connection.identity``), then ``plugbus_connect``; called by the socket door.

        :raises ConnectionDenied: a limit or a plugin refused it; it is forgotten again.
        """
        self._check_limits(connection)
        self._connections[connection.sid] = connection
        addr = connection.remote_addr
        self._per_address[addr] = self._per_address.get(addr, 0) + 1
        try:
            connection.identity = await self.hooks.authenticate(connection, self)
            await self.hooks.connect(connection, self)
        except ConnectionDenied:
            self._forget(connection.sid)
            raise
        except PlugbusError as exc:
            self._forget(connection.sid)
            raise ConnectionDenied(exc.message, details=exc.details, code=exc.code) from exc
        except Exception:
            self._forget(connection.sid)
            raise

    def _check_limits(self, connection: Connection) -> None:
        limits = self.config.server.limits
        if limits.max_connections and len(self._connections) >= limits.max_connections:
            raise ConnectionDenied(
                f"server is full: it holds its limit of {limits.max_connections} connections",
                code="too_many_connections",
                details={"limit": limits.max_connections},
            )
        per_address = limits.max_connections_per_address
        if per_address and self._per_address.get(connection.remote_addr, 0) >= per_address:
            raise ConnectionDenied(
                f"too many connections from your address (limit {per_address})",
                code="too_many_connections",
                details={"limit": per_address, "per": "address"},
            )

    def _forget(self, sid: str) -> Connection | None:
        connection = self._connections.pop(sid, None)
        if connection is not None:
            left = self._per_address.get(connection.remote_addr, 1) - 1
            if left > 0:
                self._per_address[connection.remote_addr] = left
            else:
                self._per_address.pop(connection.remote_addr, None)
        return connection

    async def connection_ready(self, sid: str) -> None:
        """Record the connection in presence and run ``plugbus_connected`` once the client
        knows it is connected; socket door only."""
        connection = self._connections.get(sid)
        if connection is not None:
            await self.presence.connected(connection)
            await self.hooks.connected(connection, self)

    async def close_connection(self, sid: str, reason: str) -> None:
        """Run ``plugbus_disconnect`` and forget the connection; called by the socket door."""
        connection = self._forget(sid)
        if connection is not None:
            try:
                await self.hooks.disconnect(connection, reason, self)
            finally:
                await self.presence.disconnected(connection)

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the shared-state backend, then run ``plugbus_startup``.

        :raises ConfigError: the backend cannot be reached.
        """
        await self.backend.start()
        if self.backend.shared:
            self.presence = SharedPresence(
                self,
                self.backend.store("presence"),
                self.backend.node_id,
                ttl=self.config.server.presence_ttl,
            )
        await self.presence.start()
        await self.cluster.start()
        await self.hooks.startup(self)

    async def stop(self) -> None:
        """Run ``plugbus_shutdown``, then close the backend."""
        try:
            await self.hooks.shutdown(self)
        finally:
            await self.cluster.stop()
            await self.presence.stop()
            await self.backend.stop()
