"""Sessions kept for connection state recovery: what a dropped connection was, for a while.

When a connection that was offered recovery drops for a reason the client recovers from
(a transport closed or failed, a ping timed out, the server is shutting down), the bus keeps a
:class:`SuspendedSession` — its sid, rooms (each with the offset it was joined at), identity,
``connection.data`` and the offset it started at — under its private session id (``pid``) for
``server.recovery.max_disconnection_s``. A reconnecting client names its pid and the offset of
the last event it received; the session is *taken* (once: a second claim finds nothing) and
the events it missed are read from history.

The memory store lives in this process; the Redis store keeps each session as one key with the
window as its time-to-live, so a client recovers on any node and after a restart. Taking is
Redis's ``GETDEL``, so two nodes never both restore one session.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from .context import Identity

if TYPE_CHECKING:
    from .backend import Backend

#: Disconnect reasons a session is kept for (Node's RECOVERABLE_DISCONNECT_REASONS, in
#: python-socketio's words): not a client's own disconnect nor a server's kick.
RECOVERABLE_REASONS = frozenset(
    {"transport close", "transport error", "ping timeout", "server shutting down"}
)

#: Seconds a stored session outlives its window, so that the node that suspended it still
#: finds it when its expiry timer fires (and says it expired).
_MARGIN_S = 30


class SessionMismatch(Exception):
    """A client named a session that belongs to another identity (it is connected afresh)."""


@dataclass(slots=True)
class SuspendedSession:
    """A dropped connection, kept for recovery.

    :ivar sid: its connection id, given back on recovery.
    :ivar pid: its private session id (a secret the client holds).
    :ivar namespace: its namespace.
    :ivar rooms: each room it was in, with the offset at which it joined.
    :ivar origin: the offset it started at (what it is owed broadcasts and direct messages from).
    :ivar identity: who it was, as ``[user_id, name, roles]``, or None.
    :ivar data: ``connection.data``.
    :ivar suspended_at: when it dropped (seconds since the epoch).
    :ivar node: the node that kept it.
    """

    sid: str
    pid: str
    namespace: str
    rooms: dict[str, str]
    origin: str
    identity: list[Any] | None
    data: dict[str, Any] = field(default_factory=dict)
    suspended_at: float = 0.0
    node: str = ""

    @staticmethod
    def identity_of(identity: Identity | None) -> list[Any] | None:
        """An :class:`Identity` in the stored form."""
        if identity is None:
            return None
        return [identity.user_id, identity.name, list(identity.roles)]

    def restored_identity(self) -> Identity | None:
        """The stored identity as an :class:`Identity`."""
        if self.identity is None:
            return None
        user_id, name, roles = self.identity
        return Identity(user_id, name, tuple(roles))

    def to_json(self) -> bytes:
        """The stored form.

        :raises TypeError: ``data`` holds something JSON cannot carry.
        """
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> SuspendedSession:
        """Read the stored form back."""
        return cls(**orjson.loads(raw))


class MemorySessions:
    """Suspended sessions in this process (the memory backend)."""

    async def keep_live(self, session: SuspendedSession) -> None:
        """Write the session of a live connection (Redis only: in memory, a node that dies
        takes its sessions with it)."""

    async def forget(self, pid: str, node: str) -> None:
        """A connection closed for good (nothing kept in memory while it was live)."""

    async def orphaned(self, node: str) -> tuple[list[SuspendedSession], list[SuspendedSession]]:
        """The sessions of a dead node (none in memory)."""
        return [], []

    def __init__(self, window: float) -> None:
        self.window = window
        self._sessions: dict[str, SuspendedSession] = {}

    async def keep(self, session: SuspendedSession) -> None:
        """Keep ``session`` for the window."""
        self._sessions[session.pid] = session

    async def take(self, pid: str) -> SuspendedSession | None:
        """Claim the session ``pid`` for a recovery: the session, once, when it is still
        within its window; None otherwise."""
        session = self._sessions.pop(pid, None)
        if session is None or session.suspended_at + self.window < time.time():
            return None
        return session

    async def expire(self, pid: str) -> bool:
        """Forget session ``pid`` at the end of its window; True when it was still unclaimed
        (so it has expired now and its ``plugbus_session_expired`` is due)."""
        return self._sessions.pop(pid, None) is not None

    def __len__(self) -> int:
        return len(self._sessions)


#: Delete the session at KEYS[1] if it is suspended (not the live session of a connection).
_EXPIRE_SUSPENDED = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
if cjson.decode(v)['suspended_at'] == 0 then return 0 end
return redis.call('DEL', KEYS[1])
"""


class RedisSessions(MemorySessions):
    """Sessions in Redis (``plugbus:session:<pid>``), readable by every node.

    A connection's session is written when it opens and whenever its rooms change, *live*
    (``suspended_at`` 0), not only when it drops: a node that dies cannot write anything, and
    its clients still recover on another node from what it wrote while alive. Each node lists
    the pids of its live sessions (``plugbus:sessions-of:<node>``) so that the node that notices
    its death can start their windows (:meth:`orphaned`).
    """

    #: Seconds a live session is kept without being written again (a connection whose rooms
    #: never change for this long loses recovery only if its node then dies).
    live_ttl = 86400

    def __init__(self, window: float, backend: Backend) -> None:
        super().__init__(window)
        self._backend = backend

    def _key(self, pid: str) -> str:
        return self._backend.key("session", pid)

    def _node_key(self, node: str) -> str:
        return self._backend.key("sessions-of", node)

    async def keep(self, session: SuspendedSession) -> None:
        await self._backend.redis_call(
            "keep a session",
            lambda r: r.set(
                self._key(session.pid),
                session.to_json(),
                px=int((self.window + _MARGIN_S) * 1000),
            ),
        )

    async def keep_live(self, session: SuspendedSession) -> None:
        """Write the session of a live connection (``suspended_at`` 0)."""

        def run(redis: Any) -> Any:
            pipe = redis.pipeline(transaction=False)
            pipe.set(self._key(session.pid), session.to_json(), ex=self.live_ttl)
            pipe.sadd(self._node_key(session.node), session.pid)
            pipe.expire(self._node_key(session.node), self.live_ttl)
            return pipe.execute()

        await self._backend.redis_call("write a session", run)

    async def forget(self, pid: str, node: str) -> None:
        """A connection closed for good (its client left, or was sent away)."""

        def run(redis: Any) -> Any:
            pipe = redis.pipeline(transaction=False)
            pipe.delete(self._key(pid))
            pipe.srem(self._node_key(node), pid)
            return pipe.execute()

        await self._backend.redis_call("forget a session", run)

    async def take(self, pid: str) -> SuspendedSession | None:
        raw = await self._backend.redis_call("claim a session", lambda r: r.getdel(self._key(pid)))
        if raw is None:
            return None
        session = SuspendedSession.from_json(raw)
        if session.suspended_at and session.suspended_at + self.window < time.time():
            return None
        # suspended_at 0: the session of a connection whose node died before it noticed
        return session

    async def expire(self, pid: str) -> bool:
        # only while suspended: a session recovered meanwhile is live again under its pid
        return bool(
            await self._backend.redis_call(
                "expire a session", lambda r: r.eval(_EXPIRE_SUSPENDED, 1, self._key(pid))
            )
        )

    async def orphaned(self, node: str) -> tuple[list[SuspendedSession], list[SuspendedSession]]:
        """The sessions of a dead ``node``, and the node's list of them dropped: (its live
        sessions, suspended now: their windows start; the sessions it had suspended before
        it died, whose expiry timers died with it)."""
        pids = list(
            await self._backend.redis_call(
                "list a node's sessions", lambda r: r.smembers(self._node_key(node))
            )
        )
        out: list[SuspendedSession] = []
        before: list[SuspendedSession] = []
        if pids:
            raws = await self._backend.redis_call(
                "read sessions", lambda r: r.mget([self._key(p) for p in pids])
            )
            now = time.time()
            for raw in raws:
                if raw is None:
                    continue
                session = SuspendedSession.from_json(raw)
                if session.suspended_at:
                    before.append(session)
                    continue
                session.suspended_at = now
                out.append(session)

            def run(redis: Any) -> Any:
                pipe = redis.pipeline(transaction=False)
                for session in out:
                    pipe.set(
                        self._key(session.pid),
                        session.to_json(),
                        px=int((self.window + _MARGIN_S) * 1000),
                        xx=True,
                    )
                pipe.delete(self._node_key(node))
                return pipe.execute()

            await self._backend.redis_call("suspend a dead node's sessions", run)
        return out, before

    def __len__(self) -> int:
        return 0  # not counted locally


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a recovery restored, for ``plugbus_session_recovered``.

    :ivar rooms: the rooms the connection is in again.
    :ivar refused_rooms: rooms it was in whose join rules no longer admit it (not restored).
    :ivar replayed: how many missed events were sent to it.
    :ivar offline_s: seconds it was away.
    :ivar moved: True when it dropped on another node than the one it came back to.
    """

    rooms: tuple[str, ...]
    refused_rooms: tuple[str, ...]
    replayed: int
    offline_s: float
    moved: bool
