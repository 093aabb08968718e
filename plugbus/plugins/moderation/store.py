"""Moderation state: sanctions in force, the decision log, and :class:`ModerationStore`, which
keeps them (with flood buckets and slow-mode times) in the plugin's own ``bus.store`` — in this
process, or in the Redis every node shares.

Keys of the store ``moderation`` (``plugbus:moderation:...`` in Redis):

========================================  ===========================================================
``sanction:{type}:{kind}:{value}``        one ban or mute; its expiry ends it at ``expires_at``
``sanctions:{type}``                      hash: sanction id -> its key (for listing and lifting by id)
``bucket:{sender}``                       flood bucket (``store.take_token``); lapses once full again
``slow-mode``                             hash: room -> delay in seconds
``sent:{sender}``                         hash: room -> when ``sender`` last wrote there (store clock)
``log``                                   the decision log, capped at ``log_size``
``bans`` (a pub/sub channel)              new bans, so that every node closes its own connections
========================================  ===========================================================
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from plugbus import Counter, Store
from plugbus import StoreUnavailable as SharedStateUnavailable

from .settings import SanctionType, TargetKind

#: Keys every event reads and seldom written (``bus.store(..., cached=...)``): bans and mutes
#: (whose values carry their expiry) and the rooms' slow-mode delays.
CACHED_KEYS = ("sanction:", "slow-mode")

#: Seconds a sender's slow-mode times are kept at least (longer when a delay is longer).
SENT_KEEP = 86400.0


log = logging.getLogger("plugbus.moderation")

UNAVAILABLE = (
    "moderation is unavailable for a moment: its shared store (Redis) cannot be "
    "reached; try again shortly"
)


class StoreUnavailable(SharedStateUnavailable):
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


def _unavailable(exc: SharedStateUnavailable) -> StoreUnavailable:
    """Moderation's own refusal for a shared store that cannot be reached."""
    if isinstance(exc, StoreUnavailable):
        return exc
    return StoreUnavailable(UNAVAILABLE, details={"store": "redis"})


class ModerationStore:
    """Where moderation keeps its state: the plugin's :class:`~plugbus.Store` (see the keys
    above). A store that cannot reach its state raises :class:`StoreUnavailable` (except
    :meth:`append_log`, which loses the entry rather than undo a decision already made).

    :param store: ``bus.store("moderation")`` (``local=True`` for ``store: memory``).
    :param log_size: entries the log keeps (0 keeps none).
    :param decisions: counts every entry by rule and action, whether the log keeps it or not
        (``plugbus_moderation_decisions_total``).
    """

    def __init__(self, store: Store, log_size: int, decisions: Counter | None = None) -> None:
        self.store = store
        self.log_size = log_size
        self.decisions = decisions
        self._keep = SENT_KEEP  # seconds a sender's slow-mode times are kept

    @property
    def shared(self) -> bool:
        """True when every node sees this state."""
        return self.store.shared

    @staticmethod
    @asynccontextmanager
    async def _reaching() -> AsyncIterator[None]:
        try:
            yield
        except SharedStateUnavailable as exc:
            raise _unavailable(exc) from None

    @staticmethod
    def _sanction_key(type: str, kind: str, value: str) -> str:
        return f"sanction:{type}:{kind}:{value}"

    @staticmethod
    def _parse(raw: Any) -> Sanction | None:
        if raw is None:
            return None
        try:
            return Sanction.model_validate(raw)
        except ValidationError:
            log.warning("moderation store: ignoring a malformed sanction: %.200r", raw)
            return None

    # -- sanctions --------------------------------------------------------------------------

    async def add_sanction(self, sanction: Sanction) -> Sanction | None:
        """Store ``sanction``; return the one it replaced (same type, kind and value), if any."""
        key = self._sanction_key(sanction.type, sanction.kind, sanction.value)
        ttl = None
        if sanction.expires_at is not None:
            ttl = max(0.001, (sanction.expires_at - datetime.now(UTC)).total_seconds())
        async with self._reaching():
            old = self._parse(
                await self.store.exchange(key, sanction.model_dump(mode="json"), ttl=ttl)
            )
            await self.store.hset(f"sanctions:{sanction.type}", {sanction.id: key})
            if old is not None and old.id != sanction.id:
                await self.store.hdel(f"sanctions:{sanction.type}", old.id)
        return old

    async def lift_sanction(self, type: SanctionType, id: str) -> Sanction | None:
        """Remove a sanction by id; None when there is none (or it had lapsed)."""
        index = f"sanctions:{type}"
        async with self._reaching():
            key = await self.store.hget(index, id)
            if key is None:
                return None
            await self.store.hdel(index, id)
            raw = await self.store.get(key)
            sanction = self._parse(raw)
            # only this sanction: a newer one under the same key stays
            if sanction is None or sanction.id != id or not await self.store.delete_if(key, raw):
                return None
        return None if sanction.expired(datetime.now(UTC)) else sanction

    async def sanctions(self, type: SanctionType) -> list[Sanction]:
        """Every sanction of ``type`` in force, oldest first."""
        index = f"sanctions:{type}"
        async with self._reaching():
            by_id: dict[str, str] = await self.store.hgetall(index)
            if not by_id:
                return []
            ids = list(by_id)
            raws = await self.store.get_many([by_id[i] for i in ids])
            now = datetime.now(UTC)
            found: list[Sanction] = []
            stale: list[str] = []
            for id, raw in zip(ids, raws, strict=True):
                sanction = self._parse(raw)
                if sanction is None or sanction.id != id or sanction.expired(now):
                    stale.append(id)  # lapsed, replaced or forgotten: tidy the index
                else:
                    found.append(sanction)
            if stale:
                await self.store.hdel(index, *stale)
        return sorted(found, key=lambda s: s.created_at)

    @staticmethod
    def sanction_keys(type: SanctionType, targets: Iterable[tuple[TargetKind, str]]) -> list[str]:
        """The keys :meth:`find_sanctioned` reads for ``targets`` (a rule may keep them)."""
        return [f"sanction:{type}:{kind}:{value}" for kind, value in targets]

    async def find_sanction(
        self, type: SanctionType, targets: Iterable[tuple[TargetKind, str]]
    ) -> Sanction | None:
        """The first sanction of ``type`` in force on any of ``targets``."""
        return await self.find_sanctioned(self.sanction_keys(type, targets))

    async def find_sanctioned(self, keys: list[str]) -> Sanction | None:
        """The first sanction in force under ``keys`` (from :meth:`sanction_keys`)."""
        # On every event (ban and mute rules): no context manager, and no clock unless found.
        if not keys:
            return None
        try:
            raws = await self.store.get_many(keys)
        except SharedStateUnavailable as exc:
            raise _unavailable(exc) from None
        return self._in_force(raws)

    def version_now(self) -> int | None:
        """``Store.version_now`` of the moderation store: while it stays the same, no ban,
        mute or slow-mode delay was set or lifted (None: the store cannot tell at once)."""
        return self.store.version_now()

    def find_sanctioned_now(self, keys: list[str]) -> tuple[Sanction | None] | None:
        """:meth:`find_sanctioned` without waiting: ``(sanction or None,)`` when the store
        has the keys at hand (``Store.get_many_now``), None when it must be awaited."""
        if not keys:
            return (None,)
        raws = self.store.get_many_now(keys)
        return None if raws is None else (self._in_force(raws),)

    def _in_force(self, raws: list[Any]) -> Sanction | None:
        now = None
        for raw in raws:
            if raw is None:
                continue
            sanction = self._parse(raw)
            now = now or datetime.now(UTC)
            if sanction is not None and not sanction.expired(now):
                return sanction
        return None

    # -- flood ------------------------------------------------------------------------------

    async def take_token(self, sender: str, burst: int, rate: float) -> float:
        """Take one token from ``sender``'s flood bucket: 0 when taken, else seconds to wait.

        ``sender`` is ``identity:<user id>`` for a connection with an identity (so a user's
        connections share one bucket), else ``connection:<sid>`` (see ``rules.sender_of``).
        """
        try:  # on every event while flood control is on: no context manager
            return await self.store.take_token(f"bucket:{sender}", rate=rate, burst=burst)
        except SharedStateUnavailable as exc:
            raise _unavailable(exc) from None

    # -- slow mode --------------------------------------------------------------------------

    async def slow_mode(self) -> dict[str, float]:
        """The per-room slow-mode delays."""
        async with self._reaching():
            delays = await self.store.hgetall("slow-mode")
        return {room: float(seconds) for room, seconds in delays.items()}

    async def slow_mode_delay(self, room: str) -> float | None:
        """The delay of ``room``, or None when it has none of its own."""
        try:  # on every message to a room: no context manager
            seconds = await self.store.hget("slow-mode", room)
        except SharedStateUnavailable as exc:
            raise _unavailable(exc) from None
        return None if seconds is None else float(seconds)

    def slow_mode_delay_now(self, room: str) -> tuple[float | None] | None:
        """:meth:`slow_mode_delay` without waiting: ``(delay or None,)`` when the store has it
        at hand (``Store.hget_now``), None when it must be awaited."""
        found = self.store.hget_now("slow-mode", room)
        if found is None:
            return None
        seconds = found[0]
        return (None if seconds is None else float(seconds),)

    async def set_slow_mode(self, room: str, seconds: float) -> None:
        """Set the delay of ``room``."""
        self._keep = max(self._keep, seconds)
        async with self._reaching():
            await self.store.hset("slow-mode", {room: float(seconds)})

    async def seed_slow_mode(self, rooms: dict[str, float]) -> None:
        """Set the delays of ``rooms`` that have none yet (config's ``slow_mode.rooms`` at
        start-up: a delay set at run time in a shared store is never overwritten)."""
        if not rooms:
            return
        self._keep = max(self._keep, *rooms.values())
        async with self._reaching():
            await self.store.hset(
                "slow-mode", {r: float(s) for r, s in rooms.items()}, only_new=True
            )

    async def slow_mode_wait(self, sender: str, room: str, seconds: float) -> float:
        """Seconds ``sender`` must still wait before its next message in ``room`` (0 = none)."""
        self._keep = max(self._keep, seconds)
        async with self._reaching():
            last = await self.store.hget(f"sent:{sender}", room)
            if last is None:
                return 0.0
            now = await self.store.time()
        return max(0.0, float(last) + seconds - now)

    async def message_sent(self, sender: str, room: str) -> None:
        """Record that ``sender`` just sent a message to ``room`` (for slow mode)."""
        async with self._reaching():
            now = await self.store.time()
            await self.store.hset(f"sent:{sender}", {room: now}, ttl=math.ceil(self._keep))

    async def forget_connection(self, sid: str) -> None:
        """Drop what is kept about a closed connection: the bucket and slow-mode times of
        sender ``connection:<sid>`` and its mutes by connection. (An identity's bucket and
        times are kept: they lapse by themselves, and a reconnect must not reset them.)"""
        sender = f"connection:{sid}"
        async with self._reaching():
            await self.store.delete(
                f"bucket:{sender}", f"sent:{sender}", self._sanction_key("mute", "connection", sid)
            )

    # -- the log ----------------------------------------------------------------------------

    async def append_log(self, entry: LogEntry) -> None:
        """Count a decision and add it to the log (the oldest fall off past the configured
        size)."""
        if self.decisions is not None:
            self.decisions.inc(entry.rule, entry.action)
        if self.log_size <= 0:
            return
        try:
            await self.store.append("log", entry.model_dump(mode="json"), keep=self.log_size)
        except SharedStateUnavailable as exc:  # the decision stands; only its record is lost
            log.warning(
                "moderation log entry lost (%s): %s %s %s",
                exc.message,
                entry.rule,
                entry.action,
                entry.reason,
            )

    async def log(self, limit: int) -> list[LogEntry]:
        """The newest ``limit`` log entries, oldest first."""
        if limit <= 0:
            return []
        async with self._reaching():
            raws = await self.store.tail("log", limit)
        entries = []
        for raw in raws:
            try:
                entries.append(LogEntry.model_validate(raw))
            except ValidationError:
                log.warning("moderation store: ignoring a malformed log entry: %.200r", raw)
        return entries
