"""A deployment's own authentication: a session cookie instead of the built-in tokens."""

from plugbus import Connection, ConnectionDenied, Identity, hookimpl


@hookimpl
def plugbus_authenticate(connection: Connection):
    """Accept connections whose ``session`` cookie is valid (a real one would ask a back end)."""
    cookies = dict(
        part.strip().split("=", 1)
        for part in connection.headers.get("cookie", "").split(";")
        if "=" in part
    )
    if cookies.get("session") != "valid-session":
        raise ConnectionDenied("no session cookie: log in first", code="not_logged_in")
    return Identity(user_id="cookie-user")
