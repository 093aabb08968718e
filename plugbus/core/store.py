"""Shared state for plugins: a small key-value store, namespaced per plugin, with pub/sub.

``bus.store("polls")`` hands a plugin its :class:`Store`. With ``server.backend: memory`` it
lives in this process (:class:`MemoryStore`); with a Redis URL every node reads and writes the
same keys in that Redis (:class:`RedisStore`), so state a plugin keeps there is the same on
every node. Both implement one contract, tested with the same tests:

* values are JSON (what ``json.dumps`` takes) and come back as JSON decodes them;
* keys are strings, kept under ``plugbus:<store name>:<key>`` in Redis;
* expiry (``ttl``, seconds) is the store's own clock: Redis's for a shared store;
* every operation is atomic on its own (a counter never loses an increment between nodes);
* ``publish`` reaches every subscriber of the channel on every node, this one included.

A shared store that cannot reach Redis raises :class:`~plugbus.StoreUnavailable` (503,
``store_unavailable``); redis-py reconnects on the next command. Every node listens to all
its channels on one pub/sub connection (:class:`Hub`), which subscribes again by itself after
Redis came back.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .errors import StoreUnavailable
from .ratelimit import TokenBucket

if TYPE_CHECKING:
    from .backend import Backend

log = logging.getLogger("plugbus.store")

#: A subscriber: called with each message published on its channel (may be async).
Handler = Callable[[Any], Awaitable[object] | object]


class Subscription(Protocol):
    """A subscription made with :meth:`Store.subscribe`."""

    @property
    def channel(self) -> str:
        """The channel, as the plugin named it."""
        ...

    async def close(self) -> None:
        """Stop receiving (calling it twice is harmless)."""
        ...


class Batch(Protocol):
    """Writes collected by :meth:`Store.batch` and made together on leaving the block: one
    round trip to Redis. Each method is the store method of the same name, without a result."""

    def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        """As :meth:`Store.set`."""
        ...

    def delete(self, *keys: str) -> None:
        """As :meth:`Store.delete`."""
        ...

    def hset(self, key: str, mapping: Mapping[str, Any], *, ttl: float | None = None) -> None:
        """As :meth:`Store.hset`."""
        ...

    def hdel(self, key: str, *fields: str) -> None:
        """As :meth:`Store.hdel`."""
        ...

    def sadd(self, key: str, *members: str, ttl: float | None = None) -> None:
        """As :meth:`Store.sadd`."""
        ...

    def srem(self, key: str, *members: str) -> None:
        """As :meth:`Store.srem`."""
        ...

    def expire(self, key: str, ttl: float) -> None:
        """As :meth:`Store.expire`."""
        ...


class Store(Protocol):
    """A plugin's own keys: in this process, or in the Redis every node shares.

    Get one with ``bus.store(name)`` (use your plugin's name). Values are JSON; ``ttl`` is in
    seconds. Operations on a key of another kind (``hget`` on a plain value, say) raise
    ``TypeError``. A shared store raises :class:`~plugbus.StoreUnavailable` while Redis cannot
    be reached.
    """

    @property
    def name(self) -> str:
        """The store's name (its key prefix: ``plugbus:<name>:``)."""
        ...

    @property
    def shared(self) -> bool:
        """True when every node sees the same keys (a Redis backend)."""
        ...

    # -- values -----------------------------------------------------------------------------

    async def get(self, key: str) -> Any:
        """The value of ``key``, or None when there is none (or it expired)."""
        ...

    async def get_many(self, keys: Iterable[str]) -> list[Any]:
        """The values of ``keys`` in order (None for each missing one), in one round trip."""
        ...

    def get_many_now(self, keys: Iterable[str]) -> list[Any] | None:
        """:meth:`get_many` without waiting, when this node has the values at hand: always
        in a memory store; in a Redis store, keys under a ``cached`` prefix once the node's
        copy holds every one of them. None when it cannot answer at once (then await
        :meth:`get_many`). For state read on every event: no coroutine, no round trip."""
        ...

    async def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Set ``key`` to ``value``, expiring after ``ttl`` seconds (never when None)."""
        ...

    async def add(self, key: str, value: Any, *, ttl: float | None = None) -> bool:
        """Set ``key`` only when it has no value; True when it was set (a lock, a claim)."""
        ...

    async def exchange(self, key: str, value: Any, *, ttl: float | None = None) -> Any:
        """Set ``key`` and return the value it replaced (None when none), atomically."""
        ...

    async def delete(self, *keys: str) -> int:
        """Delete ``keys`` of any kind; how many existed."""
        ...

    async def delete_if(self, key: str, expected: Any) -> bool:
        """Delete ``key`` only while its value still equals ``expected`` (compare-and-delete);
        True when deleted."""
        ...

    async def expire(self, key: str, ttl: float) -> bool:
        """Let ``key`` (of any kind) expire ``ttl`` seconds from now; False when it does not exist."""
        ...

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Add ``amount`` to the integer at ``key`` (0 when missing) and return the new value,
        atomically across nodes. ``ttl`` applies when the counter has no expiry yet (a
        counter per time window); ``get`` reads the counter as an int."""
        ...

    # -- hashes -----------------------------------------------------------------------------

    async def hget(self, key: str, field: str) -> Any:
        """The value of ``field`` in hash ``key``, or None."""
        ...

    def hget_now(self, key: str, field: str) -> tuple[Any] | None:
        """:meth:`hget` without waiting, as :meth:`get_many_now`: ``(value,)`` when this node
        has it at hand, None when it must be awaited."""
        ...

    def version_now(self) -> int | None:
        """A number that changes whenever a key that :meth:`get_many_now` or :meth:`hget_now`
        may answer is written (by any store of this name; in Redis, by any node): while it
        stays the same, what they answered still holds, but for keys that expired meanwhile.
        None when the store answers nothing at once (see :meth:`get_many_now`)."""
        ...

    async def hgetall(self, key: str) -> dict[str, Any]:
        """Every field of hash ``key`` (``{}`` when none)."""
        ...

    async def hset(
        self,
        key: str,
        mapping: Mapping[str, Any],
        *,
        ttl: float | None = None,
        only_new: bool = False,
    ) -> int:
        """Set fields of hash ``key``; with ``only_new`` only fields it does not have yet.
        ``ttl`` (re)sets the whole hash's expiry. Returns how many fields were new."""
        ...

    async def hdel(self, key: str, *fields: str) -> int:
        """Remove ``fields`` from hash ``key``; how many were there."""
        ...

    # -- sets -------------------------------------------------------------------------------

    async def sadd(self, key: str, *members: str, ttl: float | None = None) -> int:
        """Add string ``members`` to set ``key``; how many were new. ``ttl`` as for hset."""
        ...

    async def srem(self, key: str, *members: str) -> int:
        """Remove ``members`` from set ``key``; how many were there."""
        ...

    async def smembers(self, key: str) -> builtins.set[str]:
        """The members of set ``key`` (empty when none)."""
        ...

    # -- lists ------------------------------------------------------------------------------

    async def append(self, key: str, value: Any, *, keep: int | None = None) -> int:
        """Append ``value`` to list ``key``, keeping only the newest ``keep`` items (all when
        None); the list's length afterwards."""
        ...

    async def tail(self, key: str, count: int) -> list[Any]:
        """The newest ``count`` items of list ``key``, oldest first."""
        ...

    # -- rates, time, pub/sub, batches --------------------------------------------------------

    async def take_token(self, key: str, *, rate: float, burst: float) -> float:
        """Take one token from the token bucket at ``key`` (``burst`` tokens at most, refilled
        at ``rate`` per second): 0 when taken, else the seconds until one will be there. A
        bucket that is full again expires by itself."""
        ...

    async def time(self) -> float:
        """The store's clock, in seconds since the epoch: Redis's for a shared store, so that
        nodes whose clocks disagree still agree on durations."""
        ...

    async def publish(self, channel: str, message: Any) -> None:
        """Send ``message`` (JSON) to every subscriber of ``channel`` on every node, this
        one included. Nothing is kept: a node not subscribed at that moment misses it."""
        ...

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        """Call ``handler(message)`` for every message published on ``channel`` from now on
        (the subscription holds when this returns). Handlers run as tasks; an exception is
        logged. Subscriptions end when the server stops."""
        ...

    def batch(self) -> contextlib.AbstractAsyncContextManager[Batch]:
        """``async with store.batch() as b:`` — collect writes, made on leaving the block (in
        one round trip with Redis; not atomic as a whole)."""
        ...


def encode(value: Any) -> str:
    """A value as the store keeps it (JSON text)."""
    return json.dumps(value, separators=(",", ":"))


def decode(raw: str | bytes | None) -> Any:
    """A stored value back (None stays None)."""
    return None if raw is None else json.loads(raw)


# -- pub/sub: one listener per node -----------------------------------------------------------


class _Subscription:
    __slots__ = ("_hub", "channel", "full", "handler")

    def __init__(self, hub: Hub, channel: str, full: str, handler: Handler) -> None:
        self._hub = hub
        self.channel = channel
        self.full = full
        self.handler = handler

    async def close(self) -> None:
        await self._hub.unsubscribe(self)


class Hub:
    """The node's one pub/sub listener: every channel any store subscribed to, one connection.

    In memory, published messages go through a queue to the same delivery code.
    """

    #: Seconds between attempts to subscribe again after Redis went away.
    RETRY = 0.5

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._subscriptions: dict[str, list[_Subscription]] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        self._queue: asyncio.Queue[tuple[str, str]] | None = None
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[Any]] = set()
        self._have_channels: asyncio.Event | None = None

    async def start(self) -> None:
        """Start listening."""
        self._have_channels = asyncio.Event()
        if self._backend.shared:
            self._task = asyncio.create_task(self._listen(), name="plugbus-pubsub")
        else:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._drain(), name="plugbus-pubsub")

    async def stop(self) -> None:
        """Stop listening; every subscription ends."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._running):
            task.cancel()
        self._subscriptions.clear()
        self._confirmed.clear()

    async def publish(self, full: str, message: Any) -> None:
        """Publish on channel ``full`` (the whole Redis name)."""
        text = encode(message)
        if self._queue is not None:
            self._queue.put_nowait((full, text))
            return
        await self._backend.redis_call("publish a message", lambda r: r.publish(full, text))

    async def subscribe(self, channel: str, full: str, handler: Handler) -> _Subscription:
        """Add ``handler`` on ``full``; returns once Redis confirmed the subscription.

        :raises StoreUnavailable: Redis did not confirm it within 5 seconds.
        """
        if self._task is None:
            raise RuntimeError("subscribe after the server started (in plugbus_startup or later)")
        subscription = _Subscription(self, channel, full, handler)
        first = full not in self._subscriptions
        self._subscriptions.setdefault(full, []).append(subscription)
        if first and self._queue is None:
            confirmed = self._confirmed[full] = asyncio.Event()
            assert self._have_channels is not None
            self._have_channels.set()
            if self._pubsub is not None:
                with contextlib.suppress(Exception):  # the listener subscribes again anyway
                    await self._pubsub.subscribe(full)
            try:
                await asyncio.wait_for(confirmed.wait(), 5)
            except TimeoutError:
                raise StoreUnavailable(
                    f"could not subscribe to {channel!r}: Redis did not confirm it",
                    details={"channel": channel},
                ) from None
        return subscription

    async def unsubscribe(self, subscription: _Subscription) -> None:
        """Remove one subscription (and the Redis subscription with the channel's last one)."""
        subscriptions = self._subscriptions.get(subscription.full, [])
        if subscription in subscriptions:
            subscriptions.remove(subscription)
        if not subscriptions and self._subscriptions.pop(subscription.full, None) is not None:
            self._confirmed.pop(subscription.full, None)
            if self._pubsub is not None:
                with contextlib.suppress(Exception):
                    await self._pubsub.unsubscribe(subscription.full)

    def _deliver(self, full: str, text: Any) -> None:
        try:
            message = decode(text)
        except ValueError:
            log.warning("pub/sub: ignoring a message that is not JSON on %s: %.200r", full, text)
            return
        for subscription in list(self._subscriptions.get(full, ())):
            task = asyncio.create_task(self._run(subscription, message))
            self._running.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._running.discard)

    @staticmethod
    async def _run(subscription: _Subscription, message: Any) -> None:
        try:
            result = subscription.handler(message)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                await result
        except Exception:
            log.exception("pub/sub: a handler of %r failed", subscription.channel)

    async def _drain(self) -> None:
        assert self._queue is not None
        while True:
            full, text = await self._queue.get()
            self._deliver(full, text)

    async def _listen(self) -> None:
        assert self._have_channels is not None
        while True:  # survive Redis restarts: subscribe everything again after an error
            await self._have_channels.wait()
            client = self._backend.redis_client()
            pubsub = client.pubsub()
            try:
                channels = list(self._subscriptions)
                if channels:
                    await pubsub.subscribe(*channels)
                self._pubsub = pubsub
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    kind, channel = message["type"], message["channel"]
                    if kind == "message":
                        self._deliver(channel, message["data"])
                    elif kind == "subscribe":
                        confirmed = self._confirmed.get(channel)
                        if confirmed is not None:
                            confirmed.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pub/sub connection lost (%s); subscribing again", exc)
                await asyncio.sleep(self.RETRY)
            finally:
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


# -- the memory store -------------------------------------------------------------------------


class _Entry:
    __slots__ = ("expires", "kind", "value")

    def __init__(self, kind: str, value: Any, expires: float | None = None) -> None:
        self.kind = kind
        self.value = value
        self.expires = expires


class _MemoryBatch:
    def __init__(self) -> None:
        self.ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        self.ops.append(("set", (key, value), {"ttl": ttl}))

    def delete(self, *keys: str) -> None:
        self.ops.append(("delete", keys, {}))

    def hset(self, key: str, mapping: Mapping[str, Any], *, ttl: float | None = None) -> None:
        self.ops.append(("hset", (key, dict(mapping)), {"ttl": ttl}))

    def hdel(self, key: str, *fields: str) -> None:
        self.ops.append(("hdel", (key, *fields), {}))

    def sadd(self, key: str, *members: str, ttl: float | None = None) -> None:
        self.ops.append(("sadd", (key, *members), {"ttl": ttl}))

    def srem(self, key: str, *members: str) -> None:
        self.ops.append(("srem", (key, *members), {}))

    def expire(self, key: str, ttl: float) -> None:
        self.ops.append(("expire", (key, ttl), {}))


class MemoryStore:
    """:class:`Store` in this process's memory (one node; lost on restart).

    Stores of one name share their keys (``bus.store("x")`` twice is the same data).
    """

    #: Seconds between two sweeps of expired keys.
    SWEEP_EVERY = 60.0

    def __init__(
        self,
        backend: Backend,
        name: str,
        data: dict[str, _Entry],
        changes: list[int] | None = None,
    ) -> None:
        self._backend = backend
        self._name = name
        self._prefix = backend.key(name) + ":"
        self._data = data
        #: writes to this name's keys so far (one counter for every store of the name)
        self._changes = changes if changes is not None else [0]
        self._swept = time.monotonic()

    @property
    def name(self) -> str:
        return self._name

    @property
    def shared(self) -> bool:
        return False

    def version_now(self) -> int:
        # every write method counts itself first, whether or not it changes anything
        return self._changes[0]

    def _live(self, key: str, kind: str) -> _Entry | None:
        full = self._prefix + key
        entry = self._data.get(full)
        if entry is None:
            return None
        if entry.expires is not None and entry.expires <= time.monotonic():
            del self._data[full]
            return None
        if entry.kind != kind:
            raise TypeError(f"{key!r} holds a {entry.kind}, not a {kind}")
        return entry

    def _put(self, key: str, entry: _Entry) -> None:
        now = time.monotonic()
        if now - self._swept >= self.SWEEP_EVERY:
            self._swept = now
            for full in [k for k, e in self._data.items() if e.expires and e.expires <= now]:
                del self._data[full]
        self._data[self._prefix + key] = entry

    @staticmethod
    def _expiry(ttl: float | None) -> float | None:
        return None if ttl is None else time.monotonic() + ttl

    def _container(self, key: str, kind: str, factory: Callable[[], Any]) -> _Entry:
        entry = self._live(key, kind)
        if entry is None:
            entry = _Entry(kind, factory())
            self._put(key, entry)
        return entry

    async def get(self, key: str) -> Any:
        entry = self._live(key, "value")
        return None if entry is None else decode(entry.value)

    async def get_many(self, keys: Iterable[str]) -> list[Any]:
        return self.get_many_now(keys)

    def get_many_now(self, keys: Iterable[str]) -> list[Any]:
        # on every event (moderation's ban and mute lookups): the common miss costs a dict get
        data, prefix = self._data, self._prefix
        out: list[Any] = []
        for key in keys:
            if prefix + key not in data:
                out.append(None)
                continue
            entry = self._live(key, "value")
            out.append(None if entry is None else decode(entry.value))
        return out

    async def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        self._changes[0] += 1
        self._live(key, "value")  # a key of another kind is refused, as Redis's SET would not
        self._put(key, _Entry("value", encode(value), self._expiry(ttl)))

    async def add(self, key: str, value: Any, *, ttl: float | None = None) -> bool:
        if self._live(key, "value") is not None:
            return False
        await self.set(key, value, ttl=ttl)
        return True

    async def exchange(self, key: str, value: Any, *, ttl: float | None = None) -> Any:
        old = await self.get(key)
        await self.set(key, value, ttl=ttl)
        return old

    async def delete(self, *keys: str) -> int:
        self._changes[0] += 1
        count = 0
        for key in keys:
            full = self._prefix + key
            entry = self._data.pop(full, None)
            if entry is not None and not (entry.expires and entry.expires <= time.monotonic()):
                count += 1
        return count

    async def delete_if(self, key: str, expected: Any) -> bool:
        self._changes[0] += 1
        entry = self._live(key, "value")
        if entry is None or entry.value != encode(expected):
            return False
        del self._data[self._prefix + key]
        return True

    async def expire(self, key: str, ttl: float) -> bool:
        self._changes[0] += 1
        entry = self._data.get(self._prefix + key)
        if entry is None or (entry.expires is not None and entry.expires <= time.monotonic()):
            return False
        entry.expires = time.monotonic() + ttl
        return True

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        self._changes[0] += 1
        entry = self._live(key, "value")
        if entry is None:
            entry = _Entry("value", "0")
            self._put(key, entry)
        value = decode(entry.value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{key!r} holds {value!r}, not an integer")
        value += amount
        entry.value = encode(value)
        if ttl is not None and entry.expires is None:
            entry.expires = time.monotonic() + ttl
        return value

    async def hget(self, key: str, field: str) -> Any:
        return self.hget_now(key, field)[0]

    def hget_now(self, key: str, field: str) -> tuple[Any]:
        entry = self._live(key, "hash")
        return (None if entry is None else decode(entry.value.get(field)),)

    async def hgetall(self, key: str) -> dict[str, Any]:
        entry = self._live(key, "hash")
        return {} if entry is None else {f: decode(v) for f, v in entry.value.items()}

    async def hset(
        self,
        key: str,
        mapping: Mapping[str, Any],
        *,
        ttl: float | None = None,
        only_new: bool = False,
    ) -> int:
        self._changes[0] += 1
        entry = self._container(key, "hash", dict)
        new = 0
        for field, value in mapping.items():
            if field not in entry.value:
                new += 1
            elif only_new:
                continue
            entry.value[field] = encode(value)
        if ttl is not None:
            entry.expires = time.monotonic() + ttl
        return new

    async def hdel(self, key: str, *fields: str) -> int:
        self._changes[0] += 1
        entry = self._live(key, "hash")
        if entry is None:
            return 0
        count = sum(entry.value.pop(f, None) is not None for f in fields)
        if not entry.value:
            del self._data[self._prefix + key]
        return count

    async def sadd(self, key: str, *members: str, ttl: float | None = None) -> int:
        self._changes[0] += 1
        entry = self._container(key, "set", set)
        before = len(entry.value)
        entry.value.update(members)
        if ttl is not None:
            entry.expires = time.monotonic() + ttl
        return len(entry.value) - before

    async def srem(self, key: str, *members: str) -> int:
        self._changes[0] += 1
        entry = self._live(key, "set")
        if entry is None:
            return 0
        before = len(entry.value)
        entry.value.difference_update(members)
        if not entry.value:
            del self._data[self._prefix + key]
        return before - len(entry.value)

    async def smembers(self, key: str) -> builtins.set[str]:
        entry = self._live(key, "set")
        return set() if entry is None else set(entry.value)

    async def append(self, key: str, value: Any, *, keep: int | None = None) -> int:
        self._changes[0] += 1
        entry = self._container(key, "list", list)
        entry.value.append(encode(value))
        if keep is not None:
            del entry.value[: max(0, len(entry.value) - keep)]
        length = len(entry.value)
        if not length:
            del self._data[self._prefix + key]
        return length

    async def tail(self, key: str, count: int) -> list[Any]:
        entry = self._live(key, "list")
        if entry is None or count <= 0:
            return []
        return [decode(v) for v in entry.value[-count:]]

    async def take_token(self, key: str, *, rate: float, burst: float) -> float:
        self._changes[0] += 1
        entry = self._live(key, "bucket")
        if entry is None:
            entry = _Entry("bucket", TokenBucket(rate, burst))
            self._put(key, entry)
        bucket: TokenBucket = entry.value
        bucket.rate, bucket.burst = rate, burst
        wait = bucket.take()
        entry.expires = bucket.full_at()
        return wait

    async def time(self) -> float:
        return time.time()

    async def publish(self, channel: str, message: Any) -> None:
        await self._backend.hub.publish(self._prefix + channel, message)

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        return await self._backend.hub.subscribe(channel, self._prefix + channel, handler)

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[Batch]:
        batch = _MemoryBatch()
        yield batch
        for method, args, kwargs in batch.ops:
            await getattr(self, method)(*args, **kwargs)


# -- the Redis store --------------------------------------------------------------------------

#: Take one token (KEYS[1]: the bucket; ARGV: burst, rate) -> seconds to wait, as a string.
#: The same arithmetic as :class:`~plugbus.core.ratelimit.TokenBucket`, on Redis's clock.
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
elseif rate > 0 then
  wait = (1 - tokens) / rate
else
  wait = -1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', now))
if rate > 0 then
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1)
end
return string.format('%.6f', wait)
"""

#: Delete KEYS[1] while its value is ARGV[1].
DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: Add ARGV[1] to the integer at KEYS[1]; give it ARGV[2] ms to live when it has no expiry.
INCR = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if ttl > 0 and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return value
"""


def _ms(ttl: float) -> int:
    return max(1, round(ttl * 1000))


class _RedisBatch:
    """Writes recorded for one pipeline."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self.ops: list[Callable[[Any], object]] = []
        #: every key written (the cached ones are invalidated once the batch ran)
        self.keys: builtins.set[str] = set()

    def _full(self, key: str) -> str:
        full = self._store.full(key)
        self.keys.add(full)
        return full

    def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        full, text = self._full(key), encode(value)
        self.ops.append(lambda p: p.set(full, text, px=_ms(ttl) if ttl is not None else None))

    def delete(self, *keys: str) -> None:
        fulls = [self._full(k) for k in keys]
        if fulls:
            self.ops.append(lambda p: p.delete(*fulls))

    def hset(self, key: str, mapping: Mapping[str, Any], *, ttl: float | None = None) -> None:
        full, items = self._full(key), {f: encode(v) for f, v in mapping.items()}
        if items:
            self.ops.append(lambda p: p.hset(full, mapping=items))
        if ttl is not None:
            self.expire(key, ttl)

    def hdel(self, key: str, *fields: str) -> None:
        full = self._full(key)
        if fields:
            self.ops.append(lambda p: p.hdel(full, *fields))

    def sadd(self, key: str, *members: str, ttl: float | None = None) -> None:
        full = self._full(key)
        if members:
            self.ops.append(lambda p: p.sadd(full, *members))
        if ttl is not None:
            self.expire(key, ttl)

    def srem(self, key: str, *members: str) -> None:
        full = self._full(key)
        if members:
            self.ops.append(lambda p: p.srem(full, *members))

    def expire(self, key: str, ttl: float) -> None:
        full = self._full(key)
        self.ops.append(lambda p: p.pexpire(full, _ms(ttl)))


class NodeCache:
    """This node's copy of the shared keys that stores opened with ``cached`` prefixes read
    (one per backend, shared by its stores): read on every event, changed rarely.

    It is kept current through the history feed every node already follows (issue #16): a
    write to a cached key appends an invalidation entry to the feed and returns once every
    live node has read past it (:attr:`feed`), so a read after the write returns, on any
    node, sees the write. While this node does not follow the feed (Redis away, before the
    first read) nothing is kept and every read goes to Redis.
    """

    #: Entries kept at most; past it the copy starts again from empty.
    limit = 100_000

    def __init__(self) -> None:
        self._values: dict[Any, Any] = {}
        #: counts invalidations: a read that started before one never fills the copy
        self.generation = 0
        #: the feed that carries invalidations (``RedisHistory``); None: nothing is kept
        self.feed: Any = None

    @property
    def live(self) -> bool:
        """True while the copy may answer: the feed is followed."""
        feed = self.feed
        return feed is not None and feed.following.is_set()

    def get(self, key: Any) -> Any:
        """The kept value of ``key``, or :data:`MISSING`."""
        return self._values.get(key, MISSING) if self.live else MISSING

    def put(self, generation: int, items: Iterable[tuple[Any, Any]]) -> None:
        """Keep values read from Redis, unless an invalidation came after the read began."""
        if generation != self.generation or not self.live:
            return
        if len(self._values) >= self.limit:
            self._values.clear()
        self._values.update(items)

    def drop(self, keys: Iterable[str]) -> None:
        """Forget ``keys`` (full Redis keys; a hash's fields with it)."""
        self.generation += 1
        gone = set(keys)
        for key in [k for k in self._values if (k[0] if isinstance(k, tuple) else k) in gone]:
            del self._values[key]

    def clear(self) -> None:
        """Forget everything (the feed was lost: invalidations may be missed meanwhile)."""
        self.generation += 1
        self._values.clear()

    async def invalidate(self, keys: list[str]) -> None:
        """After a write to ``keys``: drop them here, then tell every node through the feed
        and wait until each live one has read it."""
        self.drop(keys)
        if self.feed is not None:
            await self.feed.invalidate(keys)


#: :meth:`NodeCache.get` of a key it does not hold (None is a value: a key that is not set).
MISSING: Any = object()


class RedisStore:
    """:class:`Store` in the Redis server ``server.backend`` names, shared by every node.

    Keys starting with one of ``cached`` are read from the node's :class:`NodeCache` (after
    the first read) and every write to one invalidates it on every node before it returns:
    for state read on every event and changed rarely. Redis's expiry of such a key is not
    seen until it is written again: their values carry their own expiry, or have none.
    """

    def __init__(self, backend: Backend, name: str, cached: tuple[str, ...] = ()) -> None:
        self._backend = backend
        self._name = name
        self._prefix = backend.key(name) + ":"
        self._cached = tuple(self._prefix + c for c in cached)
        self._cache: NodeCache = backend.cache

    def _is_cached(self, full: str) -> bool:
        return bool(self._cached) and full.startswith(self._cached)

    async def _invalidate(self, fulls: Iterable[str]) -> None:
        keys = [f for f in fulls if self._is_cached(f)]
        if keys:
            await self._cache.invalidate(keys)

    @property
    def name(self) -> str:
        return self._name

    @property
    def shared(self) -> bool:
        return True

    def full(self, key: str) -> str:
        """The Redis key of ``key``."""
        return self._prefix + key

    async def _do(self, what: str, call: Callable[[Any], Awaitable[Any]]) -> Any:
        return await self._backend.redis_call(what, call)

    async def _pipeline(
        self, what: str, build: Callable[[Any], None], *, transaction: bool = True
    ) -> list[Any]:
        async def run(redis: Any) -> list[Any]:
            async with redis.pipeline(transaction=transaction) as pipe:
                build(pipe)
                return await pipe.execute()  # type: ignore[no-any-return]

        return await self._do(what, run)  # type: ignore[no-any-return]

    async def get(self, key: str) -> Any:
        if self._is_cached(self.full(key)):
            return (await self.get_many([key]))[0]
        return decode(await self._do("read a value", lambda r: r.get(self.full(key))))

    async def get_many(self, keys: Iterable[str]) -> list[Any]:
        fulls = [self.full(k) for k in keys]
        if not fulls:
            return []
        cache = self._cache
        cached = self._cached and all(f.startswith(self._cached) for f in fulls)
        if cached:
            found = [cache.get(f) for f in fulls]
            if MISSING not in found:
                return found
        generation = cache.generation
        values = [decode(v) for v in await self._do("read values", lambda r: r.mget(fulls))]
        if cached:
            cache.put(generation, zip(fulls, values, strict=True))
        return values

    def version_now(self) -> int | None:
        # the node's copy counts invalidations (every node's writes to cached keys, and a
        # lost feed); while it is not live it answers nothing at once
        cache = self._cache
        return cache.generation if self._cached and cache.live else None

    def get_many_now(self, keys: Iterable[str]) -> list[Any] | None:
        # what get_many answers from the node's copy, without its coroutine
        cached = self._cached
        if not cached:
            return None
        get, prefix, out = self._cache.get, self._prefix, []
        for key in keys:
            full = prefix + key
            if not full.startswith(cached):
                return None
            value = get(full)
            if value is MISSING:
                return None
            out.append(value)
        return out

    async def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        text = encode(value)
        await self._do(
            "write a value",
            lambda r: r.set(self.full(key), text, px=_ms(ttl) if ttl is not None else None),
        )
        await self._invalidate([self.full(key)])

    async def add(self, key: str, value: Any, *, ttl: float | None = None) -> bool:
        text = encode(value)
        done = await self._do(
            "write a value",
            lambda r: r.set(
                self.full(key), text, nx=True, px=_ms(ttl) if ttl is not None else None
            ),
        )
        if done:
            await self._invalidate([self.full(key)])
        return bool(done)

    async def exchange(self, key: str, value: Any, *, ttl: float | None = None) -> Any:
        text = encode(value)
        old = await self._do(
            "write a value",
            lambda r: r.set(
                self.full(key), text, get=True, px=_ms(ttl) if ttl is not None else None
            ),
        )
        await self._invalidate([self.full(key)])
        return decode(old)

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        fulls = [self.full(k) for k in keys]
        cached = [f for f in fulls if self._is_cached(f)]
        if not cached:
            return int(await self._do("delete keys", lambda r: r.delete(*fulls)))
        # cached keys apart: a delete that found none of them (a connection that was never
        # muted closing) need not invalidate anything
        others = [f for f in fulls if not self._is_cached(f)]

        def build(pipe: Any) -> None:
            pipe.delete(*cached)
            if others:
                pipe.delete(*others)

        counts = await self._pipeline("delete keys", build)
        if counts[0]:
            await self._invalidate(cached)
        return sum(int(c) for c in counts)

    async def delete_if(self, key: str, expected: Any) -> bool:
        text = encode(expected)
        done = await self._do(
            "delete a value", lambda r: r.eval(DELETE_IF, 1, self.full(key), text)
        )
        if done:
            await self._invalidate([self.full(key)])
        return bool(done)

    async def expire(self, key: str, ttl: float) -> bool:
        done = await self._do("set an expiry", lambda r: r.pexpire(self.full(key), _ms(ttl)))
        if done:
            await self._invalidate([self.full(key)])
        return bool(done)

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        ms = _ms(ttl) if ttl is not None else 0
        value = await self._do("count", lambda r: r.eval(INCR, 1, self.full(key), int(amount), ms))
        await self._invalidate([self.full(key)])
        return int(value)

    def hget_now(self, key: str, field: str) -> tuple[Any] | None:
        # what hget answers from the node's copy, without its coroutine
        full = self._prefix + key
        if not self._is_cached(full):
            return None
        value = self._cache.get((full, field))
        return None if value is MISSING else (value,)

    async def hget(self, key: str, field: str) -> Any:
        full = self.full(key)
        cached = self._is_cached(full)
        if cached:
            value = self._cache.get((full, field))
            if value is not MISSING:
                return value
        generation = self._cache.generation
        value = decode(await self._do("read a hash", lambda r: r.hget(full, field)))
        if cached:
            self._cache.put(generation, [((full, field), value)])
        return value

    async def hgetall(self, key: str) -> dict[str, Any]:
        raw = await self._do("read a hash", lambda r: r.hgetall(self.full(key)))
        return {f: decode(v) for f, v in raw.items()}

    async def hset(
        self,
        key: str,
        mapping: Mapping[str, Any],
        *,
        ttl: float | None = None,
        only_new: bool = False,
    ) -> int:
        full = self.full(key)
        items = {f: encode(v) for f, v in mapping.items()}

        def build(pipe: Any) -> None:
            if only_new:
                for field, text in items.items():
                    pipe.hsetnx(full, field, text)
            elif items:
                pipe.hset(full, mapping=items)
            if ttl is not None:
                pipe.pexpire(full, _ms(ttl))

        results = await self._pipeline("write a hash", build)
        await self._invalidate([full])
        if only_new:
            return sum(bool(r) for r in results[: len(items)])
        return int(results[0]) if items else 0

    async def hdel(self, key: str, *fields: str) -> int:
        if not fields:
            return 0
        gone = int(await self._do("write a hash", lambda r: r.hdel(self.full(key), *fields)))
        if gone:
            await self._invalidate([self.full(key)])
        return gone

    async def sadd(self, key: str, *members: str, ttl: float | None = None) -> int:
        full = self.full(key)

        def build(pipe: Any) -> None:
            if members:
                pipe.sadd(full, *members)
            if ttl is not None:
                pipe.pexpire(full, _ms(ttl))

        results = await self._pipeline("write a set", build)
        return int(results[0]) if members else 0

    async def srem(self, key: str, *members: str) -> int:
        if not members:
            return 0
        return int(await self._do("write a set", lambda r: r.srem(self.full(key), *members)))

    async def smembers(self, key: str) -> builtins.set[str]:
        return set(await self._do("read a set", lambda r: r.smembers(self.full(key))))

    async def append(self, key: str, value: Any, *, keep: int | None = None) -> int:
        full, text = self.full(key), encode(value)

        def build(pipe: Any) -> None:
            pipe.rpush(full, text)
            if keep is not None:
                if keep > 0:
                    pipe.ltrim(full, -keep, -1)
                else:
                    pipe.delete(full)
            pipe.llen(full)

        return int((await self._pipeline("write a list", build))[-1])

    async def tail(self, key: str, count: int) -> list[Any]:
        if count <= 0:
            return []
        raws = await self._do("read a list", lambda r: r.lrange(self.full(key), -count, -1))
        return [decode(v) for v in raws]

    async def take_token(self, key: str, *, rate: float, burst: float) -> float:
        wait = await self._do(
            "take a token",
            lambda r: r.eval(TAKE_TOKEN, 1, self.full(key), repr(float(burst)), repr(float(rate))),
        )
        seconds = float(wait)
        return float("inf") if seconds < 0 else seconds

    async def time(self) -> float:
        seconds, micros = await self._do("read the clock", lambda r: r.time())
        return int(seconds) + int(micros) / 1_000_000

    async def publish(self, channel: str, message: Any) -> None:
        await self._backend.hub.publish(self.full(channel), message)

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        return await self._backend.hub.subscribe(channel, self.full(channel), handler)

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[Batch]:
        batch = _RedisBatch(self)
        yield batch
        if batch.ops:

            def build(pipe: Any) -> None:
                for op in batch.ops:
                    op(pipe)

            await self._pipeline("write a batch", build, transaction=False)
            await self._invalidate(batch.keys)
