"""The Bus as plugins see it: small typed protocols, the whole plugin-facing API.

``plugbus.Bus`` is :class:`Bus` below, not the class core runs: a plugin annotated with it can
use exactly what docs/plugins/bus.md documents (mypy says so), and the running bus — with its
door-only machinery (the hook caller, the connection life cycle, the backend) — satisfies it.
:class:`Presence` and :class:`Cluster` are what ``bus.presence`` and ``bus.cluster`` hand out;
the store's protocol is :class:`~plugbus.core.store.Store`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from .context import Connection, EventContext, Origin
    from .errors import PlugbusError
    from .events import Event
    from .history import StoredEvent
    from .moderation import ModerationRule
    from .presence import Member
    from .store import Store


class Presence(Protocol):
    """Who is connected and in which room — on every node when the backend is shared (Redis),
    on this node otherwise. ``bus.presence``."""

    async def rooms(self, namespace: str | None = None) -> dict[str, int]:
        """Every room with members in ``namespace`` (the default namespace when None), with
        its member count."""
        ...

    async def members(self, room: str, namespace: str | None = None) -> list[Member]:
        """The connections in ``room`` of ``namespace`` (sid, user id, name), sorted by sid."""
        ...

    async def count(self, room: str, namespace: str | None = None) -> int:
        """How many connections are in ``room`` of ``namespace``."""
        ...

    async def is_connected(self, sid: str) -> bool:
        """True when connection ``sid`` is live on some node."""
        ...


#: A cluster operation: called with the JSON payload (which names ``sid``); returns JSON.
Operation = Callable[[dict[str, Any]], Awaitable[Any]]


class Cluster(Protocol):
    """Operations by connection id, run on whichever node holds the connection.
    ``bus.cluster``."""

    def register(self, name: str, operation: Operation) -> None:
        """Make ``operation`` runnable from any node under ``name`` (prefix it with your
        plugin's name). Register in ``plugbus_startup``.

        :raises ValueError: the name is taken.
        """
        ...

    async def on_owner(self, sid: str, name: str, payload: dict[str, Any]) -> Any:
        """Run operation ``name`` with ``payload`` (plus ``sid``) on the node holding ``sid``.

        :return: what the operation returned.
        :raises NotFound: no node holds ``sid``.
        :raises PlugbusError: the operation's own refusal (the same code, status and details),
            or ``node_timeout`` (504) when the owner did not answer in time.
        """
        ...


class History(Protocol):
    """The rooms' history (``bus.history``): what recovery replays from and what
    ``GET /rooms/{room}/messages`` and ``room-history`` read."""

    async def page(
        self, namespace: str, room: str, after: str | None, limit: int
    ) -> list[StoredEvent]:
        """Up to ``limit`` events of ``room`` after offset ``after`` (from the oldest kept when
        None), oldest first."""
        ...

    async def delete(self, namespace: str, room: str, offset: str) -> bool:
        """Remove one event from ``room``'s history; True when it was there."""
        ...


class Counter(Protocol):
    """A counter of the node's metrics, made with :meth:`Bus.counter`."""

    def inc(self, *values: str, amount: int = 1) -> None:
        """Add ``amount`` (one by default, never negative) to the count of these label
        values, given in the order of the counter's label names.

        :raises ValueError: not one value per label name, or a negative amount.
        """
        ...


@dataclass(frozen=True, slots=True)
class TextDecision:
    """What the active moderation rules make of a text (:meth:`Bus.moderate_text`).

    :ivar action: ``"pass"`` (unchanged), ``"mask"`` (changed, use ``text``), ``"refuse"``
        (raise ``error`` to refuse what carried it) or ``"drop"`` (ignore it silently).
    :ivar text: the text to use: as given, or masked; None when refused or dropped.
    :ivar error: the refusal (``MessageRejected``, ``RateLimited``...), for ``"refuse"``.
    :ivar reason: why, for ``"refuse"`` and ``"drop"``.
    """

    action: Literal["pass", "mask", "refuse", "drop"]
    text: str | None
    error: PlugbusError | None = None
    reason: str = ""


class Bus(Protocol):
    """The bus, as every hook and route handler receives it (``bus``, ``ctx.bus``, ``req.bus``).

    Everything here is documented in docs/plugins/bus.md, with examples.
    """

    # -- about the server --------------------------------------------------------------------

    @property
    def server_name(self) -> str:
        """``server.name`` from the config."""
        ...

    @property
    def default_namespace(self) -> str:
        """The default namespace (the first of ``server.namespaces``)."""
        ...

    @property
    def node_id(self) -> str:
        """This node's id: random per process, unique among the nodes sharing a backend."""
        ...

    # -- what it hands out -------------------------------------------------------------------

    @property
    def presence(self) -> Presence:
        """Who is connected and where, on every node (see :class:`Presence`)."""
        ...

    @property
    def cluster(self) -> Cluster:
        """Operations by connection id on the owning node (see :class:`Cluster`)."""
        ...

    @property
    def history(self) -> History:
        """The rooms' history, every node's (see :class:`History`)."""
        ...

    def store(self, name: str, *, local: bool = False, cached: Sequence[str] = ()) -> Store:
        """The store named ``name`` (use your plugin's name): shared by every node with a Redis
        backend, this process's otherwise; ``local=True`` keeps it in this process always.
        Reads of keys starting with one of ``cached`` are answered from this node's copy,
        which a write to such a key updates on every node before it returns: for state read
        on every event and seldom changed, whose values carry their own expiry (if any).

        :raises ValueError: an empty name, one with ``:``, or one plugbus uses itself.
        """
        ...

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        """A counter exposed in ``/metrics`` as ``plugbus_<name>_total`` with ``help`` and
        ``labels`` (bounded values only: never a room, a sid or a user id); made on first use,
        and the same counter when asked for again with the same labels.

        :raises ValueError: a bad name (lower case, digits, ``_``; not one of plugbus's own
            metrics; no ``_total``), bad labels, no help text, or a name already made with
            other labels.
        """
        ...

    @property
    def moderation_rules(self) -> list[ModerationRule]:
        """Every rule the plugins contributed through ``plugbus_moderation_rules`` (the hook
        is called the first time this is read)."""
        ...

    # -- the pipeline ------------------------------------------------------------------------

    def context(
        self,
        origin: Origin,
        connection: Connection | None = None,
        *,
        wants_ack: bool = False,
        namespace: str | None = None,
    ) -> EventContext:
        """A context for an event arriving through ``origin``, for :meth:`dispatch`."""
        ...

    def check_namespace(self, namespace: str) -> str:
        """``namespace`` when the server serves it.

        :raises NotFound: it does not.
        """
        ...

    async def dispatch(self, name: Any, payload: Any, ctx: EventContext) -> Any:
        """Run a named event with its payload through validation, moderation and handling."""
        ...

    async def publish(self, event: Event, ctx: EventContext) -> Any:
        """Run an event object through moderation and handling."""
        ...

    async def moderate_text(
        self, text: str, *, connection: Connection | None = None
    ) -> TextDecision:
        """Run ``text`` through the active moderation rules and say what they decided."""
        ...

    # -- delivery ----------------------------------------------------------------------------

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
        """Send ``event`` to a room, one connection, or everyone; ``history=False`` keeps it
        out of the history; ``last``: the event handler returns its result right after. The
        event's offset when it was stored, else None."""
        ...

    async def join(self, sid: str, room: str) -> bool:
        """Put connection ``sid`` into ``room`` (on whichever node holds it)."""
        ...

    async def leave(self, sid: str, room: str) -> bool:
        """Take connection ``sid`` out of ``room`` (on whichever node holds it)."""
        ...

    async def disconnect(self, sid: str) -> None:
        """Close connection ``sid`` (on whichever node holds it)."""
        ...

    async def authorize_join(self, connection: Connection, room: str) -> None:
        """Ask ``plugbus_authorize_join`` whether ``connection`` may be in ``room``."""
        ...

    # -- this node's connections and rooms ---------------------------------------------------

    def connection(self, sid: str) -> Connection | None:
        """The live connection ``sid`` on this node, or None."""
        ...

    def connections(self) -> list[Connection]:
        """Every live connection on this node."""
        ...

    def is_connection_id(self, name: str) -> bool:
        """True when ``name`` is the id of a live connection on this node."""
        ...

    @property
    def connection_count(self) -> int:
        """Live connections on this node, in every namespace."""
        ...

    def is_member(self, sid: str, room: str) -> bool:
        """Whether connection ``sid`` (on this node) is in ``room``."""
        ...

    def rooms_of(self, sid: str, namespace: str | None = None) -> list[str]:
        """The rooms connection ``sid`` (on this node) is in."""
        ...

    def rooms(self, namespace: str | None = None) -> dict[str, int]:
        """Every room of ``namespace`` on this node, with its member count."""
        ...

    def members(self, room: str, namespace: str | None = None) -> list[str]:
        """The connection ids in ``room`` on this node."""
        ...

    def room_size(self, room: str, namespace: str | None = None) -> int:
        """How many connections on this node are in ``room``."""
        ...

    def namespace_size(self, namespace: str | None = None) -> int:
        """How many connections this node holds in ``namespace``."""
        ...


__all__ = ["Bus", "Cluster", "Counter", "History", "Operation", "Presence", "TextDecision"]

if TYPE_CHECKING:  # the concrete parts satisfy the protocols (mypy checks these lines)
    from . import bus as _bus
    from . import cluster as _cluster
    from . import counters as _counters
    from . import presence as _presence

    def _check(
        b: _bus.Bus, c: _cluster.Cluster, p: _presence.LocalPresence, n: _counters.PluginCounter
    ) -> None:
        _b: Bus = b
        _n: Counter = n
        _c: Cluster = c
        _p: Presence = p
