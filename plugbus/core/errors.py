"""The one error shape of plugbus: ``{code, message, details}``.

Every refusal that reaches a client — over a Socket.IO ack, an ``error`` event or a REST
problem+json body — is a :class:`PlugbusError`. Plugins raise these (or subclasses) and the
doors turn them into the wire shape; nothing else about an error leaks to clients.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field


class PlugbusError(Exception):
    """A refusal a client can understand.

    :param message: one sentence saying what was wrong, for humans.
    :param details: machine-readable specifics (the field, the limit, the event name...).
    :param code: overrides the class's ``code`` (a short snake_case identifier).
    :param status: overrides the HTTP status the REST door answers with.
    """

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 400

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        code: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}
        if code is not None:
            self.code = code  # type: ignore[misc]
        if status is not None:
            self.status = status  # type: ignore[misc]

    def to_dict(self) -> dict[str, Any]:
        """The wire shape, ``{"code", "message", "details"}``."""
        return {"code": self.code, "message": self.message, "details": self.details}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class ErrorPayload(BaseModel):
    """The wire shape of an error, as clients receive it (ack ``error`` member, ``error`` event)."""

    code: str = Field(description="Short snake_case identifier, e.g. invalid_payload.")
    message: str = Field(description="What was wrong, for humans.")
    details: dict[str, Any] = Field(
        description="Machine-readable specifics (field, limit, event...)."
    )


class UnknownEvent(PlugbusError):
    """No loaded plugin registered a schema for the event's name."""

    code = "unknown_event"
    status = 404


class InvalidPayload(PlugbusError):
    """The payload did not match the event's schema; ``details["errors"]`` lists each problem."""

    code = "invalid_payload"
    status = 422


class MessageRejected(PlugbusError):
    """Moderation vetoed the event; ``details["rule"]`` names the rule that refused it."""

    code = "message_rejected"
    status = 403


class RateLimited(PlugbusError):
    """Too many events too fast; ``details["retry_after"]`` says how many seconds to wait."""

    code = "rate_limited"
    status = 429


class Unauthorized(PlugbusError):
    """Credentials are missing or wrong (REST: HTTP 401)."""

    code = "unauthorized"
    status = 401


class NotFound(PlugbusError):
    """The thing named (a connection, a ban, a room) does not exist."""

    code = "not_found"
    status = 404


class Conflict(PlugbusError):
    """The request clashes with the current state (a name already taken, a poll already
    closed)."""

    code = "conflict"
    status = 409


class StoreUnavailable(PlugbusError):
    """Shared state cannot be reached (a Redis backend is down): what needed it is refused, and
    works again once Redis answers (redis-py reconnects on the next command)."""

    code = "store_unavailable"
    status = 503


class BackendUnavailable(StoreUnavailable):
    """The shared backend (Redis) cannot take a publish now: nothing was stored nor delivered,
    and the publish is refused at once rather than acknowledged and lost (issue #18)."""

    code = "backend_unavailable"
    status = 503


class NotAllowed(PlugbusError):
    """The event is well-formed but may not be carried out (a reserved room name, say)."""

    code = "not_allowed"
    status = 403


class ConnectionRequired(PlugbusError):
    """The event acts on the sender's own connection, so it cannot arrive over REST."""

    code = "connection_required"
    status = 400


class ConnectionDenied(PlugbusError):
    """Raised by a ``plugbus_connect`` hook to refuse a new connection.

    The client receives a ``connect_error`` whose ``message`` is this error's message and whose
    ``data`` is the full ``{code, message, details}`` shape.
    """

    code = "connection_denied"
    status = 403


class InternalError(PlugbusError):
    """A plugin failed unexpectedly; the client learns only that, the log has the traceback."""

    code = "internal_error"
    status = 500


class EventDropped(Exception):
    """Raised by a moderation step to drop an event silently.

    Nothing is delivered and no error reaches the sender: its ack is ``{"ok": true, "data":
    null}`` and a REST caller gets its usual success status with nothing delivered.
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigError(Exception):
    """Start-up cannot go on: the configuration or a plugin is wrong.

    The message names the file, the key and what was expected; the CLI prints it and exits 2.
    """
