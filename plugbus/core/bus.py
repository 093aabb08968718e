"""The bus: one pipeline for every event, whichever door it came through.

``dispatch`` is the pipeline — validate, moderate, handle — and the delivery methods (``emit``,
``join``, ``leave``) are the one way plugins reach connections. The socket door and the REST
door both call ``dispatch``; nothing here knows about HTTP or python-socketio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any

from .backend import Backend
from .cluster import Cluster
from .config import Config
from .context import Connection, EventContext, Identity, Origin
from .counters import Counters, PluginCounter
from .errors import (
    ConfigError,
    ConnectionDenied,
    ErrorPayload,
    EventDropped,
    NotFound,
    PlugbusError,
)
from .events import Event, EventRegistry, ModeratedText, ServerEvent
from .history import (
    ZERO,
    FeedEvent,
    Kind,
    MemoryHistory,
    Parking,
    RedisHistory,
    StoredEvent,
    StreamRead,
    later,
    wait_turn,
)
from .hooks import DONE, Hooks
from .loader import LoadedPlugins, PluginInfo
from .moderation import ModerationRule
from .presence import LocalPresence, SharedPresence
from .protocols import TextDecision
from .recovery import (
    RECOVERABLE_REASONS,
    MemorySessions,
    Recovery,
    RedisSessions,
    SessionMismatch,
    SuspendedSession,
)
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
    :ivar history: the rooms' history (memory, or Redis Streams with a Redis backend).
    :ivar sessions: sessions kept for connection state recovery.
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
                history=False,
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
        self.recovery = server.recovery
        self.history: MemoryHistory = MemoryHistory(server.history)
        self._wire_history()
        self.sessions: MemorySessions = MemorySessions(server.recovery.max_disconnection_s)
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._closing: set[asyncio.Task[Any]] = set()
        #: rooms of a dead node's connections while their disconnect runs here
        self._departing: dict[str, list[str]] = {}
        #: the plugins' counters (``bus.counter``), read by the metrics exporter
        self.counters = Counters()
        self._watch: asyncio.Task[None] | None = None

    # -- wiring -----------------------------------------------------------------------------

    def attach(self, transport: Transport) -> None:
        """Give the bus the socket server it delivers through (done once, by the socket door)."""
        self._transport = transport
        self._wire_history()

    def _wire_history(self) -> None:
        """Point history's delivery at this node's connections: the attached transport's
        ``deliver_stored`` itself (what :meth:`_deliver` would do, without a call between), or
        :meth:`_deliver` until a transport is attached."""
        transport = self._transport
        self.history.deliver = transport.deliver_stored if transport is not None else self._deliver
        self.history.deliver_many = self._deliver_many

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

    def store(self, name: str, *, local: bool = False, cached: Sequence[str] = ()) -> Store:
        """The store ``name``: in Redis shared by every node when the backend is, else (or
        with ``local``) in this process; reads of keys starting with one of ``cached`` are
        answered from this node's copy, which every write to them updates on every node
        before it returns (for state read on every event and seldom changed).

        :raises ValueError: an empty name, a name with ``:``, or one plugbus uses itself.
        """
        if not name or ":" in name or name in RESERVED_STORES:
            raise ValueError(
                f"store name {name!r}: use your plugin's name (not empty, no ':', and not one "
                f"of {', '.join(sorted(RESERVED_STORES))})"
            )
        return self.backend.store(name, local=local, cached=cached)

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> PluginCounter:
        """The node's counter ``name`` (``plugbus_<name>_total`` in ``/metrics``), made on
        first use; the same labels give the same counter again.

        :raises ValueError: a bad or reserved name, bad labels, no help text, or a name made
            before with other labels.
        """
        return self.counters.counter(name, help, labels)

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
        # publish's steps, without its coroutine (every socket event; tested against it)
        event = self.events.parse_args(name, args, ctx.namespace)
        cls = type(event)
        if not cls.history:
            ctx.history = False
        try:
            moderated = self.hooks.moderate_now(event, ctx)
            if type(moderated) is not cls:  # the rest of the walk, to await
                moderated = await moderated  # type: ignore[misc]
        except EventDropped as drop:
            log.info("dropped %s from %s: %s", event.event_name, ctx.sid or ctx.origin, drop.reason)
            return None
        return await self.hooks.handle_event(moderated, ctx)

    async def publish(self, event: Event, ctx: EventContext) -> Any:
        """Run an already-validated event through moderation and handling.

        :return: the handler's ack data, or None when moderation dropped the event silently.
        """
        if not type(event).history:
            ctx.history = False
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
        history: bool = True,
        last: bool = False,
    ) -> str | None:
        """Send ``event`` to a room, to one connection (``to``), or to everyone (neither), in
        ``namespace`` (the default namespace when None).

        The payload is encoded once for all recipients. ``skip_sid`` leaves one connection out
        (the sender, for "everyone but me"). A tuple ``data`` is sent as several arguments
        (``socket.on("chat", (user, text) => ...)``), None as none. Rooms and connection ids
        belong to one namespace: emitting to a connection of ``/admin`` needs
        ``namespace="/admin"`` (``connection.namespace``, or ``ctx.namespace`` in a handler).

        With a Redis backend the call returns once Redis has the event (it reaches every node
        from there, after an outage too); while Redis cannot take it, it raises
        :class:`~plugbus.BackendUnavailable` and nothing was sent.

        The event is kept in history — the room's, the connection's or the namespace's — and
        replayed to clients that recover, unless ``history`` is False (ephemeral events: typing
        indicators, presence pings), the room keeps none (``server.history.rooms``), or it goes
        to a connection of this node that was not offered recovery (nothing would read it).

        ``last`` says that this call is the last thing the handling of the current event
        does: the ``plugbus_handle_event`` implementation making it returns a result (not
        None) once it returns, and does nothing else. With a Redis backend, an event from a
        websocket connection may then let the connection's next event start while this one
        waits for Redis (docs/deployment.md, "the order of a connection's events").

        :return: the event's offset in history (its message id there), or None when it was
            not kept.
        """
        ns = namespace or self.default_namespace
        kind: Kind
        if room is not None:
            target: str | None = room
            kind = "sid" if room in self._connections else "room"
        elif to is not None:
            target, kind = to, "sid"
        else:
            target, kind = None, "all"
        keep = history and self.history.keeps(kind, target)
        if keep and kind == "sid":
            local = self._connections.get(target) if target is not None else None
            if local is not None and local.pid is None:
                # only a recovering client reads its connection's stream back, and this one
                # was not offered recovery: keeping its events (each greeting, say) would
                # cost memory and a write per event that nothing ever reads
                keep = False
        if keep or isinstance(self.history, RedisHistory):
            args = data if isinstance(data, tuple) else (() if data is None else (data,))
            store = self.history
            if type(store) is MemoryHistory:  # (so keep is True)
                # the memory history's append without its coroutine (it never waits)
                return store.append_now(ns, kind, target, event, args, skip_sid)
            # nothing of the event's handling runs after this append (the caller's word, and
            # no hook wrapper or monitor after the handler): its connection's reader may
            # start the next event while it waits
            park = last and Parking.wanted and self.hooks.handle_event_ends_with_result()
            if not keep:
                # Across nodes, an ephemeral event takes the feed too (issue #18): the one
                # path between nodes that resumes after Redis went away, so nothing a client
                # can be sent is silently dropped on the way to another node.
                assert isinstance(store, RedisHistory)
                await store.append(ns, kind, target, event, args, skip_sid, keep=False, park=park)
                return None
            return await store.append(ns, kind, target, event, args, skip_sid, park=park)
        await self.transport.emit(event, data, room=target, skip_sid=skip_sid, namespace=ns)
        return None

    def _deliver(
        self,
        namespace: str,
        event: str,
        args: tuple[Any, ...],
        target: str | None,
        kind: str,
        skip_sid: str | None,
        offset: str | None,
    ) -> None:
        """Hand a stored event to this node's connections (history calls it, in offset order)."""
        if self._transport is not None:
            self._transport.deliver(
                event, args, room=target, skip_sid=skip_sid, namespace=namespace, offset=offset
            )

    def _deliver_many(self, events: list[FeedEvent]) -> None:
        """Hand events read from the feed to this node's connections, in offset order."""
        if self._transport is not None:
            self._transport.deliver_many(events)

    async def join(self, sid: str, room: str) -> bool:
        """Put connection ``sid`` into ``room``: ``plugbus_authorize_join`` first, then the
        join, then ``plugbus_room_joined`` — on whichever node holds the connection.

        :return: True when it joined, False when it was already a member (no hook runs).
        :raises NotFound: no live connection has that id.
        :raises NotAllowed: a plugin refused the join.
        """
        await wait_turn()
        return bool(await self.cluster.on_owner(sid, "bus.join", {"room": room}))

    async def _join_here(self, sid: str, room: str) -> bool:
        connection = self._require(sid)
        ns = connection.namespace
        if room == sid or self.transport.is_member(sid, room, namespace=ns):
            return False  # a connection is always in its own id room
        await self.hooks.authorize_join(connection, room, self)
        await self.transport.enter_room(sid, room, namespace=ns)
        if connection.pid is not None:
            # what the room sent before this point was never this connection's to miss
            connection.marks[room] = self.history.watermark
        await self.presence.joined(connection, room)
        await self._write_session(connection)
        await self.hooks.room_joined(connection, room, self)
        return True

    async def authorize_join(self, connection: Connection, room: str) -> None:
        """Ask ``plugbus_authorize_join`` whether ``connection`` may be in ``room``, without
        joining it: what else a room offers (its member list, posting into it) follows the same
        rules as joining it.

        :raises NotAllowed: a plugin refused.
        """
        pending = self.hooks.authorize_join(connection, room, self)
        if pending is not DONE:  # a walk that ran in the call has nothing left to await
            await pending

    def is_member(self, sid: str, room: str) -> bool:
        """Whether connection ``sid`` (on this node) is in ``room``."""
        if room == sid:
            return True
        # the attached transport without the property's call (it raises when there is none)
        transport = self._transport
        return (transport if transport is not None else self.transport).is_member(sid, room)

    async def leave(self, sid: str, room: str) -> bool:
        """Take connection ``sid`` out of ``room`` and run ``plugbus_room_left`` — on whichever
        node holds the connection.

        :return: True when it left, False when it was not a member (no hook runs).
        :raises NotFound: no live connection has that id.
        """
        await wait_turn()
        return bool(await self.cluster.on_owner(sid, "bus.leave", {"room": room}))

    async def _leave_here(self, sid: str, room: str) -> bool:
        connection = self._require(sid)
        ns = connection.namespace
        if room == sid or not self.transport.is_member(sid, room, namespace=ns):
            return False  # nobody leaves its own id room
        await self.transport.leave_room(sid, room, namespace=ns)
        connection.marks.pop(room, None)
        await self.presence.left(connection, room)
        await self._write_session(connection)
        await self.hooks.room_left(connection, room, self)
        return True

    def rooms_of(self, sid: str, namespace: str | None = None) -> list[str]:
        """The rooms connection ``sid`` is in (its own id room not counted), in its namespace
        (pass ``namespace`` when the connection may be gone, as in ``plugbus_disconnect``)."""
        departing = self._departing.get(sid)
        if departing is not None:  # a dead node's, whose plugbus_disconnect runs here
            return list(departing)
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
        transport = self._transport
        return (transport if transport is not None else self.transport).room_size(
            room, namespace=namespace or self.default_namespace
        )

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

    async def open_connection(
        self, connection: Connection, session: SuspendedSession | None = None
    ) -> list[str]:
        """Admit a new connection: check the limits, run ``plugbus_authenticate`` (setting
        ``connection.identity``), then ``plugbus_connect``; called by the socket door.

        With ``session`` (a claimed :class:`SuspendedSession` whose sid the connection has)
        the connection continues it: ``recovered``, ``pid``, ``data`` and the offsets are set
        before the hooks run, the identity must be the session's, and the session's rooms
        are checked against ``plugbus_authorize_join`` (not joined: the door does that).

        :return: the session's rooms the connection may be in again ([] without a session).
        :raises ConnectionDenied: a limit or a plugin refused it; it is forgotten again.
        :raises SessionMismatch: the client authenticated as someone else than the session's
            owner; it is forgotten again (the door connects it afresh).
        """
        self._check_limits(connection)
        self._connections[connection.sid] = connection
        addr = connection.remote_addr
        self._per_address[addr] = self._per_address.get(addr, 0) + 1
        if session is not None:
            connection.recovered = True
            connection.pid = session.pid
            connection.data = session.data
            connection.marks = {"": session.origin, **session.rooms}
        elif self.offers_recovery(connection.auth):
            connection.pid = secrets.token_urlsafe(16)
            connection.marks = {"": self.history.watermark}
        allowed: list[str] = []
        try:
            connection.identity = await self.hooks.authenticate(connection, self)
            if session is not None:
                # a pid is a secret, but whoever holds it must still be who the session was
                claimed = connection.identity.user_id if connection.identity else None
                if claimed != (session.identity[0] if session.identity else None):
                    raise SessionMismatch(session.sid)
            await self.hooks.connect(connection, self)
            if session is not None:
                for room in session.rooms:
                    try:
                        await self.hooks.authorize_join(connection, room, self)
                    except PlugbusError as exc:
                        log.info(
                            "recovered %s is no longer admitted to %r: %s",
                            connection.sid,
                            room,
                            exc.message,
                        )
                        connection.marks.pop(room, None)
                    else:
                        allowed.append(room)
        except (ConnectionDenied, SessionMismatch):
            self._forget(connection.sid)
            raise
        except PlugbusError as exc:
            self._forget(connection.sid)
            raise ConnectionDenied(exc.message, details=exc.details, code=exc.code) from exc
        except Exception:
            self._forget(connection.sid)
            raise
        return allowed

    def offers_recovery(self, auth: Any) -> bool:
        """Whether a connection whose CONNECT payload is ``auth`` is offered recovery
        (``server.recovery``: on, and the client asked or did not decline, by ``clients``)."""
        if not self.recovery.enabled:
            return False
        asked = auth.get("recovery") if isinstance(auth, dict) else None
        if self.recovery.clients == "all":
            return asked is not False
        return asked is True

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

    async def connection_accepted(self, sid: str) -> None:
        """Record an admitted connection in presence, before the client is told it is
        connected: a ``send-direct`` from another node right after the client's connect
        returns finds it. A presence write that fails is logged, not fatal (the connection
        works on this node; presence's refresh writes it again). Socket door only."""
        connection = self._connections.get(sid)
        if connection is None:
            return
        try:
            await self.presence.connected(connection)
        except Exception as exc:
            log.warning("presence could not record connection %s: %s", sid, exc)

    async def connection_ready(self, sid: str, recovery: Recovery | None = None) -> None:
        """Run ``plugbus_connected`` (or, for a recovered one, ``plugbus_session_recovered``)
        once the client knows it is connected (presence has it already:
        :meth:`connection_accepted`); socket door only."""
        connection = self._connections.get(sid)
        if connection is None:
            return
        if recovery is None:
            await self._write_session(connection)
            await self.hooks.connected(connection, self)
            return
        for room in recovery.rooms:
            await self.presence.joined(connection, room)
        await self._write_session(connection)
        await self.hooks.session_recovered(connection, recovery, self)

    # -- connection state recovery ---------------------------------------------------------

    async def claim_session(self, auth: Any, namespace: str) -> SuspendedSession | None:
        """The suspended session a reconnecting client names in its CONNECT payload
        (``{pid, offset}``), claimed for it — or None: recovery is off, the client names
        none, it expired or was claimed already, or belongs to another namespace. Socket
        door only."""
        if not self.recovery.enabled or not isinstance(auth, dict):
            return None
        pid = auth.get("pid")
        if not isinstance(pid, str) or not pid or len(pid) > 64:
            return None
        try:
            session = await self.sessions.take(pid)
        except Exception:
            log.exception("reading a suspended session failed")
            return None
        if session is None or session.namespace != namespace or session.sid in self._connections:
            return None
        return session

    def missed_streams(
        self, session: SuspendedSession, offset: str, rooms: list[str] | None = None
    ) -> list[StreamRead]:
        """The streams a recovering session reads, each from the later of the client's
        offset and the point the session started owing it events."""
        start = later(offset, session.origin)
        reads = [StreamRead("all", None, start), StreamRead("sid", session.sid, start)]
        for room, joined in session.rooms.items():
            if (rooms is None or room in rooms) and self.history.keeps("room", room):
                reads.append(StreamRead("room", room, later(offset, joined)))
        return reads

    async def missed(
        self, session: SuspendedSession, offset: str, rooms: list[str] | None = None
    ) -> list[StoredEvent] | None:
        """The stored events ``session`` missed after ``offset`` (skipping those not sent to
        it), in offset order; None when history no longer holds all of them."""
        events = await self.history.read(
            session.namespace, self.missed_streams(session, offset, rooms)
        )
        if events is None:
            return None
        return [e for e in events if e.skip != session.sid]

    async def close_connection(self, sid: str, reason: str) -> None:
        """Run ``plugbus_disconnect`` and forget the connection; called by the socket door.

        A connection offered recovery that dropped for a reason the client recovers from is
        first kept as a :class:`SuspendedSession` (``connection.suspended`` is True in the
        hook), for ``server.recovery.max_disconnection_s``.
        """
        task = asyncio.current_task()
        if task is not None:
            self._closing.add(task)
        try:
            await self._close(sid, reason)
        finally:
            if task is not None:
                self._closing.discard(task)

    async def _close(self, sid: str, reason: str) -> None:
        connection = self._forget(sid)
        if connection is None:
            return
        if connection.pid is not None and self.recovery.enabled:
            if reason in RECOVERABLE_REASONS:
                await self._suspend(connection)
            else:
                try:
                    await self.sessions.forget(connection.pid, self.node_id)
                except Exception as exc:  # its window runs out by itself
                    log.warning("forgetting the session of %s failed: %s", connection.sid, exc)
        try:
            await self.hooks.disconnect(connection, reason, self)
        finally:
            await self.presence.disconnected(connection)

    def _session_of(self, connection: Connection, suspended_at: float) -> SuspendedSession:
        assert connection.pid is not None
        origin = connection.marks.get("", ZERO)
        return SuspendedSession(
            sid=connection.sid,
            pid=connection.pid,
            namespace=connection.namespace,
            rooms={
                room: connection.marks.get(room, origin)
                for room in self.rooms_of(connection.sid, connection.namespace)
            },
            origin=origin,
            identity=SuspendedSession.identity_of(connection.identity),
            data=connection.data,
            suspended_at=suspended_at,
            node=self.backend.node_id,
        )

    async def _write_session(self, connection: Connection) -> None:
        """Write a live connection's session (Redis): if this node dies, its client recovers
        on another node from it (issue #18)."""
        if connection.pid is None or not self.recovery.enabled:
            return
        try:
            await self.sessions.keep_live(self._session_of(connection, 0.0))
        except Exception as exc:  # Redis away: written again at the next change
            log.warning("writing the session of %s failed: %s", connection.sid, exc)

    async def _suspend(self, connection: Connection) -> None:
        session = self._session_of(connection, time.time())
        try:
            await self.sessions.keep(session)
        except Exception:
            log.exception("keeping the session of %s for recovery failed", connection.sid)
            return
        connection.suspended = True
        loop = asyncio.get_running_loop()
        self._expiry[session.pid] = loop.call_later(
            self.recovery.max_disconnection_s, self._spawn_expiry, session
        )

    def _spawn_expiry(self, session: SuspendedSession) -> None:
        self._spawn(self._expire(session))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._background.discard)

    async def _expire(self, session: SuspendedSession) -> None:
        self._expiry.pop(session.pid, None)
        try:
            if not await self.sessions.expire(session.pid):
                return  # recovered meanwhile (on this node or another)
        except Exception:
            log.exception("expiring the session of %s failed", session.sid)
            return
        await self._expired(session)

    async def _expired(self, session: SuspendedSession) -> None:
        connection = Connection(
            sid=session.sid,
            namespace=session.namespace,
            identity=session.restored_identity(),
            data=session.data,
            pid=session.pid,
            suspended=True,
        )
        await self.hooks.session_expired(connection, list(session.rooms), self)

    def abandon_session(self, session: SuspendedSession) -> None:
        """A claimed session will not be continued after all (its client gets a fresh one):
        its ``plugbus_session_expired`` runs now, since no expiry will come for it."""
        self._spawn(self._expired(session))

    def recovered_here(self, pid: str) -> None:
        """Stop the expiry timer of a session this node kept (it was claimed)."""
        handle = self._expiry.pop(pid, None)
        if handle is not None:
            handle.cancel()

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
            self.history = RedisHistory(
                self.config.server.history,
                self.backend,
                replicas=self.config.server.backend_replicas,
                replica_timeout=self.config.server.backend_replica_timeout,
            )
            self._wire_history()
            self.sessions = RedisSessions(self.recovery.max_disconnection_s, self.backend)
        await self.history.start()
        await self.presence.start()
        await self.cluster.start()
        if isinstance(self.presence, SharedPresence):
            await self.presence.beat()
            self._watch = asyncio.create_task(self._watch_nodes(), name="plugbus-node-watch")
        await self.hooks.startup(self)
        overlap = self.append_overlap()
        if overlap is not None and not overlap["on"]:
            # said once, at start-up and in /health: no silent fallback to one append at a time
            log.warning(
                "history: a connection's events wait for each other's appends (%s)",
                overlap["unavailable_reason"],
            )

    def append_overlap(self) -> dict[str, Any] | None:
        """Whether a websocket connection's next event may start while the events before it
        wait for their appends (``bus.emit(..., last=True)``; docs/deployment.md), and if not,
        why; None with the memory backend (nothing waits)."""
        history = self.history
        if not isinstance(history, RedisHistory):
            return None
        reason = None
        if history.replicas:
            reason = "server.backend_replicas: each append waits for the replicas"
        elif not self.hooks.handle_event_ends_with_result():
            reason = "plugbus_handle_event has a wrapper, or hook calls are monitored or traced"
        return {"on": reason is None, "unavailable_reason": reason}

    async def _watch_nodes(self) -> None:
        """Heartbeat this node every second; clean up after nodes that stopped theirs: their
        connections leave presence, and their live sessions start their recovery windows
        here (issue #18)."""
        presence = self.presence
        assert isinstance(presence, SharedPresence)
        while True:
            await asyncio.sleep(1)
            try:
                await presence.beat()
                for node in await presence.dead_nodes():
                    if await presence.claim_reaping(node):
                        # beside the beat, not in its way: the dead node's disconnects may
                        # take a while, and this node must go on heartbeating meanwhile
                        self._spawn(self._reap(presence, node))
            except Exception as exc:  # Redis away: the next beat tries again
                log.debug("node heartbeat failed: %s", exc)

    async def _reap(self, presence: SharedPresence, node: str) -> None:
        """Run the disconnect of each connection dead ``node`` held, as a lost transport
        would on that node (reason ``"node lost"``): ``plugbus_disconnect`` — with
        ``suspended`` True when its session is kept for recovery, whose window starts here
        (``plugbus_session_expired`` runs here if it lapses) — then out of presence and its
        rooms. This node won the claim: no other node does it (issue #18)."""
        try:
            departed = await presence.departed(node)
            suspended, before = await self.sessions.orphaned(node)
        except Exception as exc:  # the claim lapses in a minute; another node tries again
            presence.stop_departing()
            log.warning("cleaning up after dead node %s failed: %s", node, exc)
            return
        # the windows start now, here: the dead node's timers died with it
        loop = asyncio.get_running_loop()
        now = time.time()
        for orphan in [*suspended, *before]:
            window = orphan.suspended_at + self.recovery.max_disconnection_s - now
            self._expiry[orphan.pid] = loop.call_later(max(0.0, window), self._spawn_expiry, orphan)
        kept = {session.sid: session for session in suspended}
        try:
            for sid, details in departed.items():
                session = kept.get(sid)
                if details.get("session") and session is None:
                    # its session was claimed since: it recovered (or is recovering) elsewhere
                    await presence.forget_departed(node, sid, {})
                    continue
                await self._departed(presence, node, sid, details, session)
            await presence.forget_node(node)
        except Exception as exc:  # Redis away: the claim lapses, the rest is done again
            presence.stop_departing()
            log.warning("cleaning up after dead node %s failed: %s", node, exc)
            return
        log.warning(
            "node %s stopped heartbeating: %d of its connections disconnected here, %d "
            "sessions kept for recovery",
            node,
            len(departed),
            len(suspended) + len(before),
        )

    async def _departed(
        self,
        presence: SharedPresence,
        node: str,
        sid: str,
        details: dict[str, Any],
        session: SuspendedSession | None,
    ) -> None:
        """The disconnect of one of dead ``node``'s connections, run here."""
        user_id = details.get("user_id")
        connection = Connection(
            sid=sid,
            namespace=details.get("namespace") or self.default_namespace,
            identity=Identity(user_id, details.get("name"), tuple(details.get("roles") or ()))
            if user_id
            else None,
            data=session.data if session is not None else {},
            pid=session.pid if session is not None else None,
            suspended=session is not None,
        )
        self._departing[sid] = list(details.get("rooms") or ())
        try:
            await self.hooks.disconnect(connection, "node lost", self)
        finally:
            self._departing.pop(sid, None)
        await presence.forget_departed(node, sid, details)

    #: Seconds a stop gives each of its three phases — the connections' disconnects, the
    #: ``plugbus_shutdown`` hooks, the backend's teardown — before it goes on without what is
    #: not done (logged): a node drained by SIGTERM exits within ``drain_seconds`` +
    #: ``shutdown_timeout`` + about 3 x this, whatever Redis or a plugin does meanwhile.
    STOP_PHASE_S = 1.5

    async def stop(self) -> None:
        """Run ``plugbus_shutdown``, then close the backend; each phase bounded by
        :attr:`STOP_PHASE_S`."""
        try:
            await self._settle_connections()
            await self._bounded("plugbus_shutdown", [self.hooks.shutdown(self)])
        finally:
            if self._watch is not None:
                self._watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watch
            for handle in self._expiry.values():
                handle.cancel()
            self._expiry.clear()
            await self._bounded("closing the backend", [self._teardown()])

    async def _teardown(self) -> None:
        await self.cluster.stop()
        await self.presence.stop()
        await self.history.stop()
        await self.backend.stop()

    async def _bounded(self, what: str, coros: list[Any]) -> None:
        """Run ``coros`` side by side for at most :attr:`STOP_PHASE_S`; cancel what is left
        and go on without waiting for it (a cancelled task may take its time to end)."""
        if not coros:
            return
        tasks = [asyncio.ensure_future(coro) for coro in coros]
        done, pending = await asyncio.wait(tasks, timeout=self.STOP_PHASE_S)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                log.warning("stopping: %s failed: %s: %s", what, type(exc).__name__, exc)
        if pending:
            for task in pending:
                task.cancel()
            log.warning(
                "stopping: %s not done after %g s (%d of %d left); going on without it",
                what,
                self.STOP_PHASE_S,
                len(pending),
                len(tasks),
            )

    async def _settle_connections(self) -> None:
        """Before the backend closes: let the disconnects under way finish (their sessions
        are being kept), and close the connections still open, which the server is about to
        drop ("server shutting down": their sessions are kept, their clients recover
        elsewhere or after the restart) — side by side, not one after the other, and within
        :attr:`STOP_PHASE_S` in all. A connection not closed by then still has the live
        session written while it was connected, which its client can recover."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.STOP_PHASE_S
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=self.STOP_PHASE_S)
        remaining = list(self._connections)
        if not remaining:
            return
        # no more at once than the backend has connections (the others would queue there,
        # and fail after its command timeout)
        limit = asyncio.Semaphore(self.backend.max_connections)

        async def close(sid: str) -> None:
            async with limit:
                await self.close_connection(sid, "server shutting down")

        tasks = [loop.create_task(close(sid)) for sid in remaining]
        done, pending = await asyncio.wait(tasks, timeout=max(0.1, deadline - loop.time()))
        for task in pending:
            task.cancel()
        failed = sum(1 for t in done if not t.cancelled() and t.exception() is not None)
        if pending or failed:
            log.warning(
                "stopping: %d of %d open connections were not closed cleanly (%d still "
                "closing after %g s, %d failed)",
                len(pending) + failed,
                len(remaining),
                len(pending),
                self.STOP_PHASE_S,
                failed,
            )
