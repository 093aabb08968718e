"""A module plugin that reports the identity a connection carries, as plugins see it."""

from typing import ClassVar

from plugbus import Connection, Event, EventContext, hookimpl

SEEN: dict[str, object] = {}


class WhoAmI(Event):
    """Ask who the server thinks you are."""

    name: ClassVar[str] = "whoami"


@hookimpl
def plugbus_register_events():
    """The ``whoami`` event."""
    return [WhoAmI]


@hookimpl
def plugbus_connect(connection: Connection):
    """Remember the identity plugbus_connect saw (authentication runs before it)."""
    identity = connection.identity
    SEEN[connection.sid] = None if identity is None else identity.user_id


@hookimpl
def plugbus_handle_event(event: Event, ctx: EventContext):
    """Answer ``whoami`` with the sender's identity, and what plugbus_connect saw of it."""
    if isinstance(event, WhoAmI):
        identity = ctx.connection.identity if ctx.connection else None
        return {
            "user_id": identity.user_id if identity else None,
            "name": identity.name if identity else None,
            "roles": list(identity.roles) if identity else [],
            "seen_at_connect": SEEN.get(ctx.sid),
        }
    return None
