"""Where shared state lives: this process (``memory``) or a Redis server several nodes share.

``server.backend`` in config.yaml is ``memory`` (one process, nothing to set up) or a Redis URL
(``redis://[:password@]host:port/db``, ``rediss://`` for TLS). With Redis, python-socketio's own
Redis client manager fans broadcasts out to every node, and plugins keep their state through
:attr:`Backend.redis` under :meth:`Backend.key` — each state interface (presence, moderation)
has an in-memory and a Redis implementation, and the plugins never learn which they got.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError

log = logging.getLogger("plugbus.backend")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(
        (parts.scheme, f"{user}:***@{host}{port}", parts.path, parts.query, parts.fragment)
    )


class Backend:
    """The shared-state backend of one node.

    :ivar url: the Redis URL, or None for ``memory``.
    :ivar node_id: this node's id (random per process), e.g. for presence entries.
    :ivar prefix: the key prefix every plugbus key starts with.
    """

    #: Connections the node keeps to Redis at most; more callers wait their turn (up to 10 s).
    max_connections = 50

    def __init__(self, setting: str, prefix: str = "plugbus") -> None:
        self.url: str | None = None if setting == "memory" else setting
        self.node_id = secrets.token_hex(6)
        self.prefix = prefix
        self._redis: Any = None

    @property
    def shared(self) -> bool:
        """True when state is shared between nodes (a Redis URL is configured)."""
        return self.url is not None

    @property
    def redis(self) -> Any:
        """The ``redis.asyncio.Redis`` client, or None with the memory backend / before start."""
        return self._redis

    def key(self, *parts: str) -> str:
        """A namespaced key: ``plugbus:part:part``."""
        return ":".join((self.prefix, *parts))

    async def start(self) -> None:
        """Connect to Redis and check it answers.

        :raises ConfigError: unreachable or refusing Redis; the message names the URL with
            its password masked.
        """
        if self.url is None:
            return
        from redis import asyncio as aioredis
        from redis.exceptions import RedisError

        # A blocking pool: a burst of handshakes waits for a free connection instead of failing
        # (redis-py's default pool raises MaxConnectionsError past its limit).
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            decode_responses=True,
            socket_connect_timeout=5,
            health_check_interval=10,
            retry_on_timeout=True,
            max_connections=self.max_connections,
            timeout=10,
        )
        client = aioredis.Redis(connection_pool=pool)
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise ConfigError(
                f"server.backend: cannot reach Redis at {mask_url(self.url)}: {exc}"
            ) from None
        self._redis = client
        log.info("shared state in Redis at %s (node %s)", mask_url(self.url), self.node_id)

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
            return f"{type(exc).__name__}: {exc}"
        return None

    async def stop(self) -> None:
        """Close the Redis connection."""
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
