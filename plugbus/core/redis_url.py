"""The Redis URL of ``server.backend``: parsed once, here, and masked wherever it is shown.

Three forms are read:

* ``redis://[[user]:password@]host:port/db[?option=value&...]`` and ``rediss://...`` (TLS):
  redis-py's own URL form; its query options (``ssl_cert_reqs``, ``ssl_ca_certs``,
  ``socket_timeout``, ...) pass to redis-py as it documents them.
* ``redis+sentinel://[[user]:password@]host1:port1,host2:port2/db/service_name[?option=...]``:
  Redis Sentinel, in python-socketio's form. The sentinels are asked where the primary of
  ``service_name`` is; ``user``/``password`` and the query options are for the primary, except
  ``sentinel_password``, which the sentinels are asked with.

core/ parses the sentinel form itself (python-socketio has a parser too, but core never imports
socketio): the socket door's client manager gets its Redis client from
:meth:`plugbus.core.backend.Backend.new_redis_client`, built from this parse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

SENTINEL_SCHEME = "redis+sentinel"
SCHEMES = ("redis", "rediss", SENTINEL_SCHEME)

#: Query options whose values are secrets (masked like the URL's password).
_SECRET_OPTIONS = ("password",)


def _mask_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(word in name.lower() for name, _ in pairs for word in _SECRET_OPTIONS):
        return query
    masked = [
        (name, "***" if any(word in name.lower() for word in _SECRET_OPTIONS) else value)
        for name, value in pairs
    ]
    return urlencode(masked, safe="*/:")


def mask_url(url: str) -> str:
    """The URL with its password, and any ``*password*`` query option, replaced by ``***``
    (for messages and logs). Works on the sentinel form's comma-separated host list too."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    return urlunsplit((parts.scheme, netloc, parts.path, _mask_query(parts.query), parts.fragment))


@dataclass(frozen=True)
class RedisTarget:
    """Where a node's Redis is: one server (``sentinels`` empty) or a Sentinel-watched primary.

    :ivar url: the URL as configured (holds the password: show :attr:`masked` instead).
    :ivar sentinels: ``(host, port)`` of each sentinel; empty for ``redis://``/``rediss://``.
    :ivar service: the primary's service name (sentinel form only).
    :ivar db: the database number.
    :ivar options: the primary's connection options (sentinel form: the query's, parsed with
        redis-py's URL parsers, with ``db``, ``username`` and ``password``).
    :ivar sentinel_options: connection options for the sentinels themselves.
    :ivar secrets: the passwords the URL holds, to take out of any error text shown.
    """

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    sentinel_options: dict[str, Any] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()

    def hide(self, text: str) -> str:
        """``text`` (an error message from redis-py, say) with the URL's secrets masked."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    @property
    def masked(self) -> str:
        """The URL with its secrets masked."""
        return mask_url(self.url)

    @property
    def sentinel(self) -> bool:
        """True for the ``redis+sentinel://`` form."""
        return bool(self.sentinels)


def parse_redis_url(url: str) -> RedisTarget:
    """Read a ``server.backend`` Redis URL.

    :raises ValueError: a URL plugbus cannot connect with; the message shows it masked.
    """
    from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS, parse_url

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(
            f"{mask_url(url)}: the scheme must be one of redis://, rediss:// or redis+sentinel://"
        )
    if scheme != SENTINEL_SCHEME:
        try:
            options: dict[str, Any] = dict(parse_url(url))
        except ValueError as exc:
            raise ValueError(f"{mask_url(url)}: {exc}") from None
        return RedisTarget(url=url, db=int(options.get("db", 0)), secrets=_secrets(options))

    shape = "redis+sentinel://[[user]:password@]host1:port1,host2:port2/db/service_name"
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{mask_url(url)}: each sentinel is host:port ({shape})")
        sentinels.append((host, int(port)))
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if len(path) != 2 or not path[0].isdigit() or not path[1]:
        raise ValueError(f"{mask_url(url)}: the path is /db/service_name ({shape})")
    db, service = int(path[0]), path[1]
    options = {}
    sentinel_options: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "sentinel_password":
            sentinel_options["password"] = value
            continue
        parser = URL_QUERY_ARGUMENT_PARSERS.get(name)
        try:
            options[name] = parser(value) if parser else value
        except (TypeError, ValueError):
            raise ValueError(f"{mask_url(url)}: invalid value for {name!r}") from None
    if userinfo:
        user, colon, password = userinfo.partition(":")
        if user:
            options["username"] = unquote(user)
        if colon and password:
            options["password"] = unquote(password)
    options["db"] = db
    return RedisTarget(
        url=url,
        sentinels=tuple(sentinels),
        service=service,
        db=db,
        options=options,
        sentinel_options=sentinel_options,
        secrets=_secrets(options | {"sentinel_password": sentinel_options.get("password")}),
    )


def _secrets(options: dict[str, Any]) -> tuple[str, ...]:
    return tuple(
        str(value)
        for name, value in options.items()
        if value and any(word in name.lower() for word in _SECRET_OPTIONS)
    )
