"""The configuration model: config.yaml, environment overrides, and clear errors.

``load_config(path)`` reads a YAML file, lays ``PLUGBUS_*`` environment variables over it
(``PLUGBUS_SERVER__PORT=8000`` sets ``server.port``; nested keys are joined with ``__``) and
validates the result. Every problem becomes one :class:`ConfigError` naming the file, the line
where the YAML has one, the dotted key and what was expected.
"""

from __future__ import annotations

import fnmatch
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import ConfigError

ENV_PREFIX = "PLUGBUS_"
ENV_DELIMITER = "__"
DEFAULT_BUILTINS = ["auth", "welcome", "rooms", "relay", "moderation"]
NAMESPACE_PATTERN = re.compile(r"/[^,?#\s]*")


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class CorsSettings(StrictModel):
    """Cross-origin access for browsers (both the Socket.IO endpoint and REST)."""

    origins: list[str] | Literal["*"] = Field(
        "*", description='Allowed origins: a list of URLs, or "*" for any origin.'
    )
    methods: list[str] = Field(["GET", "POST"], description="HTTP methods allowed for REST.")
    credentials: bool = Field(True, description="Allow cookies and Authorization headers.")


class LimitsSettings(StrictModel):
    """Limits that protect the server and its other clients; 0 switches one off."""

    max_connections: int = Field(10_000, ge=0, description="Most connections this node holds.")
    max_connections_per_address: int = Field(
        0,
        ge=0,
        description="Most connections from one client address (0 = no limit; mind proxies).",
    )
    events_per_second: float = Field(
        100, ge=0, description="Sustained events per second one connection may send (0 = no limit)."
    )
    event_burst: int = Field(200, ge=1, description="Events one connection may send in a burst.")
    send_buffer_bytes: int = Field(
        16 * 1024 * 1024,
        ge=65_536,
        description="Most bytes waiting to be sent to one client (websocket or long-polling); a "
        "client that stops reading past it is dropped as a slow consumer.",
    )
    max_binary_attachments: int = Field(
        16,
        ge=1,
        le=10_000,
        description="Most binary attachments one Socket.IO packet may announce; a packet that "
        "announces more closes the connection.",
    )
    max_header_bytes: int = Field(
        16_384,
        ge=0,
        description="Most bytes of one HTTP request's head (request line and headers), as "
        "Node's default; past it 431 and the connection is closed (0 = no limit).",
    )
    max_header_count: int = Field(
        100,
        ge=0,
        description="Most headers one HTTP request may carry; past it 431 and the connection is "
        "closed (0 = no limit).",
    )
    rest_publish_per_key: float = Field(
        100,
        ge=0,
        description="Sustained REST publishing requests per second one API key may "
        "make (0 = no limit); past it 429 with Retry-After.",
    )
    rest_publish_per_address: float = Field(
        100,
        ge=0,
        description="Sustained REST publishing requests per second from one client "
        "address (0 = no limit; behind a proxy everyone shares one).",
    )
    rest_publish_burst: int = Field(
        200,
        ge=1,
        description="REST publishing requests one key or address may make at once.",
    )


class MetricsSettings(StrictModel):
    """Prometheus metrics at ``GET /metrics``."""

    enabled: bool = Field(True, description="Serve GET /metrics.")
    port: int = Field(
        0,
        ge=0,
        le=65535,
        description="0: on the API's port; another port: on that port only (on server.host), "
        "e.g. one that only the monitoring network reaches.",
    )


class RecoverySettings(StrictModel):
    """Connection state recovery, as socket.io-client >= 4.6 speaks it (see docs/recovery.md)."""

    enabled: bool = Field(
        True,
        description="Offer recovery: a client that lost its connection and comes back within "
        "max_disconnection_s gets its sid, rooms, identity and data back, and every stored "
        "event it missed, in order.",
    )
    max_disconnection_s: float = Field(
        120,
        gt=0,
        le=86_400,
        description="Seconds a disconnected session is kept for recovery (Node's default: 2 min).",
    )
    clients: Literal["opted-in", "all"] = Field(
        "opted-in",
        description="Which connections are offered recovery (a pid in the CONNECT ack and an "
        "offset as the last argument of every event sent to them): opted-in — those whose "
        "CONNECT payload says recovery: true; all — every connection unless it says "
        "recovery: false (Node's behaviour; clients whose handlers take a fixed number of "
        "arguments, such as python-socketio's, must then decline).",
    )


class HistoryLimits(StrictModel):
    """How much of one room's history is kept; a key left out keeps the general value."""

    max_messages: int | None = Field(
        None, ge=0, description="Most messages kept (0: no history for the room)."
    )
    max_age_s: float | None = Field(None, gt=0, description="Seconds a message is kept.")


class HistorySettings(StrictModel):
    """The bounded log of each room (and of broadcasts and direct messages) that recovery
    replays from and that ``GET /rooms/{room}/messages`` and ``room-history`` read."""

    max_messages: int = Field(
        1000, ge=0, le=1_000_000, description="Most messages kept per room (0: no history)."
    )
    max_age_s: float = Field(600, gt=0, le=30 * 86_400, description="Seconds a message is kept.")
    rooms: dict[str, HistoryLimits] = Field(
        default_factory=dict,
        description='Per-room limits by glob pattern (fnmatch), e.g. {"typing-*": '
        "{max_messages: 0}}; the first matching pattern wins.",
    )

    def limits_for(self, room: str | None) -> tuple[int, float]:
        """(max_messages, max_age_s) of ``room`` (None: broadcasts and direct messages)."""
        if room is not None:
            for pattern, limits in self.rooms.items():
                if fnmatch.fnmatchcase(room, pattern):
                    return (
                        self.max_messages if limits.max_messages is None else limits.max_messages,
                        self.max_age_s if limits.max_age_s is None else limits.max_age_s,
                    )
        return self.max_messages, self.max_age_s


class ServerSettings(StrictModel):
    """Where and how the server listens."""

    name: str = Field("plugbus", description="This server's name, shown to clients and in /health.")
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(3000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    namespaces: list[str] = Field(
        ["/"],
        min_length=1,
        description='The Socket.IO namespaces served, e.g. ["/", "/admin"]. The first is the '
        "default namespace: events that name none belong to it, and bus.emit and "
        "the REST routes use it unless told otherwise.",
    )
    socketio_path: str = Field("socket.io", min_length=1, description="Socket.IO endpoint path.")
    transports: list[Literal["polling", "websocket"]] = Field(
        ["polling", "websocket"], min_length=1, description="Engine.IO transports accepted."
    )
    ping_interval: float = Field(25, gt=0, description="Seconds between server pings.")
    ping_timeout: float = Field(20, gt=0, description="Seconds to wait for a pong.")
    connect_timeout: float = Field(
        45,
        ge=0,
        description="Seconds an Engine.IO session may stay open without joining a "
        "namespace (a Socket.IO CONNECT) before it is closed; 0 = no limit.",
    )
    websocket_writer: Literal["auto", "direct", "compatible"] = Field(
        "auto",
        description="How websocket frames are written: direct (straight to uvicorn's "
        "transport; start-up fails when it cannot be had), compatible (plain "
        "ASGI send, any server), or auto (direct where possible, reported "
        "in the log and /health where not).",
    )
    max_message_bytes: int = Field(
        1_000_000, gt=0, description="Largest Engine.IO message or HTTP body accepted."
    )
    backend: str = Field(
        "memory",
        pattern=r"^(memory|rediss?://.+|redis\+sentinel://.+)$",
        description="Where shared state lives: memory (one process) or a Redis URL shared by several nodes.",
    )

    @field_validator("backend")
    @classmethod
    def _a_redis_url_plugbus_can_use(cls, value: str) -> str:
        # Parsed here as well as at start-up, so that a bad URL is named with its key and
        # line by `plugbus config check` (the message masks the password).
        if value != "memory":
            from .redis_url import parse_redis_url

            parse_redis_url(value)
        return value

    backend_replicas: int = Field(
        0,
        ge=0,
        le=16,
        description="With a Redis backend: acknowledge a publish only once this many replicas "
        "confirm they have it (Redis WAIT, pipelined after the append), so that a failover "
        "cannot lose it; 0: once the primary has it.",
    )
    backend_replica_timeout: float = Field(
        0.1,
        gt=0,
        le=0.5,
        description="Seconds a publish waits for backend_replicas to confirm it; fewer in time: "
        "the publish is refused (backend_unavailable), never acknowledged.",
    )
    presence_ttl: float = Field(
        30,
        ge=3,
        description="Seconds a node's presence entries outlive it (shared backend only).",
    )
    chat_page: bool = Field(
        True,
        description="Serve the built-in chat page at / (off when you serve your own front end).",
    )
    shutdown_timeout: int = Field(
        10, ge=0, description="Seconds to let open connections finish when stopping."
    )
    websocket_compression: bool = Field(
        False,
        description="Offer permessage-deflate to websocket clients that ask for it. Off by "
        "default, as in Node's socket.io: compression costs CPU per message and "
        "per recipient, and broadcasts are sent uncompressed either way.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    admin_page: bool = Field(
        True,
        description="Serve the admin view at GET /admin (a static page that reads the REST "
        "API with an admin API key the operator types in).",
    )
    drain_seconds: float = Field(
        10,
        ge=0,
        le=3600,
        description="On SIGTERM: report not-ready, refuse new sessions and close the open ones "
        "spread over this many seconds (clients reconnect to other nodes), then stop as "
        "shutdown_timeout allows. 0: stop at once.",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text: lines for people; json: one JSON object per line (time, level, "
        "logger, message, and the request_id, sid, user and event being served) for plugbus's "
        "and uvicorn's loggers alike.",
    )
    cors: CorsSettings = Field(default_factory=CorsSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    recovery: RecoverySettings = Field(default_factory=RecoverySettings)
    history: HistorySettings = Field(default_factory=HistorySettings)

    @model_validator(mode="after")
    def _replicas_need_redis(self) -> ServerSettings:
        if self.backend_replicas and self.backend == "memory":
            raise ValueError(
                "backend_replicas needs a Redis backend (server.backend is memory: there are "
                "no replicas to wait for)"
            )
        return self

    @model_validator(mode="after")
    def _recovery_needs_history(self) -> ServerSettings:
        if self.recovery.enabled and self.history.max_messages == 0:
            raise ValueError(
                "recovery.enabled needs a history to replay from: set history.max_messages "
                "above 0 (or switch recovery off)"
            )
        if self.recovery.enabled and self.history.max_age_s < self.recovery.max_disconnection_s:
            raise ValueError(
                f"history.max_age_s ({self.history.max_age_s:g}) is shorter than "
                f"recovery.max_disconnection_s ({self.recovery.max_disconnection_s:g}): a client "
                "could come back within the window and find its messages gone"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _single_namespace_key(cls, data: Any) -> Any:
        # Every copy of the shipped config.yaml before namespaces existed has `namespace: /`;
        # it keeps meaning what it meant (that one namespace) rather than stopping start-up.
        if isinstance(data, dict) and "namespace" in data:
            data = dict(data)
            single = data.pop("namespace")
            if "namespaces" in data and data["namespaces"] != [single]:
                raise ValueError(
                    f"both `namespace` ({single!r}) and `namespaces` are set; keep only "
                    "`namespaces` (a list, the first is the default namespace; the environment "
                    "variable PLUGBUS_SERVER__NAMESPACE counts as setting `namespace`)"
                )
            data["namespaces"] = [single]
        return data

    @field_validator("namespaces")
    @classmethod
    def _valid_namespaces(cls, value: list[str]) -> list[str]:
        for name in value:
            # "," ends the namespace in a Socket.IO packet and "?" starts its query, so a name
            # holding either could never be sent by a client.
            if not NAMESPACE_PATTERN.fullmatch(name):
                raise ValueError(
                    f"namespace {name!r} must start with '/' and hold no ',', '?', '#' or space"
                )
        seen = [n for i, n in enumerate(value) if n in value[:i]]
        if seen:
            raise ValueError(f"namespace {seen[0]!r} is listed twice")
        return value

    @property
    def default_namespace(self) -> str:
        """The first of ``namespaces``: where events, emits and REST calls that name no
        namespace belong."""
        return self.namespaces[0]


class PluginsSettings(StrictModel):
    """Which plugins run, and the settings of each."""

    builtins: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BUILTINS),
        description="Built-in plugins to run, by name.",
    )
    entry_points: bool = Field(
        True, description="Also load installed packages in the `plugbus` entry-point group."
    )
    disabled: list[str] = Field(
        default_factory=list, description="Plugin names never loaded, built-in or installed."
    )
    modules: dict[str, str] = Field(
        default_factory=dict, description='Extra plugins by dotted path: {name: "pkg.mod[:Class]"}.'
    )
    settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Each plugin's settings, keyed by plugin name."
    )


class Config(BaseSettings):
    """The whole configuration. Environment variables (``PLUGBUS_...``) beat the file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        case_sensitive=False,
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    plugins: PluginsSettings = Field(default_factory=PluginsSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's content arrives as init arguments; the environment must beat it.
        return (env_settings, init_settings)


def default_config_path() -> Path:
    """The embedded default config.yaml shipped inside the package."""
    return Path(str(resources.files("plugbus").joinpath("config.yaml")))


class LoadedConfig:
    """A validated :class:`Config` plus where it came from (for later error messages)."""

    def __init__(self, config: Config, path: Path, lines: dict[tuple[str, ...], int]) -> None:
        self.config = config
        self.path = path
        self._lines = lines

    def error(self, loc: tuple[str | int, ...], message: str) -> str:
        """``"file:line: a.b.c: message"`` for a key path (the line when the file has the key;
        a note naming the environment variable when that is where the value came from)."""
        return located(self.path, self._lines, loc, message)


def load_config(path: str | os.PathLike[str] | None = None) -> LoadedConfig:
    """Read, override from the environment, and validate a config file.

    :param path: the YAML file; None means the embedded default.
    :raises ConfigError: unreadable file, bad YAML, unknown key or wrong type — one message.
    """
    file = Path(path) if path is not None else default_config_path()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{file}: cannot read config file: not valid UTF-8 (byte {exc.start})"
        ) from None
    try:
        data = yaml.safe_load(text)
        lines = _key_lines(yaml.compose(text))
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{file}: not valid YAML: {str(exc).replace('<unicode string>', str(file))}"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a mapping of sections (server, plugins) at the top")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(
                located(file, lines, (str(key),), "unknown key (sections are: server, plugins)")
            )
    try:
        config = Config(**data)
    except ValidationError as exc:
        raise ConfigError(format_config_errors(exc, file, lines)) from None
    return LoadedConfig(config, file, lines)


def format_config_errors(
    exc: ValidationError,
    file: Path,
    lines: dict[tuple[str, ...], int],
    prefix: tuple[str | int, ...] = (),
) -> str:
    """One message with a line per problem: ``file:line: key: what was expected (got ...)``."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        got = err.get("input")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] != "missing" and not isinstance(got, dict) and not _is_secret(loc):
            if loc[-1:] == ("backend",) and isinstance(got, str):
                from .redis_url import mask_url

                got = mask_url(got)  # a Redis URL may hold a password
            msg += f" (got {got!r})"
        parts.append(located(file, lines, loc, msg))
    head = f"invalid configuration in {file}:" if len(parts) > 1 else "invalid configuration:"
    return head + ("\n  " if len(parts) > 1 else " ") + "\n  ".join(parts)


_SECRET_WORDS = ("secret", "token", "key", "password")


def _is_secret(loc: tuple[str | int, ...]) -> bool:
    """Keys whose values must never be echoed in an error message."""
    return any(word in str(part).lower() for part in loc for word in _SECRET_WORDS)


def env_var_for(loc: tuple[str | int, ...]) -> str | None:
    """The set environment variable that provides the key at ``loc`` (or a section holding
    it, such as a whole list), or None when the value comes from the file."""
    present = {name.upper(): name for name in os.environ if name.upper().startswith(ENV_PREFIX)}
    for n in range(len(loc), 0, -1):
        candidate = ENV_PREFIX + ENV_DELIMITER.join(str(p).upper() for p in loc[:n])
        if candidate in present:
            return present[candidate]
    return None


def located(
    file: Path, lines: dict[tuple[str, ...], int], loc: tuple[str | int, ...], message: str
) -> str:
    """One error line: ``file:line: dotted.key: message``.

    The line is the key's (or its nearest enclosing key's) in the file; when an environment
    variable supplies the value, the line is left out — the file's line would mislead — and
    the variable is named instead.
    """
    dotted = _dotted(loc)
    env = env_var_for(loc)
    if env is not None:
        return f"{file}: {dotted}: {message} [from environment variable {env}]"
    key = tuple(str(p) for p in loc)
    for n in range(len(key), 0, -1):
        if key[:n] in lines:
            return f"{file}:{lines[key[:n]]}: {dotted}: {message}"
    return f"{file}: {dotted}: {message}"


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _key_lines(node: yaml.Node | None, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Map every key path in a composed YAML document to its 1-based line."""
    out: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            sub = path + (str(key_node.value),)
            out[sub] = key_node.start_mark.line + 1
            out.update(_key_lines(value_node, sub))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = path + (str(i),)
            out[sub] = item.start_mark.line + 1
            out.update(_key_lines(item, sub))
    return out
