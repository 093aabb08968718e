"""The JSON module python-socketio and python-engineio encode and decode packets with.

orjson where it can, the standard library where orjson refuses, so what is accepted and
produced is exactly what python-engineio's own ``engineio.json`` accepts and produces — only
faster (every received event is decoded here and every ack encoded):

* ``loads``: orjson; on its refusal (``NaN``/``Infinity`` literals) ``engineio.json.loads``.
  One difference, on purpose: an integer past 64 bits becomes a float, as it does in the
  JavaScript that most clients are written in (python-engineio refuses integers of more than
  100 digits and keeps smaller ones exact); no huge integer is ever built from client input;
* ``dumps``: orjson with non-string keys allowed; on its refusal (bytes, integers past 64 bits,
  types only a ``default=`` knows) the standard library with the caller's arguments.

orjson writes non-ASCII characters as UTF-8 where the standard library writes ``\\uXXXX``
escapes; both are the same JSON text to every client.
"""

from __future__ import annotations

import json as _stdlib_json
from typing import Any

import orjson
from engineio import json as _engineio_json

JSONDecodeError = _stdlib_json.JSONDecodeError

_OPTIONS = orjson.OPT_NON_STR_KEYS
#: the options of every orjson.dumps here (the socket door encodes its acks with them too)
ORJSON_OPTIONS = _OPTIONS


def dumps(obj: Any, **kwargs: Any) -> str:
    """JSON text of ``obj`` (compact, as python-socketio asks for with ``separators``)."""
    if not kwargs.keys() - {"separators"}:
        try:
            return orjson.dumps(obj, option=_OPTIONS).decode()
        except TypeError:
            kwargs.setdefault("separators", (",", ":"))  # compact, as orjson would have been
    return _stdlib_json.dumps(obj, **kwargs)


def dumps_or_none(obj: Any) -> str | None:
    """``dumps(obj)`` for the direct send paths, or None when orjson cannot (binary data among
    them: python-socketio then sends it as attachments)."""
    try:
        return orjson.dumps(obj, option=_OPTIONS).decode()
    except TypeError:
        return None


def loads(s: str | bytes, **kwargs: Any) -> Any:
    """The value of the JSON text ``s``; raises ``ValueError`` when it is not JSON."""
    if not kwargs:
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError:
            pass
    return _engineio_json.loads(s, **kwargs)
