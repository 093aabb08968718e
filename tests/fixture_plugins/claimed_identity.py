"""Test-only authentication: the identity is whatever the handshake's ``auth`` claims."""

from plugbus import Bus, Connection, Identity, Plugin, hookimpl


class IdentityPlugin(Plugin):
    """Sets ``connection.identity`` from ``auth = {"user_id": ..., "name": ...}``."""

    @hookimpl
    def plugbus_connect(self, connection: Connection, bus: Bus) -> None:
        """Set ``connection.identity`` from the handshake's ``auth`` payload, when it names a user."""
        auth = connection.auth
        if isinstance(auth, dict) and "user_id" in auth:
            connection.identity = Identity(auth["user_id"], auth.get("name"))
