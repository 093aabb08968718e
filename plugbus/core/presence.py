"""Who is connected and who is in which room — on this node, or across every node.

python-socketio keeps room membership per process (``get_participants`` is local by design),
so cluster-wide presence is plugbus's own: :class:`LocalPresence` answers from this node's
socket server, :class:`SharedPresence` from core's own store in Redis, where every node writes its connections and
memberships. A node's entries carry a time-to-live it keeps refreshing, so the connections of
a node that crashed disappear by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bus import Bus
    from .context import Connection
    from .store import Batch, Store

log = logging.getLogger("plugbus.presence")


@dataclass(frozen=True, slots=True)
class Member:
    """One connection in a room, as presence reports it."""

    sid: str
    user_id: str | None = None
    name: str | None = None


class LocalPresence:
    """Presence of this node only: the memory backend, where this node is everybody."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def start(self) -> None:
        """Begin (nothing to do in memory)."""

    async def stop(self) -> None:
        """End (nothing to do in memory)."""

    async def connected(self, connection: Connection) -> None:
        """Record a new connection."""

    async def disconnected(self, connection: Connection) -> None:
        """Forget a connection and its memberships (its rooms are still readable with
        ``bus.rooms_of``: python-socketio drops them after the disconnect handler)."""

    async def joined(self, connection: Connection, room: str) -> None:
        """Record that ``connection`` joined ``room``."""

    async def left(self, connection: Connection, room: str) -> None:
        """Record that ``connection`` left ``room``."""

    def _member(self, sid: str) -> Member:
        connection = self._bus.connection(sid)
        identity = connection.identity if connection is not None else None
        return Member(
            sid, identity.user_id if identity else None, identity.name if identity else None
        )

    async def rooms(self, namespace: str | None = None) -> dict[str, int]:
        """Every named room of ``namespace`` (the default namespace when None) with its
        member count."""
        return self._bus.rooms(namespace)

    async def members(self, room: str, namespace: str | None = None) -> list[Member]:
        """The connections in ``room`` of ``namespace`` (the default namespace when None),
        sorted by sid."""
        return [self._member(sid) for sid in sorted(self._bus.members(room, namespace))]

    async def count(self, room: str, namespace: str | None = None) -> int:
        """How many connections are in ``room`` of ``namespace`` (default when None)."""
        return self._bus.room_size(room, namespace)

    async def is_connected(self, sid: str) -> bool:
        """True when connection ``sid`` is live."""
        return self._bus.connection(sid) is not None


class SharedPresence(LocalPresence):
    """Presence shared by every node through core's ``presence`` store (Redis).

    Keys (under ``plugbus:presence:``): ``conn:<sid>`` the value ``{node, user_id, name}``
    with a TTL the node refreshes every third of it; ``conns-of:<node>`` a hash of each of the
    node's connections (its namespace, identity and rooms, without a TTL: what a survivor needs
    to run its disconnect when the node dies); ``room:<room>`` a set of sids; ``rooms``
    the set of room names — for the default namespace; another namespace's rooms are
    ``nsroom:<len>:<namespace>:<room>`` and ``nsrooms:<namespace>`` (the length keeps a room
    name holding ":" from reaching into another namespace's keys). Members whose ``conn`` key
    has expired (their node crashed) are dropped as they are found. The refresh writes the
    node's whole state again, so presence also comes back by itself after Redis restarted
    empty.
    """

    def __init__(self, bus: Bus, store: Store, node_id: str, ttl: float) -> None:
        super().__init__(bus)
        self._store = store
        self._node = node_id
        self._ttl = max(1, int(ttl))
        self._task: asyncio.Task[None] | None = None
        #: a dead node's connections whose disconnect runs here now, each with its namespace
        #: and rooms: still members of those rooms meanwhile
        self._departing: dict[str, tuple[Member, str, frozenset[str]]] = {}

    @staticmethod
    def _conn(sid: str) -> str:
        return f"conn:{sid}"

    @staticmethod
    def _node_conns(node: str) -> str:
        # a hash, sid -> what the survivors need to run its disconnect if the node dies
        # (_details): kept without a TTL, unlike conn:<sid>, so that it is still
        # there when a survivor notices the death, whatever presence_ttl is
        return f"conns-of:{node}"

    # -- node liveness (issue #18): a node that stops heartbeating is dead within
    # NODE_TTL seconds, and the first node to notice takes its connections out of presence

    #: Seconds a node counts as alive after its last heartbeat (written every second).
    NODE_TTL = 3.0

    async def beat(self) -> None:
        """Say this node is alive (every second)."""
        async with self._store.batch() as batch:
            batch.set(f"alive:{self._node}", 1, ttl=self.NODE_TTL)
            batch.sadd("nodes", self._node)
            # taken for dead while alive (a stalled loop)? then a later real death must
            # find no claim standing in the way of its clean-up
            batch.delete(f"reaping:{self._node}")

    async def dead_nodes(self) -> list[str]:
        """Nodes that were seen and have stopped heartbeating."""
        nodes = sorted(await self._store.smembers("nodes") - {self._node})
        if not nodes:
            return []
        alive = await self._store.get_many([f"alive:{n}" for n in nodes])
        return [n for n, a in zip(nodes, alive, strict=True) if a is None]

    async def claim_reaping(self, node: str) -> bool:
        """Whether this node cleans up after dead ``node`` (one node does: a SET NX claim)."""
        return await self._store.add(f"reaping:{node}", self._node, ttl=60)

    async def departed(self, node: str) -> dict[str, dict[str, Any]]:
        """Dead ``node``'s connections that are still its own, by sid, each with what it
        was (:meth:`_details`): not those that closed before it died, nor those that
        recovered on another node meanwhile. Until :meth:`forget_departed` takes one out,
        it still counts as a member of its rooms, as a closing connection does while its
        ``plugbus_disconnect`` runs (its ``conn`` entry may have expired already)."""
        listed = await self._store.hgetall(self._node_conns(node))
        if not listed:
            return {}
        sids = sorted(listed)
        infos = await self._store.get_many([self._conn(sid) for sid in sids])
        out = {
            sid: listed[sid]
            for sid, info in zip(sids, infos, strict=True)
            if isinstance(listed[sid], dict) and (not info or info.get("node") == node)
        }
        for sid, details in out.items():
            member = Member(sid, details.get("user_id") or None, details.get("name") or None)
            namespace = details.get("namespace") or self._bus.default_namespace
            self._departing[sid] = (member, namespace, frozenset(details.get("rooms") or ()))
        return out

    async def forget_departed(self, node: str, sid: str, details: dict[str, Any]) -> None:
        """Take one of dead ``node``'s connections out of presence and its rooms."""
        self._departing.pop(sid, None)
        namespace = details.get("namespace")
        async with self._store.batch() as batch:
            batch.delete(self._conn(sid))
            batch.hdel(self._node_conns(node), sid)
            for room in details.get("rooms") or ():
                batch.srem(self._room_key(room, namespace), sid)

    def stop_departing(self) -> None:
        """A clean-up failed half-way: its connections no longer count as members here."""
        self._departing.clear()

    async def forget_node(self, node: str) -> None:
        """Dead ``node`` is no longer one of the nodes (its connections were handled)."""
        async with self._store.batch() as batch:
            batch.delete(self._node_conns(node))
            batch.srem("nodes", node)

    def _room_key(self, room: str, namespace: str | None) -> str:
        if namespace is None or namespace == self._bus.default_namespace:
            return f"room:{room}"
        return f"nsroom:{len(namespace)}:{namespace}:{room}"

    def _rooms_key(self, namespace: str | None) -> str:
        if namespace is None or namespace == self._bus.default_namespace:
            return "rooms"
        return f"nsrooms:{namespace}"

    async def start(self) -> None:
        """Start refreshing this node's entries every third of the TTL."""
        self._task = asyncio.create_task(self._heartbeat(), name="plugbus-presence-heartbeat")

    async def stop(self) -> None:
        """Stop refreshing and remove this node's entries (in one round trip, however many
        connections are left)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            async with self._store.batch() as batch:
                for connection in self._bus.connections():
                    self._remove(batch, connection)
                batch.srem("nodes", self._node)
                batch.delete(f"alive:{self._node}", self._node_conns(self._node))
        except Exception as exc:  # their TTLs end them; survivors see this node as dead
            log.warning("presence: removing this node's entries failed: %s", exc)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                await self._assert_local_state()
            except Exception as exc:  # Redis away: keep trying; our entries expire meanwhile
                log.warning("presence heartbeat failed: %s", exc)

    async def _assert_local_state(self) -> None:
        """Write this node's connections and memberships again, with a fresh TTL (idempotent)."""
        connections = self._bus.connections()
        if not connections:
            return
        async with self._store.batch() as batch:
            batch.hset(self._node_conns(self._node), {c.sid: self._details(c) for c in connections})
            for connection in connections:
                batch.set(self._conn(connection.sid), self._info(connection), ttl=self._ttl)
                ns = connection.namespace
                for room in self._bus.rooms_of(connection.sid, ns):
                    batch.sadd(self._room_key(room, ns), connection.sid)
                    batch.sadd(self._rooms_key(ns), room)

    def _info(self, connection: Connection) -> dict[str, str]:
        identity = connection.identity
        return {
            "node": self._node,
            "user_id": identity.user_id if identity else "",
            "name": (identity.name or "") if identity else "",
        }

    def _details(self, connection: Connection) -> dict[str, Any]:
        """What a survivor needs to run this connection's disconnect should this node die."""
        identity = connection.identity
        return {
            "namespace": connection.namespace,
            "user_id": identity.user_id if identity else None,
            "name": identity.name if identity else None,
            "roles": list(identity.roles) if identity else [],
            "rooms": self._bus.rooms_of(connection.sid, connection.namespace),
            # its live session is in Redis (recovery): the survivor suspends it
            "session": connection.pid is not None and self._bus.recovery.enabled,
        }

    async def connected(self, connection: Connection) -> None:
        async with self._store.batch() as batch:
            batch.set(self._conn(connection.sid), self._info(connection), ttl=self._ttl)
            batch.hset(self._node_conns(self._node), {connection.sid: self._details(connection)})

    async def disconnected(self, connection: Connection) -> None:
        async with self._store.batch() as batch:
            self._remove(batch, connection)

    def _remove(self, batch: Batch, connection: Connection) -> None:
        batch.delete(self._conn(connection.sid))
        batch.hdel(self._node_conns(self._node), connection.sid)
        for room in self._bus.rooms_of(connection.sid, connection.namespace):
            batch.srem(self._room_key(room, connection.namespace), connection.sid)

    async def joined(self, connection: Connection, room: str) -> None:
        async with self._store.batch() as batch:
            batch.sadd(self._room_key(room, connection.namespace), connection.sid)
            batch.sadd(self._rooms_key(connection.namespace), room)
            batch.hset(self._node_conns(self._node), {connection.sid: self._details(connection)})

    async def left(self, connection: Connection, room: str) -> None:
        async with self._store.batch() as batch:
            batch.srem(self._room_key(room, connection.namespace), connection.sid)
            batch.hset(self._node_conns(self._node), {connection.sid: self._details(connection)})

    async def members(self, room: str, namespace: str | None = None) -> list[Member]:
        listed = await self._store.smembers(self._room_key(room, namespace))
        # a dead node's connection counts until its disconnect ran here, even when its entry
        # expired (or was dropped from the room's set by an earlier read)
        ns = namespace or self._bus.default_namespace
        departing = {
            sid: member
            for sid, (member, their_ns, rooms) in self._departing.items()
            if their_ns == ns and room in rooms
        }
        sids = sorted(listed | departing.keys())
        if not sids:
            return []
        infos = await self._store.get_many([self._conn(sid) for sid in sids])
        gone = [
            sid
            for sid, info in zip(sids, infos, strict=True)
            if not info and sid in listed and sid not in departing
        ]
        if gone:  # a crashed node's connections: their entries expired
            await self._store.srem(self._room_key(room, namespace), *gone)
        return [
            Member(sid, info.get("user_id") or None, info.get("name") or None)
            if info
            else departing[sid]
            for sid, info in zip(sids, infos, strict=True)
            if info or sid in departing
        ]

    async def count(self, room: str, namespace: str | None = None) -> int:
        return len(await self.members(room, namespace))

    async def rooms(self, namespace: str | None = None) -> dict[str, int]:
        out: dict[str, int] = {}
        for room in sorted(await self._store.smembers(self._rooms_key(namespace))):
            count = await self.count(room, namespace)
            if count:
                out[room] = count
            else:
                await self._store.srem(self._rooms_key(namespace), room)
        return out

    async def is_connected(self, sid: str) -> bool:
        """True when connection ``sid`` is live: its entry is in presence and its node's
        heartbeat is fresh (issue #18: a killed node's entries outlive it until a survivor
        notices, up to :attr:`NODE_TTL` plus a beat; what is sent to them meanwhile is not
        acknowledged as if it could be delivered)."""
        info = await self._store.get(self._conn(sid))
        if not info:
            return False
        node = info.get("node")
        if node == self._node or not node:
            return True
        return await self._store.get(f"alive:{node}") is not None
