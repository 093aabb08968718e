"""Filters that keep secrets out of the logs of uvicorn and the websockets library.

Installed by ``plugbus serve`` and by the test kit's in-process server alike
(:func:`install_log_filters`), so no way of running plugbus logs a token.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

#: A query parameter whose name says it holds a credential, and its value.
_SECRET_PARAM = re.compile(
    r"([?&][^=&\s\"]*(?:token|key|secret|passw|auth|jwt|signature|credential)[^=&\s\"]*=)[^&\s\"]*",
    re.IGNORECASE,
)


def redact_query_secrets(record: logging.LogRecord) -> bool:
    """Clients put tokens and API keys in the query string (``?token=...``, ``?api_key=...``)
    even though plugbus reads them only from headers and the handshake; uvicorn's access and
    websocket lines log the whole query, so each such value is replaced with ``[redacted]``."""
    if isinstance(record.args, tuple) and any(isinstance(a, str) and "=" in a for a in record.args):
        record.args = tuple(
            _SECRET_PARAM.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args
        )
    return True


def _drop_frame_dumps(record: logging.LogRecord) -> bool:
    """At debug level the websockets library logs every frame it reads and writes, the
    handshake's auth payload (tokens) included; secrets must never reach a log."""
    return not (isinstance(record.msg, str) and record.msg[:2] in ("< ", "> "))


def install_log_filters() -> None:
    """Add the filters to uvicorn's and websockets' loggers (once; calling again is harmless)."""
    for name in ("uvicorn.error", "websockets"):
        _add_once(logging.getLogger(name), _drop_frame_dumps)
    for name in ("uvicorn.access", "uvicorn.error"):
        _add_once(logging.getLogger(name), redact_query_secrets)


def _add_once(logger: logging.Logger, log_filter: Callable[[logging.LogRecord], bool]) -> None:
    if log_filter not in logger.filters:
        logger.addFilter(log_filter)
