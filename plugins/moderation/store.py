"""Moderation state: sanctions in force, the decision log, and the store that keeps them
(with flood buckets and slow-mode times) — :class:`ModerationStore`, in memory by default."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, Field

from .settings import SanctionType, TargetKind


class Sanction(BaseModel):
    """A ban or a mute in force."""

    id: str = Field(description="Use it to lift the sanction.")
    type: SanctionType
    kind: TargetKind = Field(description="What value names: a connection id, a user id or an address.")
    value: str
    reason: str = ""
    created_at: datetime
    expires_at: datetime | None = Field(None, description="When it lapses; null = until lifted.")
    sid: str | None = Field(None, description="The connection it was made against, if made by connection.")

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
    shared store (Redis) can replace :class:`MemoryStore` without them noticing."""

    async def add_sanction(self, sanction: Sanction) -> Sanction | None:
        """Store ``sanction``; return the one it replaced (same type, kind and value), if any."""
        ...

    async def lift_sanction(self, type: SanctionType, id: str) -> Sanction | None:
        """Remove a sanction by id; None when there is none (or it had lapsed)."""
        ...

    async def sanctions(self, type: SanctionType) -> list[Sanction]:
        """Every sanction of ``type`` in force, oldest first."""
        ...

    async def find_sanction(self, type: SanctionType, targets: Iterable[tuple[TargetKind, str]]) -> Sanction | None:
        """The first sanction of ``type`` in force on any of ``targets``."""
        ...

    async def take_token(self, sid: str, burst: int, rate: float) -> float:
        """Take one token from connection ``sid``'s bucket: 0 when taken, else seconds to wait."""
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

    async def slow_mode_wait(self, sid: str, room: str, seconds: float) -> float:
        """Seconds ``sid`` must still wait before its next message in ``room`` (0 = none)."""
        ...

    async def message_sent(self, sid: str, room: str) -> None:
        """Record that ``sid`` just sent a message to ``room`` (for slow mode)."""
        ...

    async def forget_connection(self, sid: str) -> None:
        """Drop what is kept about a closed connection (bucket, slow-mode times, its mutes)."""
        ...

    async def append_log(self, entry: LogEntry) -> None:
        """Add a decision to the log (the oldest fall off past the configured size)."""
        ...

    async def log(self, limit: int) -> list[LogEntry]:
        """The newest ``limit`` log entries, oldest first."""
        ...


class MemoryStore:
    """:class:`ModerationStore` in this process's memory (lost on restart, not shared)."""

    def __init__(self, log_size: int, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._by_target: dict[tuple[str, str, str], Sanction] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # sid -> (tokens, at)
        self._delays: dict[str, float] = {}
        self._last_sent: dict[tuple[str, str], float] = {}
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

    async def find_sanction(self, type: SanctionType, targets: Iterable[tuple[TargetKind, str]]) -> Sanction | None:
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

    async def take_token(self, sid: str, burst: int, rate: float) -> float:
        now = self._clock()
        tokens, at = self._buckets.get(sid, (float(burst), now))
        tokens = min(float(burst), tokens + (now - at) * rate)
        if tokens >= 1:
            self._buckets[sid] = (tokens - 1, now)
            return 0.0
        self._buckets[sid] = (tokens, now)
        return (1 - tokens) / rate

    async def slow_mode(self) -> dict[str, float]:
        return dict(self._delays)

    async def slow_mode_delay(self, room: str) -> float | None:
        return self._delays.get(room)

    async def set_slow_mode(self, room: str, seconds: float) -> None:
        self._delays[room] = seconds

    async def slow_mode_wait(self, sid: str, room: str, seconds: float) -> float:
        last = self._last_sent.get((sid, room))
        if last is None:
            return 0.0
        return max(0.0, last + seconds - self._clock())

    async def message_sent(self, sid: str, room: str) -> None:
        self._last_sent[(sid, room)] = self._clock()

    async def forget_connection(self, sid: str) -> None:
        self._buckets.pop(sid, None)
        for key in [k for k in self._last_sent if k[0] == sid]:
            del self._last_sent[key]
        self._by_target.pop(("mute", "connection", sid), None)

    async def append_log(self, entry: LogEntry) -> None:
        self._log.append(entry)

    async def log(self, limit: int) -> list[LogEntry]:
        return list(self._log)[-limit:] if limit > 0 else []
