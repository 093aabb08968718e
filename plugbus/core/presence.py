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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .bus import Bus
    from .context import Connection
    from .store import Store

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
    with a TTL the node refreshes every third of it; ``room:<room>`` a set of sids; ``rooms``
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

    @staticmethod
    def _conn(sid: str) -> str:
        return f"conn:{sid}"

    @staticmethod
    def _node_conns(node: str) -> str:
        return f"node-conns:{node}"

    # -- node liveness (issue #18): a node that stops heartbeating is dead within
    # NODE_TTL seconds, and the first node to notice takes its connections out of presence

    #: Seconds a node counts as alive after its last heartbeat (written every second).
    NODE_TTL = 3.0

    async def beat(self) -> None:
        """Say this node is alive (every second)."""
        async with self._store.batch() as batch:
            batch.set(f"alive:{self._node}", 1, ttl=self.NODE_TTL)
            batch.sadd("nodes", self._node)

    async def dead_nodes(self) -> list[str]:
        """Nodes that were seen and have stopped heartbeating."""
        nodes = sorted(await self._store.smembers("nodes") - {self._node})
        if not nodes:
            return []
        alive = await self._store.get_many([f"alive:{n}" for n in nodes])
        return [n for n, a in zip(nodes, alive, strict=True) if a is None]

    async def claim_reaping(self, node: str) -> bool:
        """Whether this node cleans up after dead ``node`` (one node does)."""
        return await self._store.add(f"reaping:{node}", self._node, ttl=60)

    async def reap(self, node: str) -> int:
        """Take dead ``node``'s connections out of presence (their room memberships go as
        they are read, like those of expired entries); return how many."""
        listed = sorted(await self._store.smembers(self._node_conns(node)))
        infos = await self._store.get_many([self._conn(sid) for sid in listed]) if listed else []
        # a connection recovered on another node meanwhile is that node's now
        sids = [s for s, i in zip(listed, infos, strict=True) if i and i.get("node") == node]
        async with self._store.batch() as batch:
            for sid in sids:
                batch.delete(self._conn(sid))
            batch.delete(self._node_conns(node))
            batch.srem("nodes", node)
        return len(sids)

    async def retire(self) -> None:
        """This node stops: it is no longer one of the nodes."""
        async with self._store.batch() as batch:
            batch.srem("nodes", self._node)
            batch.delete(f"alive:{self._node}", self._node_conns(self._node))

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
        """Stop refreshing and remove this node's entries."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            for connection in self._bus.connections():
                await self.disconnected(connection)
            await self.retire()

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
            for connection in connections:
                batch.set(self._conn(connection.sid), self._info(connection), ttl=self._ttl)
                batch.sadd(self._node_conns(self._node), connection.sid)
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

    async def connected(self, connection: Connection) -> None:
        async with self._store.batch() as batch:
            batch.set(self._conn(connection.sid), self._info(connection), ttl=self._ttl)
            batch.sadd(self._node_conns(self._node), connection.sid)

    async def disconnected(self, connection: Connection) -> None:
        async with self._store.batch() as batch:
            batch.delete(self._conn(connection.sid))
            batch.srem(self._node_conns(self._node), connection.sid)
            for room in self._bus.rooms_of(connection.sid, connection.namespace):
                batch.srem(self._room_key(room, connection.namespace), connection.sid)

    async def joined(self, connection: Connection, room: str) -> None:
        async with self._store.batch() as batch:
            batch.sadd(self._room_key(room, connection.namespace), connection.sid)
            batch.sadd(self._rooms_key(connection.namespace), room)

    async def left(self, connection: Connection, room: str) -> None:
        await self._store.srem(self._room_key(room, connection.namespace), connection.sid)

    async def members(self, room: str, namespace: str | None = None) -> list[Member]:
        sids = sorted(await self._store.smembers(self._room_key(room, namespace)))
        if not sids:
            return []
        infos = await self._store.get_many([self._conn(sid) for sid in sids])
        gone = [sid for sid, info in zip(sids, infos, strict=True) if not info]
        if gone:  # a crashed node's connections: their entries expired
            await self._store.srem(self._room_key(room, namespace), *gone)
        return [
            Member(sid, info.get("user_id") or None, info.get("name") or None)
            for sid, info in zip(sids, infos, strict=True)
            if info
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
        return await self._store.get(self._conn(sid)) is not None
