"""plugbus core: the plugin contract and the event pipeline. Never imports a web framework.

The names below are core's public surface; the ``plugbus`` package re-exports them for plugin
authors, and built-in plugins use nothing else.
"""

from .bus import Bus
from .config import Config, LoadedConfig, load_config
from .context import Connection, EventContext, Identity, Origin, Principal
from .errors import (
    BackendUnavailable,
    ConfigError,
    Conflict,
    ConnectionDenied,
    ConnectionRequired,
    EventDropped,
    InternalError,
    InvalidPayload,
    MessageRejected,
    NotAllowed,
    NotFound,
    PlugbusError,
    RateLimited,
    StoreUnavailable,
    Unauthorized,
    UnknownEvent,
)
from .events import Event, EventRegistry, ServerEvent
from .history import StoredEvent
from .hookspecs import hookimpl, hookspec
from .ids import new_id
from .loader import BUILTINS, PluginInfo, PluginSource, load_plugins
from .moderation import ModerationRule, Violation
from .plugin import Plugin, PluginSettings, Secret
from .presence import Member
from .protocols import Cluster, Counter, Presence, TextDecision
from .recovery import Recovery
from .routes import Route, RouteRequest
from .store import Batch, Store, Subscription
from .transport import Transport

__all__ = [
    "BUILTINS",
    "BackendUnavailable",
    "Batch",
    "Bus",
    "Cluster",
    "Config",
    "ConfigError",
    "Conflict",
    "Connection",
    "ConnectionDenied",
    "ConnectionRequired",
    "Counter",
    "Event",
    "EventContext",
    "EventDropped",
    "EventRegistry",
    "Identity",
    "InternalError",
    "InvalidPayload",
    "LoadedConfig",
    "Member",
    "MessageRejected",
    "ModerationRule",
    "NotAllowed",
    "NotFound",
    "Origin",
    "PlugbusError",
    "Plugin",
    "PluginInfo",
    "PluginSettings",
    "PluginSource",
    "Presence",
    "Principal",
    "RateLimited",
    "Recovery",
    "Route",
    "RouteRequest",
    "Secret",
    "ServerEvent",
    "Store",
    "StoreUnavailable",
    "StoredEvent",
    "Subscription",
    "TextDecision",
    "Transport",
    "Unauthorized",
    "UnknownEvent",
    "Violation",
    "hookimpl",
    "hookspec",
    "load_config",
    "load_plugins",
    "new_id",
]
