"""plugbus: a plugin-driven real-time event bus.

This package is the plugin-author surface: everything a plugin needs, re-exported from the
core (as ``pytest`` re-exports ``_pytest``). Write ``from plugbus import hookimpl, Plugin``;
never import ``plugbus.core`` directly, its layout may change.
"""

from plugbus.core import (
    Bus,
    ConfigError,
    Connection,
    ConnectionDenied,
    ConnectionRequired,
    Event,
    EventDropped,
    EventContext,
    Identity,
    InternalError,
    InvalidPayload,
    MessageRejected,
    ModerationRule,
    NotAllowed,
    NotFound,
    Origin,
    PlugbusError,
    Plugin,
    PluginSettings,
    RateLimited,
    Route,
    RouteRequest,
    ServerEvent,
    Violation,
    hookimpl,
)

__all__ = [
    "Bus",
    "ConfigError",
    "Connection",
    "ConnectionDenied",
    "ConnectionRequired",
    "Event",
    "EventContext",
    "EventDropped",
    "Identity",
    "InternalError",
    "InvalidPayload",
    "MessageRejected",
    "ModerationRule",
    "NotAllowed",
    "NotFound",
    "Origin",
    "PlugbusError",
    "Plugin",
    "PluginSettings",
    "RateLimited",
    "Route",
    "RouteRequest",
    "ServerEvent",
    "Violation",
    "hookimpl",
]
