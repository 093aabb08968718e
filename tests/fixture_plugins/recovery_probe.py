"""A module plugin that records the recovery hooks and keeps a value in ``connection.data``.

Messages starting with ``eph:`` are kept out of history (``ctx.history``).
Socket.IO: ``remember {value}`` stores the value in the session's ``connection.data``;
``probe`` answers ``{data, recovered}`` for the sender. REST: ``GET /probe`` lists what the
hooks saw on this node (``connected``, ``disconnects``, ``recoveries``, ``expired``).
"""

from typing import Any, ClassVar

from plugbus import Bus, Connection, Event, EventContext, Recovery, Route, hookimpl

SEEN: dict[str, list[Any]] = {"connected": [], "disconnects": [], "recoveries": [], "expired": []}


class Remember(Event):
    """Keep a value with the session."""

    name: ClassVar[str] = "remember"
    value: str


class Probe(Event):
    """What the server holds for this connection."""

    name: ClassVar[str] = "probe"


@hookimpl
def plugbus_register_events():
    """``remember`` and ``probe``."""
    return [Remember, Probe]


@hookimpl
def plugbus_connected(connection: Connection):
    """Record a fresh connection."""
    SEEN["connected"].append(connection.sid)


@hookimpl
def plugbus_disconnect(connection: Connection, reason: str):
    """Record a drop, and whether its session was kept."""
    SEEN["disconnects"].append(
        {"sid": connection.sid, "reason": reason, "suspended": connection.suspended}
    )


@hookimpl
def plugbus_session_recovered(connection: Connection, recovery: Recovery):
    """Record a recovery."""
    SEEN["recoveries"].append(
        {
            "sid": connection.sid,
            "rooms": list(recovery.rooms),
            "refused_rooms": list(recovery.refused_rooms),
            "replayed": recovery.replayed,
            "moved": recovery.moved,
            "data": dict(connection.data),
            "user": connection.identity.user_id if connection.identity else None,
        }
    )


@hookimpl
def plugbus_session_expired(connection: Connection, rooms: list[str]):
    """Record an expiry."""
    SEEN["expired"].append({"sid": connection.sid, "rooms": rooms})


@hookimpl
def plugbus_moderate(event: Event, ctx: EventContext):
    """Keep messages that start with "eph:" out of history."""
    message = getattr(event, "message", None)
    if isinstance(message, str) and message.startswith("eph:"):
        ctx.history = False


@hookimpl
def plugbus_handle_event(event: Event, ctx: EventContext):
    """Answer ``remember`` and ``probe``."""
    if isinstance(event, Remember) and ctx.connection is not None:
        ctx.connection.data["probe"] = event.value
        return {"ok": True}
    if isinstance(event, Probe) and ctx.connection is not None:
        return {"data": ctx.connection.data, "recovered": ctx.connection.recovered}
    return None


@hookimpl
def plugbus_routes(bus: Bus):
    """``GET /probe``."""

    async def probe(_req: Any) -> dict[str, list[Any]]:
        """What the hooks saw on this node."""
        return SEEN

    return [Route("GET", "/probe", probe, scope=None)]
