"""A fix for python-engineio 4.15.1, applied when the socket door is imported.

``engineio.packet.Packet.encode`` caches its first encoding whatever ``b64`` was. python-socketio
encodes a broadcast once and hands the same Engine.IO packets to every recipient, so a binary
message sent to a room holding a websocket client (raw bytes, ``b64=False``) and a long-polling
client (``b64=True``) gave the polling client the cached raw bytes: its payload encoder raised
``TypeError: can only concatenate str (not "bytes") to str`` and the client was dropped.
Binary packets now cache one encoding per ``b64`` value; text packets are untouched.
"""

from __future__ import annotations

import base64
from typing import Any

from engineio import packet as eio_packet

_original_encode = eio_packet.Packet.encode


def _encode(self: Any, b64: bool = False) -> Any:
    if not self.binary:
        return _original_encode(self, b64=b64)
    cache = self.__dict__.setdefault("_plugbus_b64_cache", {})
    if b64 not in cache:
        cache[b64] = "b" + base64.b64encode(self.data).decode("utf-8") if b64 else self.data
    return cache[b64]


def apply() -> None:
    """Install the fix once (idempotent)."""
    if eio_packet.Packet.encode is not _encode:
        eio_packet.Packet.encode = _encode  # type: ignore[method-assign]
