"""The moderation state several nodes share: :class:`RedisStore` (a :class:`ModerationStore` in
Redis) and :class:`BanNotices` (tells every node about a new ban, so that each closes its own
connections the ban covers).

Every key sits under ``bus.backend.key("moderation")`` (``plugbus:moderation:...``):

========================================  ===========================================================
``…:sanction:{type}:{kind}:{value}``      one ban or mute (JSON); a Redis TTL ends it at ``expires_at``
``…:sanctions:{type}``                    hash: sanction id -> its key (for listing and lifting by id)
``…:bucket:{sender}``                     flood bucket (hash ``tokens``, ``at``); lapses once full again
``…:slow-mode``                           hash: room -> delay in seconds
``…:sent:{sender}``                       hash: room -> when ``sender`` last wrote there (Redis time)
``…:log``                                 the decision log (JSON entries), capped at ``log_size``
``…:bans`` (a pub/sub channel)            new bans, for :class:`BanNotices`
========================================  ===========================================================

Times that several nodes compare (buckets, slow mode) are Redis's own clock (``TIME`` inside a
script), so nodes whose clocks disagree still agree on waits; each read-and-update is one Lua
script, so two nodes never spend the same token. A command that cannot reach Redis raises
:class:`StoreUnavailable` (the caller is refused with a 503 / ``moderation_unavailable``);
redis-py reconnects on the next command, so the store works again as soon as Redis is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from redis.exceptions import RedisError

from .settings import SanctionType, TargetKind
from .store import SENT_KEEP, LogEntry, Sanction, StoreUnavailable

log = logging.getLogger("plugbus.moderation")

#: Take one token (KEYS[1]: the bucket; ARGV: burst, rate) -> seconds to wait, as a string.
TAKE_TOKEN = """
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1])
local at = tonumber(b[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""

#: Slow-mode wait (KEYS[1]: the sender's times; ARGV: room, seconds) -> seconds, as a string.
SLOW_MODE_WAIT = """
local last = redis.call('HGET', KEYS[1], ARGV[1])
if not last then
  return '0'
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return string.format('%.6f', math.max(0, tonumber(last) + tonumber(ARGV[2]) - now))
"""

#: Start a room's clock (KEYS[1]: the sender's times; ARGV: room, seconds to keep them).
MESSAGE_SENT = """
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1], t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

#: Lift by id (KEYS: the sanction's key, the index; ARGV: id) -> the lifted JSON, or nil.
LIFT = """
redis.call('HDEL', KEYS[2], ARGV[1])
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['id'] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return raw
end
return false
"""

UNAVAILABLE = (
    "moderation is unavailable for a moment: its shared store (Redis) cannot be "
    "reached; try again shortly"
)


class RedisStore:
    """:class:`~plugins.moderation.store.ModerationStore` in Redis, shared by every node.

    :param redis: a connected ``redis.asyncio.Redis`` with ``decode_responses=True``.
    :param base: the key every key of this store starts with (``plugbus:moderation``).
    :param log_size: entries the log keeps (0 keeps none).
    """

    def __init__(self, redis: Any, base: str, log_size: int) -> None:
        self.redis = redis
        self.base = base
        self.log_size = log_size
        self._keep = SENT_KEEP
        self._down = False
        self._take_token = redis.register_script(TAKE_TOKEN)
        self._slow_mode_wait = redis.register_script(SLOW_MODE_WAIT)
        self._message_sent = redis.register_script(MESSAGE_SENT)
        self._lift = redis.register_script(LIFT)

    # -- keys -------------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        """``base:part:part``."""
        return ":".join((self.base, *parts))

    def _sanction_key(self, type: str, kind: str, value: str) -> str:
        return self.key("sanction", type, kind, value)

    def _index(self, type: str) -> str:
        return self.key("sanctions", type)

    # -- errors -----------------------------------------------------------------------------

    @asynccontextmanager
    async def _reaching(self, what: str) -> AsyncIterator[None]:
        """Turn a Redis failure into :class:`StoreUnavailable`. The first failure of an outage
        is logged as a warning (the rest at debug level), and the first success after it."""
        try:
            yield
        except (RedisError, OSError) as exc:
            level = logging.DEBUG if self._down else logging.WARNING
            self._down = True
            log.log(
                level,
                "moderation store: cannot %s: %s: %s; refusing what needs it until "
                "Redis answers again",
                what,
                type(exc).__name__,
                exc,
            )
            raise StoreUnavailable(UNAVAILABLE, details={"store": "redis"}) from None
        if self._down:
            self._down = False
            log.warning("moderation store: Redis answers again")

    @staticmethod
    def _parse(raw: str | None) -> Sanction | None:
        if raw is None:
            return None
        try:
            return Sanction.model_validate_json(raw)
        except ValidationError:
            log.warning("moderation store: ignoring a malformed sanction in Redis: %.200s", raw)
            return None

    # -- sanctions --------------------------------------------------------------------------

    async def add_sanction(self, sanction: Sanction) -> Sanction | None:
        key = self._sanction_key(sanction.type, sanction.kind, sanction.value)
        expires = (
            math.ceil(sanction.expires_at.timestamp() * 1000)
            if sanction.expires_at is not None
            else None
        )
        async with self._reaching("store a sanction"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(key, sanction.model_dump_json(), pxat=expires, get=True)
                pipe.hset(self._index(sanction.type), sanction.id, key)
                old_raw, _ = await pipe.execute()
            old = self._parse(old_raw)
            if old is not None and old.id != sanction.id:
                await self.redis.hdel(self._index(sanction.type), old.id)
        return old

    async def lift_sanction(self, type: SanctionType, id: str) -> Sanction | None:
        index = self._index(type)
        async with self._reaching("lift a sanction"):
            key = await self.redis.hget(index, id)
            if key is None:
                return None
            raw = await self._lift(keys=[key, index], args=[id])
        sanction = self._parse(raw)
        return None if sanction is None or sanction.expired(datetime.now(UTC)) else sanction

    async def sanctions(self, type: SanctionType) -> list[Sanction]:
        index = self._index(type)
        async with self._reaching("list sanctions"):
            by_id: dict[str, str] = await self.redis.hgetall(index)
            if not by_id:
                return []
            ids = list(by_id)
            raws = await self.redis.mget([by_id[i] for i in ids])
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
                await self.redis.hdel(index, *stale)
        return sorted(found, key=lambda s: s.created_at)

    async def find_sanction(
        self, type: SanctionType, targets: Iterable[tuple[TargetKind, str]]
    ) -> Sanction | None:
        keys = [self._sanction_key(type, kind, value) for kind, value in targets]
        if not keys:
            return None
        async with self._reaching(f"look up {type}s"):
            raws = await self.redis.mget(keys)
        now = datetime.now(UTC)
        for raw in raws:
            sanction = self._parse(raw)
            if sanction is not None and not sanction.expired(now):
                return sanction
        return None

    # -- flood ------------------------------------------------------------------------------

    async def take_token(self, sender: str, burst: int, rate: float) -> float:
        async with self._reaching("take a flood token"):
            wait = await self._take_token(
                keys=[self.key("bucket", sender)], args=[burst, repr(float(rate))]
            )
        return float(wait)

    # -- slow mode --------------------------------------------------------------------------

    async def slow_mode(self) -> dict[str, float]:
        async with self._reaching("read slow-mode delays"):
            delays: dict[str, str] = await self.redis.hgetall(self.key("slow-mode"))
        return {room: float(seconds) for room, seconds in delays.items()}

    async def slow_mode_delay(self, room: str) -> float | None:
        async with self._reaching("read a slow-mode delay"):
            seconds = await self.redis.hget(self.key("slow-mode"), room)
        return None if seconds is None else float(seconds)

    async def set_slow_mode(self, room: str, seconds: float) -> None:
        self._keep = max(self._keep, seconds)
        async with self._reaching("set a slow-mode delay"):
            await self.redis.hset(self.key("slow-mode"), room, repr(float(seconds)))

    async def seed_slow_mode(self, rooms: dict[str, float]) -> None:
        if not rooms:
            return
        async with (
            self._reaching("seed slow-mode delays"),
            self.redis.pipeline(transaction=True) as pipe,
        ):
            for room, seconds in rooms.items():
                self._keep = max(self._keep, seconds)
                pipe.hsetnx(self.key("slow-mode"), room, repr(float(seconds)))
            await pipe.execute()

    async def slow_mode_wait(self, sender: str, room: str, seconds: float) -> float:
        self._keep = max(self._keep, seconds)
        async with self._reaching("read slow-mode times"):
            wait = await self._slow_mode_wait(
                keys=[self.key("sent", sender)], args=[room, repr(float(seconds))]
            )
        return float(wait)

    async def message_sent(self, sender: str, room: str) -> None:
        async with self._reaching("record a slow-mode time"):
            await self._message_sent(
                keys=[self.key("sent", sender)], args=[room, math.ceil(self._keep)]
            )

    async def forget_connection(self, sid: str) -> None:
        sender = f"connection:{sid}"
        async with self._reaching("forget a connection"):
            await self.redis.delete(
                self.key("bucket", sender),
                self.key("sent", sender),
                self._sanction_key("mute", "connection", sid),
            )

    # -- the log ----------------------------------------------------------------------------

    async def append_log(self, entry: LogEntry) -> None:
        if self.log_size <= 0:
            return
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(self.key("log"), entry.model_dump_json())
                pipe.ltrim(self.key("log"), -self.log_size, -1)
                await pipe.execute()
        except (RedisError, OSError) as exc:  # the decision stands; only its record is lost
            log.warning(
                "moderation log entry lost (Redis unreachable: %s): %s %s %s",
                exc,
                entry.rule,
                entry.action,
                entry.reason,
            )

    async def log(self, limit: int) -> list[LogEntry]:
        if limit <= 0:
            return []
        async with self._reaching("read the log"):
            raws = await self.redis.lrange(self.key("log"), -limit, -1)
        entries = []
        for raw in raws:
            try:
                entries.append(LogEntry.model_validate_json(raw))
            except ValidationError:
                log.warning(
                    "moderation store: ignoring a malformed log entry in Redis: %.200s", raw
                )
        return entries


class BanNotices:
    """Tells every node about a new ban, so that each closes its own connections it covers.

    A ban made on one node is in the shared store at once (refusing reconnects and events
    everywhere); this closes the banned clients' *live* connections on the other nodes too.
    Notices published while a node cannot reach Redis are lost to it, but the ban still holds.

    :param backend: ``bus.backend``; the listener stops once its Redis client is closed.
    :param channel: the pub/sub channel (``plugbus:moderation:bans``).
    :param on_ban: called with each ban another node made.
    """

    #: Seconds between two attempts to resubscribe after Redis went away.
    RETRY = 1.0

    def __init__(
        self, backend: Any, channel: str, on_ban: Callable[[Sanction], Awaitable[object]]
    ) -> None:
        self.backend = backend
        self.channel = channel
        self.on_ban = on_ban
        self._task: asyncio.Task[None] | None = None

    async def publish(self, ban: Sanction) -> None:
        """Tell the other nodes (a failure is logged: the ban is stored and holds anyway)."""
        message = json.dumps({"node": self.backend.node_id, "ban": ban.model_dump(mode="json")})
        try:
            await self.backend.redis.publish(self.channel, message)
        except (RedisError, OSError) as exc:
            log.warning(
                "could not tell the other nodes about ban %s (%s); its connections there "
                "stay open until they send an event or reconnect",
                ban.id,
                exc,
            )

    async def start(self) -> None:
        """Subscribe (before returning, so no ban made after start-up is missed), then listen
        in a background task that resubscribes after a Redis outage."""
        client = self.backend.redis
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.channel)
        self._task = asyncio.create_task(self._run(client, pubsub), name="plugbus-moderation-bans")

    async def _run(self, client: Any, pubsub: Any) -> None:
        while self.backend.redis is client:
            try:
                if pubsub is None:
                    pubsub = client.pubsub(ignore_subscribe_messages=True)
                    await pubsub.subscribe(self.channel)
                    log.info("ban notices: subscribed again to %s", self.channel)
                while self.backend.redis is client:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        await self._handle(message.get("data"))
            except (RedisError, OSError) as exc:
                if self.backend.redis is not client:
                    break
                log.warning("ban notices: lost Redis (%s); resubscribing", exc)
                await self._close(pubsub)
                pubsub = None
                await asyncio.sleep(self.RETRY)
        await self._close(pubsub)

    @staticmethod
    async def _close(pubsub: Any) -> None:
        if pubsub is not None:
            with suppress(Exception):
                await pubsub.aclose()

    async def _handle(self, data: Any) -> None:
        try:
            notice = json.loads(data)
            if notice.get("node") == self.backend.node_id:
                return  # this node closed its own connections when it made the ban
            ban = Sanction.model_validate(notice["ban"])
        except (TypeError, ValueError, KeyError, ValidationError):
            log.warning("ban notices: ignoring a malformed notice: %.200r", data)
            return
        try:
            await self.on_ban(ban)
        except Exception:
            log.exception("ban notices: closing the connections of ban %s failed", ban.id)
