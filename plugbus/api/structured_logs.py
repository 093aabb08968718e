"""``server.log_format: json``: one JSON object per line, for plugbus's and uvicorn's loggers.

Each line carries ``time``, ``level``, ``logger`` and ``message``, and — where the line was
written while serving one — the REST request's ``request_id`` or the Socket.IO event's ``sid``,
``user`` and ``event``. Those come from a context variable the doors set
(:data:`log_context`), so a plugin's own ``logging`` calls made while handling an event carry
them too. The formatting is python-json-logger's; the secret redaction of
:mod:`plugbus.api.log_filters` runs on the records before any format sees them.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

#: what the current task is serving: ``{"request_id": ...}`` or ``{"sid", "user", "event"}``
log_context: ContextVar[dict[str, str] | None] = ContextVar("plugbus_log_context", default=None)

#: record attributes never copied into a line: logging's own, and uvicorn's coloured duplicate
#: of the message
_RESERVED = (*RESERVED_ATTRS, "color_message")


class ContextFields(logging.Filter):
    """Copies the fields of :data:`log_context` onto each record (never over a field the
    record already has)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = log_context.get()
        if fields:
            for key, value in fields.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


def json_formatter() -> logging.Formatter:
    """The formatter of ``log_format: json``."""
    return JsonFormatter(
        "{asctime}{levelname}{name}{message}",
        style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        reserved_attrs=_RESERVED,
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


def configure_json_logging(level: str) -> None:
    """One handler on the root logger writing JSON lines to stderr; uvicorn's loggers
    propagate to it (``plugbus serve`` gives uvicorn no log config of its own in this mode)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter())
    handler.addFilter(ContextFields())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True


def event_fields(sid: str, user: str | None, event: Any) -> dict[str, str]:
    """The fields of a line written while handling a Socket.IO event."""
    fields = {"sid": sid, "event": event if isinstance(event, str) else repr(event)[:100]}
    if user is not None:
        fields["user"] = user
    return fields
