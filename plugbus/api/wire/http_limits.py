"""Bounds on a request's head (request line and headers), enforced before the parser sees it.

uvicorn's httptools protocol accepts a request head of any size and any number of headers, and
its parser builds a long header or URL by repeated concatenation: a 150 MB header cost 25 s of
event-loop CPU, and the headers of a polling handshake stay with the session for its life. Node
answers such a request with ``431 Request Header Fields Too Large`` once the head passes 16 KiB
(``--max-http-header-size``); plugbus does the same, with its limits from
``server.limits.max_header_bytes`` and ``server.limits.max_header_count``.

The bytes are counted as they arrive, before they are fed to the parser, so an oversized head
costs at most one read of the transport; the count of headers is checked in the parser's header
callback. Both are answered with a 431 ``application/problem+json`` body naming the limit and
the setting, and the connection is closed (the rest of the request is never read).

The hooks used (``data_received`` and httptools' parser callbacks of uvicorn's
``HttpToolsProtocol``) are declared in :mod:`plugbus.api.wire.seams`.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("plugbus.wire")

#: the end of a request head; it may straddle two reads, so the last bytes of a read are kept
_HEAD_END = b"\r\n\r\n"


class _HeadRefused(Exception):
    """A request head over a limit. Raised inside a parser callback, it stops the parser;
    httptools wraps it in a parser error, which uvicorn answers through ``send_400_response``,
    where the refusal is found again and answered as a 431."""

    def __init__(self, detail: str, setting: str, limit: int) -> None:
        super().__init__(detail)
        self.detail, self.setting, self.limit = detail, setting, limit


def limited_http_protocol(max_head_bytes: int, max_headers: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the two head limits (0 switches one off).

    :return: a protocol class for ``uvicorn.Config(http=...)``.
    """

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        """One HTTP/1.1 connection whose request heads are bounded in bytes and in headers."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True
            self._head_bytes = 0
            self._head_count = 0
            self._tail = b""
            self._refusal: _HeadRefused | None = None

        def data_received(self, data: bytes) -> None:
            if self._in_head and max_head_bytes:
                seen = self._tail + data
                end = seen.find(_HEAD_END)
                # bytes of this read that belong to the head; a read that ends the head may
                # also carry the body, which is not the head's to pay for
                head_part = len(data) if end < 0 else end + len(_HEAD_END) - len(self._tail)
                if self._head_bytes + head_part > max_head_bytes:
                    self._refuse(
                        _HeadRefused(
                            f"the request head (request line and headers) exceeds "
                            f"{max_head_bytes} bytes",
                            "server.limits.max_header_bytes",
                            max_head_bytes,
                        )
                    )
                    return
                self._head_bytes += head_part
                self._tail = seen[-(len(_HEAD_END) - 1) :]
            super().data_received(data)

        def on_message_begin(self) -> None:
            self._head_count = 0
            super().on_message_begin()

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_count += 1
            if max_headers and self._head_count > max_headers:
                self._refusal = _HeadRefused(
                    f"the request carries more than {max_headers} headers",
                    "server.limits.max_header_count",
                    max_headers,
                )
                raise self._refusal
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            # the next request on this keep-alive connection starts its own head
            self._in_head = True
            self._head_bytes = 0
            self._tail = b""

        def send_400_response(self, msg: str) -> None:
            if self._refusal is not None:
                self._refuse(self._refusal)
            else:
                super().send_400_response(msg)

        def _refuse(self, refusal: _HeadRefused) -> None:
            if self.transport.is_closing():
                return
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.warning("refused a request from %s: %s (%s)", client, refusal, refusal.setting)
            # the shape of every plugbus problem (plugbus.api.problems); no ``instance``: the
            # request line may be what was too large
            body = orjson.dumps(
                {
                    "type": "urn:plugbus:error:headers_too_large",
                    "title": "Request Header Fields Too Large",
                    "status": 431,
                    "detail": f"{refusal.detail} ({refusal.setting})",
                    "code": "headers_too_large",
                    "details": {"setting": refusal.setting, "limit": refusal.limit},
                }
            )
            head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [
                b"content-type: application/problem+json\r\n",
                b"content-length: " + str(len(body)).encode() + b"\r\n",
                b"connection: close\r\n\r\n",
            ]
            self.transport.write(b"".join(head) + body)
            self.transport.close()

    return LimitedHttpToolsProtocol
