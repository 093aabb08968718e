"""A module plugin for the relay tests: an identity (and roles) from the handshake's auth
payload, and a moderation step that drops the message "drop me" silently."""

from plugbus import EventDropped, Identity, hookimpl


@hookimpl
def plugbus_connect(connection, bus):
    """Take the identity from ``auth = {"user": ..., "roles": [...]}``."""
    auth = connection.auth
    if isinstance(auth, dict) and "user" in auth:
        connection.identity = Identity(auth["user"], roles=tuple(auth.get("roles", ())))


@hookimpl
def plugbus_moderate(event, ctx):
    """Drop "drop me" silently."""
    if getattr(event, "message", None) == "drop me":
        raise EventDropped("test drop")
