"""Where shared state lives: this process (``memory``) or a Redis server several nodes share.

``server.backend`` in config.yaml is ``memory`` (one process, nothing to set up) or a Redis URL
(``redis://[:password@]host:port/db``, ``rediss://`` for TLS, ``redis+sentinel://`` for a
primary that Redis Sentinel watches: :mod:`plugbus.core.redis_url`). With Redis, python-socketio's own
Redis client manager fans broadcasts out to every node, and plugins keep their state in a
:class:`~plugbus.core.store.Store` (:meth:`Backend.store`), whose keys and pub/sub channels
every node shares. The Redis client itself stays in here: nothing outside core/ and the
socket door's client manager touches it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import ConfigError, StoreUnavailable
from .redis_url import RedisTarget, mask_url, parse_redis_url
from .store import Hub, MemoryStore, RedisStore, Store, _Entry

__all__ = ["Backend", "mask_url"]

log = logging.getLogger("plugbus.backend")

#: Seconds to wait for a sentinel's answer: a sentinel that is down or silent is skipped for
#: the next one instead of holding up every reconnection to the primary.
SENTINEL_TIMEOUT = 1.0


class Backend:
    """The shared-state backend of one node.

    :ivar url: the Redis URL, or None for ``memory``.
    :ivar node_id: this node's id (random per process).
    :ivar prefix: the key prefix every plugbus key starts with.
    :ivar hub: the node's one pub/sub listener, for every store's channels.
    """

    #: Connections the node keeps to Redis at most; more callers wait their turn (up to 10 s).
    max_connections = 50

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
        self._down = False

    @property
    def shared(self) -> bool:
        """True when state is shared between nodes (a Redis URL is configured)."""
        return self.url is not None

    def key(self, *parts: str) -> str:
        """A namespaced key: ``plugbus:part:part``."""
        return ":".join((self.prefix, *parts))

    def store(self, name: str, *, local: bool = False) -> Store:
        """The store ``name``: in Redis when the backend is shared (unless ``local``), else in
        this process (stores of one name share their keys)."""
        if self.shared and not local:
            return RedisStore(self, name)
        return MemoryStore(self, name, self._local if self.shared else self._memory)

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
        from redis.exceptions import RedisError, ResponseError

        try:
            result = await call(self.redis_client())
        except ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                raise TypeError(str(exc)) from None
            raise self._unavailable(what, exc) from None
        except (RedisError, OSError) as exc:
            raise self._unavailable(what, exc) from None
        if self._down:
            self._down = False
            log.warning("shared state: Redis answers again")
        return result

    def _unavailable(self, what: str, exc: Exception) -> StoreUnavailable:
        level = logging.DEBUG if self._down else logging.WARNING
        self._down = True
        text = self.target.hide(str(exc)) if self.target is not None else str(exc)
        log.log(level, "shared state: cannot %s: %s: %s", what, type(exc).__name__, text)
        return StoreUnavailable(
            "shared state is unavailable for a moment: Redis cannot be reached; try again shortly",
            details={"store": "redis"},
        )

    def new_redis_client(self, *, decode_responses: bool = True) -> Any:
        """A new ``redis.asyncio.Redis`` client for :attr:`target`, with its own blocking pool
        of up to :attr:`max_connections` (core, and the socket door's client manager, only).

        With ``redis+sentinel://`` the client's connections ask the sentinels where the
        primary is each time they connect, so a client follows a failover by itself: a
        connection to the old primary fails, and the next one reaches the promoted replica.
        """
        from redis import asyncio as aioredis
        from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

        target = self.target
        if target is None:
            raise RuntimeError("no Redis client: memory backend")
        # A blocking pool: a burst of handshakes waits for a free connection instead of
        # failing (redis-py's default pool raises MaxConnectionsError past its limit).
        options: dict[str, Any] = {
            "decode_responses": decode_responses,
            "socket_connect_timeout": 5,
            "health_check_interval": 10,
            "retry_on_timeout": True,
            "max_connections": self.max_connections,
            "timeout": 10,
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
            try:
                await client.ping()
            except (RedisError, OSError) as exc:
                await client.aclose(close_connection_pool=True)
                await self._close_sentinels()
                raise ConfigError(
                    f"server.backend: cannot reach Redis at {self.target.masked}: "
                    f"{self.target.hide(str(exc))}"
                ) from None
            self._redis = client
            log.info("shared state in Redis at %s (node %s)", self.target.masked, self.node_id)
        await self.hub.start()

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
