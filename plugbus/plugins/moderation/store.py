"""Moderation state: sanctions in force, the decision log, and the store that keeps them
(with flood buckets and slow-mode times) — :class:`ModerationStore`, in memory by default
(:class:`MemoryStore`); ``redis_store`` has the one several nodes share."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, Field

from plugbus import PlugbusError

from .settings import SanctionType, TargetKind

#: Seconds a sender's slow-mode times are kept at least (longer when a delay is longer).
SENT_KEEP = 86400.0


class StoreUnavailable(PlugbusError):
    """The moderation store cannot be reached (a shared store's Redis is down): the event,
    connect or REST call that needed it is refused, and works again once it is back."""

    code = "moderation_unavailable"
    status = 503


class Sanction(BaseModel):
    """A ban or a mute in force."""

    id: str = Field(description="Use it to lift the sanction.")
    type: SanctionType
    kind: TargetKind = Field(
        description="What value names: a connection id, a user id or an address."
    )
    value: str
    reason: str = ""
    created_at: datetime
    expires_at: datetime | None = Field(None, description="When it lapses; null = until lifted.")
    sid: str | None = Field(
        None, description="The connection it was made against, if made by connection."
    )

    def expired(self, now: datetime) -> bool:
        """True once ``expires_at`` has passed."""
        return self.expires_at is not None and self.expires_at <= now


class LogEntry(BaseModel):
    """One moderation decision, or one ban, mute or kick made."""

    time: datetime
    rule: str
    action: str = Field(description="refuse, mask, drop; ban, unban, mute, unmute, kick.")
    event: str | None = None
    sid: str | None = None
    user: str | None = None
    field: str | None = None
    reason: str = ""
    target: str | None = Field(None, description='For sanctions: "kind:value".')


class ModerationStore(Protocol):
    """Where moderation keeps its state. The rules and routes use only these methods, so a
    shared store (``redis_store.RedisStore``) can replace :class:`MemoryStore` without them
    noticing. A store that cannot reach its state raises :class:`StoreUnavailable` (except
    :meth:`append_log`, which loses the entry rather than undo a decision already made)."""

    async def add_sanction(self, sanction: Sanction) -> Sanction | None:
        """Store ``sanction``; return the one it replaced (same type, kind and value), if any."""
        ...

    async def lift_sanction(self, type: SanctionType, id: str) -> Sanction | None:
        """Remove a sanction by id; None when there is none (or it had lapsed)."""
        ...

    async def sanctions(self, type: SanctionType) -> list[Sanction]:
        """Every sanction of ``type`` in force, oldest first."""
        ...

    async def find_sanction(
        self, type: SanctionType, targets: Iterable[tuple[TargetKind, str]]
    ) -> Sanction | None:
        """The first sanction of ``type`` in force on any of ``targets``."""
        ...

    async def take_token(self, sender: str, burst: int, rate: float) -> float:
        """Take one token from ``sender``'s flood bucket: 0 when taken, else seconds to wait.

        ``sender`` is ``identity:<user id>`` for a connection with an identity (so a user's
        connections share one bucket), else ``connection:<sid>`` (see ``rules.sender_of``).
        """
        ...

    async def slow_mode(self) -> dict[str, float]:
        """The per-room slow-mode delays."""
        ...

    async def slow_mode_delay(self, room: str) -> float | None:
        """The delay of ``room``, or None when it has none of its own."""
        ...

    async def set_slow_mode(self, room: str, seconds: float) -> None:
        """Set the delay of ``room``."""
        ...

    async def seed_slow_mode(self, rooms: dict[str, float]) -> None:
        """Set the delays of ``rooms`` that have none yet (config's ``slow_mode.rooms`` at
        start-up: a delay set at run time in a shared store is never overwritten)."""
        ...

    async def slow_mode_wait(self, sender: str, room: str, seconds: float) -> float:
        """Seconds ``sender`` must still wait before its next message in ``room`` (0 = none)."""
        ...

    async def message_sent(self, sender: str, room: str) -> None:
        """Record that ``sender`` just sent a message to ``room`` (for slow mode)."""
        ...

    async def forget_connection(self, sid: str) -> None:
        """Drop what is kept about a closed connection: the bucket and slow-mode times of
        sender ``connection:<sid>`` and its mutes by connection. (An identity's bucket and
        times are kept: they lapse by themselves, and a reconnect must not reset them.)"""
        ...

    async def append_log(self, entry: LogEntry) -> None:
        """Add a decision to the log (the oldest fall off past the configured size)."""
        ...

    async def log(self, limit: int) -> list[LogEntry]:
        """The newest ``limit`` log entries, oldest first."""
        ...


class MemoryStore:
    """:class:`ModerationStore` in this process's memory (lost on restart, not shared)."""

    #: Seconds between two sweeps of lapsed buckets and slow-mode times.
    SWEEP_EVERY = 60.0

    def __init__(self, log_size: int, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._by_target: dict[tuple[str, str, str], Sanction] = {}
        self._buckets: dict[str, tuple[float, float, float]] = {}  # sender -> (tokens, at, full at)
        self._delays: dict[str, float] = {}
        self._last_sent: dict[tuple[str, str], float] = {}  # (sender, room) -> at
        self._keep = SENT_KEEP
        self._swept = clock()
        self._log: deque[LogEntry] = deque(maxlen=log_size)

    async def add_sanction(self, sanction: Sanction) -> Sanction | None:
        key = (sanction.type, sanction.kind, sanction.value)
        old = self._by_target.get(key)
        self._by_target[key] = sanction
        return old

    async def lift_sanction(self, type: SanctionType, id: str) -> Sanction | None:
        now = datetime.now(UTC)
        for key, sanction in list(self._by_target.items()):
            if sanction.type == type and sanction.id == id:
                del self._by_target[key]
                return None if sanction.expired(now) else sanction
        return None

    async def sanctions(self, type: SanctionType) -> list[Sanction]:
        self._purge()
        found = [s for s in self._by_target.values() if s.type == type]
        return sorted(found, key=lambda s: s.created_at)

    async def find_sanction(
        self, type: SanctionType, targets: Iterable[tuple[TargetKind, str]]
    ) -> Sanction | None:
        for kind, value in targets:
            sanction = self._by_target.get((type, kind, value))
            if sanction is None:
                continue
            if sanction.expired(datetime.now(UTC)):
                del self._by_target[(type, kind, value)]
                continue
            return sanction
        return None

    def _purge(self) -> None:
        now = datetime.now(UTC)
        for key in [k for k, s in self._by_target.items() if s.expired(now)]:
            del self._by_target[key]

    def _sweep(self, now: float) -> None:
        """Now and then, forget buckets full again and slow-mode times past keeping (an
        identity's are never forgotten on disconnect)."""
        if now - self._swept < self.SWEEP_EVERY:
            return
        self._swept = now
        for sender in [k for k, b in self._buckets.items() if b[2] <= now]:
            del self._buckets[sender]
        for key in [k for k, at in self._last_sent.items() if at + self._keep <= now]:
            del self._last_sent[key]

    async def take_token(self, sender: str, burst: int, rate: float) -> float:
        now = self._clock()
        self._sweep(now)
        tokens, at, _ = self._buckets.get(sender, (float(burst), now, now))
        tokens = min(float(burst), tokens + (now - at) * rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / rate
        self._buckets[sender] = (tokens, now, now + (burst - tokens) / rate)
        return wait

    async def slow_mode(self) -> dict[str, float]:
        return dict(self._delays)

    async def slow_mode_delay(self, room: str) -> float | None:
        return self._delays.get(room)

    async def set_slow_mode(self, room: str, seconds: float) -> None:
        self._delays[room] = seconds
        self._keep = max(self._keep, seconds)

    async def seed_slow_mode(self, rooms: dict[str, float]) -> None:
        for room, seconds in rooms.items():
            if room not in self._delays:
                await self.set_slow_mode(room, seconds)

    async def slow_mode_wait(self, sender: str, room: str, seconds: float) -> float:
        self._keep = max(self._keep, seconds)
        last = self._last_sent.get((sender, room))
        if last is None:
            return 0.0
        now: float = self._clock()
        return max(0.0, last + seconds - now)

    async def message_sent(self, sender: str, room: str) -> None:
        now = self._clock()
        self._sweep(now)
        self._last_sent[(sender, room)] = now

    async def forget_connection(self, sid: str) -> None:
        sender = f"connection:{sid}"
        self._buckets.pop(sender, None)
        for key in [k for k in self._last_sent if k[0] == sender]:
            del self._last_sent[key]
        self._by_target.pop(("mute", "connection", sid), None)

    async def append_log(self, entry: LogEntry) -> None:
        self._log.append(entry)

    async def log(self, limit: int) -> list[LogEntry]:
        return list(self._log)[-limit:] if limit > 0 else []
