"""Where shared state lives: this process (``memory``) or a Redis server several nodes share.

``server.backend`` in config.yaml is ``memory`` (one process, nothing to set up) or a Redis URL
(``redis://[:password@]host:port/db``, ``rediss://`` for TLS, ``redis+sentinel://`` for a
primary that Redis Sentinel watches: :mod:`plugbus.core.redis_url`). With Redis, events reach
every node through the history feed (:mod:`plugbus.core.history`), and plugins keep their state in a
:class:`~plugbus.core.store.Store` (:meth:`Backend.store`), whose keys and pub/sub channels
every node shares. The Redis client itself stays in core/: nothing outside it touches Redis.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .errors import ConfigError, StoreUnavailable
from .redis_url import RedisTarget, mask_url, parse_redis_url
from .store import Hub, MemoryStore, NodeCache, RedisStore, Store, _Entry

__all__ = ["Backend", "mask_url"]

log = logging.getLogger("plugbus.backend")

#: upper bounds, in seconds, of the round-trip buckets of :class:`RedisStats`
REDIS_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)


class RedisStats:
    """The backend's Redis calls (:meth:`Backend.redis_call`): how many, their total seconds
    and the calls per duration bucket (:data:`REDIS_BOUNDS`, then one for longer), and the
    failures by kind (``connection``, ``timeout``, ``response``, ``wrongtype``, ``other``).
    Plain numbers, read by the metrics exporter when it is scraped."""

    def __init__(self) -> None:
        self.calls = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(REDIS_BOUNDS) + 1)
        self.errors: dict[str, int] = {}

    def add(self, seconds: float) -> None:
        """Count one call that took ``seconds`` (failed ones included)."""
        self.calls += 1
        self.seconds += seconds
        self.buckets[bisect.bisect_left(REDIS_BOUNDS, seconds)] += 1

    def failed(self, kind: str) -> None:
        """Count one failed call."""
        self.errors[kind] = self.errors.get(kind, 0) + 1


#: Seconds to wait for a sentinel's answer: a sentinel that is down or silent is skipped for
#: the next one instead of holding up every reconnection to the primary.
SENTINEL_TIMEOUT = 1.0


def _error_kind(exc: Exception) -> str:
    """``timeout``, ``connection`` (refused, reset, closed) or ``other``."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeout

    if isinstance(exc, RedisTimeout | TimeoutError):
        return "timeout"
    if isinstance(exc, RedisConnectionError | OSError):
        return "connection"
    return "other"


class Backend:
    """The shared-state backend of one node.

    :ivar url: the Redis URL, or None for ``memory``.
    :ivar node_id: this node's id (random per process).
    :ivar prefix: the key prefix every plugbus key starts with.
    :ivar hub: the node's one pub/sub listener, for every store's channels.
    """

    #: Connections the node keeps to Redis at most; more callers wait their turn.
    max_connections = 50
    #: Seconds a Redis command (or a wait for a free connection) may take before it fails.
    command_timeout = 1.0

    def __init__(self, setting: str, prefix: str = "plugbus") -> None:
        self.url: str | None = None if setting == "memory" else setting
        #: the parsed URL (None for memory); config validation parsed it once already
        self.target: RedisTarget | None = None if self.url is None else parse_redis_url(self.url)
        self._sentinels: list[Any] = []
        self.node_id = secrets.token_hex(6)
        self.prefix = prefix
        self.hub = Hub(self)
        self._redis: Any = None
        self._memory: dict[str, _Entry] = {}
        self._local: dict[str, _Entry] = {}
        #: each memory store name's count of writes (``Store.version_now``)
        self._changes: dict[str, list[int]] = {}
        self._down = False
        #: round trips and failures of :meth:`redis_call`
        self.stats = RedisStats()
        self._purging: asyncio.Task[None] | None = None
        #: the node's copy of cached keys (see :class:`~plugbus.core.store.RedisStore`)
        self.cache = NodeCache()

    @property
    def shared(self) -> bool:
        """True when state is shared between nodes (a Redis URL is configured)."""
        return self.url is not None

    def key(self, *parts: str) -> str:
        """A namespaced key: ``plugbus:part:part``."""
        return ":".join((self.prefix, *parts))

    def store(self, name: str, *, local: bool = False, cached: Sequence[str] = ()) -> Store:
        """The store ``name``: in Redis when the backend is shared (unless ``local``), else in
        this process (stores of one name share their keys). Keys starting with one of
        ``cached`` are read from this node's copy, kept current on every node (Redis only)."""
        if self.shared and not local:
            return RedisStore(self, name, tuple(cached))
        changes = self._changes.setdefault(name, [0])
        return MemoryStore(self, name, self._local if self.shared else self._memory, changes)

    @property
    def reply_parser(self) -> str | None:
        """How redis-py parses Redis's replies: ``"hiredis"`` (the C parser, a dependency of
        plugbus) or ``"python"`` (redis-py's own, several times slower per reply: the cross-node
        path parses one ``XREAD`` reply per batch of events); None for ``memory``."""
        if self.url is None:
            return None
        from redis.utils import HIREDIS_AVAILABLE

        return "hiredis" if HIREDIS_AVAILABLE else "python"

    def report(self) -> dict[str, Any]:
        """The backend for ``/health``: its kind and, for Redis, the reply parser in use."""
        if self.target is None:
            return {"kind": "memory"}
        return {"kind": "redis", "url": self.target.masked, "reply_parser": self.reply_parser}

    def redis_client(self) -> Any:
        """The ``redis.asyncio.Redis`` client (core only).

        :raises RuntimeError: memory backend, or before :meth:`start`.
        """
        if self._redis is None:
            raise RuntimeError("no Redis client: memory backend, or the backend is not started")
        return self._redis

    async def redis_call(self, what: str, call: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run ``call(redis)``, turning a Redis outage into :class:`StoreUnavailable`. The first
        failure of an outage is logged as a warning (the rest at debug level), and the first
        success after it.

        :raises StoreUnavailable: Redis cannot be reached.
        :raises TypeError: the key holds another kind of value (Redis's WRONGTYPE).
        """
        from redis.exceptions import ConnectionError, RedisError, ResponseError

        started = time.perf_counter()
        try:
            try:
                result = await call(self.redis_client())
            except ConnectionError:
                # Once more on a fresh connection: the pool's connections to a Redis that
                # restarted are all dead, and a command on one never reached the new server.
                # (Not after a timeout: a command Redis is slow to answer may still run. The
                # history's append script never retries: it would store an event twice.)
                self._purge()
                result = await call(self.redis_client())
        except ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                self.stats.failed("wrongtype")
                raise TypeError(str(exc)) from None
            self.stats.failed("response")
            raise self._unavailable(what, exc) from None
        except (RedisError, OSError) as exc:
            self.stats.failed(_error_kind(exc))
            raise self._unavailable(what, exc) from None
        finally:
            self.stats.add(time.perf_counter() - started)
        if self._down:
            self._down = False
            log.warning("shared state: Redis answers again")
        return result

    def _unavailable(self, what: str, exc: Exception) -> StoreUnavailable:
        level = logging.DEBUG if self._down else logging.WARNING
        self._down = True
        self._purge()
        text = self.target.hide(str(exc)) if self.target is not None else str(exc)
        log.log(level, "shared state: cannot %s: %s: %s", what, type(exc).__name__, text)
        return StoreUnavailable(
            "shared state is unavailable for a moment: Redis cannot be reached; try again shortly",
            details={"store": "redis"},
        )

    def _purge(self) -> None:
        """Close the pool's idle connections after a failure: after a Redis restart every one
        of them is stale, and without retries (see :meth:`start`) each would fail one command
        more; new ones are made as needed."""
        if self._redis is None or self._purging is not None:
            return
        pool = self._redis.connection_pool

        async def purge() -> None:
            try:
                await pool.disconnect(inuse_connections=False)
            except Exception as exc:  # closing dead sockets: nothing to act on
                log.debug("closing idle Redis connections: %s", exc)
            finally:
                self._purging = None

        self._purging = asyncio.get_running_loop().create_task(purge())

    def new_redis_client(self, *, decode_responses: bool = True) -> Any:
        """A new ``redis.asyncio.Redis`` client for :attr:`target`, with its own blocking pool
        of up to :attr:`max_connections` (core, and the socket door's client manager, only).

        With ``redis+sentinel://`` the client's connections ask the sentinels where the
        primary is each time they connect, so a client follows a failover by itself: a
        connection to the old primary fails, and the next one reaches the promoted replica.
        """
        from redis import asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
        from redis.backoff import NoBackoff

        target = self.target
        if target is None:
            raise RuntimeError("no Redis client: memory backend")
        # A blocking pool: a burst of handshakes waits for a free connection instead of
        # failing (redis-py's default pool raises MaxConnectionsError past its limit).
        # Every wait is bounded (issue #18): a command Redis does not answer within
        # `command_timeout` fails, and is never sent twice (no retry: a re-sent append script
        # would store an event twice), so a publish is refused at once while Redis is away or
        # stalled, never left waiting for seconds.
        options: dict[str, Any] = {
            "decode_responses": decode_responses,
            "socket_connect_timeout": self.command_timeout,
            "socket_timeout": self.command_timeout,
            "health_check_interval": 10,
            "retry": Retry(NoBackoff(), 0),
            "max_connections": self.max_connections,
            "timeout": self.command_timeout,
        }
        if not target.sentinel:
            # the URL's own query options win over these defaults (redis-py's from_url)
            pool = aioredis.BlockingConnectionPool.from_url(target.url, **options)
            return aioredis.Redis(connection_pool=pool)

        class BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
            """redis-py's sentinel pool, waiting for a free connection like the plain one."""

        assert target.service is not None  # the sentinel form names it
        sentinels: Any = Sentinel  # untyped in redis-py
        sentinel = sentinels(
            list(target.sentinels),
            sentinel_kwargs={
                "socket_timeout": SENTINEL_TIMEOUT,
                "socket_connect_timeout": SENTINEL_TIMEOUT,
                # each sentinel asked once per discovery (the next one is the retry): redis-py's
                # default retries with back-off would hold start-up ~4 s per dead sentinel
                "retry": Retry(NoBackoff(), 0),
                **target.sentinel_options,
            },
        )
        self._sentinels.append(sentinel)
        return sentinel.master_for(
            target.service,
            connection_pool_class=BlockingSentinelPool,
            **(options | target.options),
        )

    async def start(self) -> None:
        """Connect to Redis and check it answers, then start the pub/sub listener.

        :raises ConfigError: unreachable or refusing Redis (or no sentinel knows the primary);
            the message names the URL with its password masked.
        """
        if self.target is not None:
            from redis.exceptions import RedisError

            client = self.new_redis_client()
            # bounded, so that a silent listener fails start-up quickly; with Sentinel, time
            # enough to ask each sentinel in turn (a dead one costs SENTINEL_TIMEOUT)
            bound = self.command_timeout * 2 + SENTINEL_TIMEOUT * len(self.target.sentinels)
            try:
                await asyncio.wait_for(client.ping(), bound)
            except (RedisError, OSError, TimeoutError) as exc:
                await client.aclose(close_connection_pool=True)
                await self._close_sentinels()
                reason = str(exc) or f"no answer within {bound:g} s"
                raise ConfigError(
                    f"server.backend: cannot reach Redis at {self.target.masked}: "
                    f"{self.target.hide(reason)}"
                ) from None
            self._redis = client
            log.info(
                "shared state in Redis at %s (node %s; replies parsed by %s)",
                self.target.masked,
                self.node_id,
                self.reply_parser,
            )
            if self.reply_parser != "hiredis":
                # said once, at start-up and in /health: no silent fallback to the slow path
                log.warning(
                    "hiredis is not installed (or older than redis-py accepts): Redis replies "
                    "are parsed in Python, which costs every node more CPU per event"
                )
        await self.hub.start()

    def blocking_client(self, timeout: float) -> Any:
        """A client of its own (one connection, outside the pool) whose commands may block for
        up to ``timeout`` seconds: the history feed's ``XREAD BLOCK`` (core only)."""
        from redis import asyncio as aioredis

        pool = self.redis_client().connection_pool
        kwargs = {**pool.connection_kwargs, "socket_timeout": timeout}
        return aioredis.Redis(
            connection_pool=aioredis.ConnectionPool(
                connection_class=pool.connection_class, max_connections=1, **kwargs
            )
        )

    async def unreachable(self, timeout: float) -> str | None:
        """Why the shared backend does not answer a PING within ``timeout`` seconds, or None
        when it does (always None for ``memory``)."""
        if self.url is None:
            return None
        if self._redis is None:
            return "not connected"
        from redis.exceptions import RedisError

        try:
            await asyncio.wait_for(self._redis.ping(), timeout)
        except TimeoutError:
            return f"no answer to PING within {timeout:g} s"
        except (RedisError, OSError) as exc:
            return f"{type(exc).__name__}: {self.target.hide(str(exc)) if self.target else exc}"
        return None

    async def stop(self) -> None:
        """Stop the pub/sub listener and close the Redis connection."""
        await self.hub.stop()
        if self._redis is not None:
            # the pool was made here, and a client given a pool leaves it open on its own close
            await self._redis.aclose(close_connection_pool=True)
            self._redis = None
        await self._close_sentinels()

    async def _close_sentinels(self) -> None:
        sentinels, self._sentinels = self._sentinels, []
        for sentinel in sentinels:
            await sentinel.aclose()
