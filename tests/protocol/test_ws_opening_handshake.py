"""The websocket opening handshake (RFC 6455 §4.2) as a bare TCP client sees it.

plugbus's reader (plugbus.api.wire.reader) answers a plain, valid handshake itself and leaves
everything else to websockets; either way the answer must be RFC 6455's, and the same bytes
websockets would have sent (status line and headers, but for the date).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from typing import Any

import httpx
import pytest
from eio_raw import shared_server

#: RFC 6455 §1.3's example: this key's accept value is s3pPLMBiTxaQ9kYGzzhZRbK+xOo=
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
PATH = "/socket.io/?EIO=4&transport=websocket"
BASE = {
    "Host": "127.0.0.1",
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": RFC_KEY,
    "Sec-WebSocket-Version": "13",
}


@pytest.fixture
def default_server(request: pytest.FixtureRequest) -> Any:
    return shared_server(request, "default")


async def handshake(server: Any, **changes: str | None) -> tuple[str, dict[str, str], bytes]:
    """Send a handshake (``BASE`` with ``changes``; None drops a header) and read the answer:
    status line, headers (lower-cased names, the date left out) and what followed them."""
    headers = {**BASE, **changes}
    request = f"GET {PATH} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items() if value is not None
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write((request + "\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await asyncio.wait_for(reader.read(4096), 5)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        fields = {}
        for line in lines:
            name, _, value = line.partition(":")
            if name.lower() != "date":
                fields[name.lower()] = value.strip()
        return status, fields, rest
    finally:
        writer.close()


def accept_value(key: str) -> str:
    """RFC 6455 §4.2.2 /key/ + the GUID, SHA-1, base64."""
    digest = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    return base64.b64encode(digest).decode()


async def test_accept_is_sha1_of_the_key_and_the_guid(default_server: Any) -> None:
    """§4.2.2: 101, ``Upgrade: websocket``, ``Connection: Upgrade``, and
    Sec-WebSocket-Accept computed from the key (the RFC's own example first)."""
    assert accept_value(RFC_KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    before = _handshakes(default_server)
    for key in (RFC_KEY, base64.b64encode(os.urandom(16)).decode()):
        status, fields, _rest = await handshake(default_server, **{"Sec-WebSocket-Key": key})
        assert status == "HTTP/1.1 101 Switching Protocols", (status, fields)
        assert fields["upgrade"] == "websocket" and fields["connection"] == "Upgrade"
        assert fields["sec-websocket-accept"] == accept_value(key)
        assert fields["server"] == "uvicorn"
        assert "sec-websocket-extensions" not in fields  # compression is off by default
    after = _handshakes(default_server)
    assert after["direct"] >= before["direct"] + 2, (before, after)  # taken by plugbus's reader


async def test_header_values_are_case_insensitive(default_server: Any) -> None:
    """§4.2.1: Upgrade is "websocket" and Connection includes the "Upgrade" token, both
    compared ASCII case-insensitively."""
    status, fields, _ = await handshake(
        default_server, Upgrade="WebSocket", Connection="keep-alive, UPGRADE"
    )
    assert status.startswith("HTTP/1.1 101"), (status, fields)
    assert fields["sec-websocket-accept"] == accept_value(RFC_KEY)


async def test_extensions_offered_without_compression_are_not_negotiated(
    default_server: Any,
) -> None:
    """What browsers send (permessage-deflate offered) on a server with compression off: the
    handshake succeeds and no extension is in the answer (§9.1: the server accepts none)."""
    status, fields, _ = await handshake(
        default_server,
        **{"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"},
    )
    assert status.startswith("HTTP/1.1 101"), (status, fields)
    assert "sec-websocket-extensions" not in fields


@pytest.mark.parametrize(
    "changes",
    [
        {"Sec-WebSocket-Key": None},
        {"Sec-WebSocket-Key": "AAAA"},
        {"Sec-WebSocket-Key": "!!!!!!!!!!!!!!!!!!!!!!=="},
        {"Sec-WebSocket-Version": "12"},
        {"Sec-WebSocket-Version": None},
    ],
    ids=["no-key", "key-not-16-bytes", "key-not-base64", "version-12", "no-version"],
)
async def test_a_handshake_that_breaks_the_rules_is_refused(
    default_server: Any, changes: dict[str, str | None]
) -> None:
    """§4.2.1: a handshake without a valid Sec-WebSocket-Key (base64 of 16 bytes) or
    Sec-WebSocket-Version 13 "MUST" be answered with an error such as 400, and no session
    starts (websockets' own answer, with a text body saying what was wrong)."""
    status, fields, body = await handshake(default_server, **changes)
    assert status == "HTTP/1.1 400 Bad Request", (status, fields)
    assert fields["connection"] == "close"
    assert b"Failed to open a WebSocket connection" in body or int(fields["content-length"]) > 0


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"Sec-WebSocket-Version": "12"}, b"Sec-WebSocket-Version"),
        ({"Sec-WebSocket-Version": None}, b"Sec-WebSocket-Version"),
        ({"Sec-WebSocket-Version": "8", "Sec-WebSocket-Protocol": "chat"}, b"Version"),
        ({"Host": None}, b"Host"),
        ({"Host": None, "Sec-WebSocket-Extensions": "permessage-deflate"}, b"Host"),
    ],
    ids=["version-12", "no-version", "version-8-with-a-subprotocol", "no-host", "no-host-ext"],
)
async def test_a_refused_version_lists_the_one_spoken_and_a_missing_host_is_refused(
    default_server: Any, changes: dict[str, str | None], says: bytes
) -> None:
    """§4.4: a server that does not support the requested version "MUST respond with a
    |Sec-WebSocket-Version| header field ... containing all versions it is willing to use"
    (§4.2.2 says the same of an abort for the version); §4.2.1: a request without ``Host``
    is not a valid handshake, which the server "MUST" refuse with an error such as 400.
    Either way the body says which, and no session starts."""
    before = _handshakes(default_server)
    status, fields, body = await handshake(default_server, **changes)
    assert status == "HTTP/1.1 400 Bad Request", (status, fields)
    assert fields["sec-websocket-version"] == "13"
    assert fields["connection"] == "close"
    assert body.startswith(b"Failed to open a WebSocket connection: ") and says in body, body
    assert _handshakes(default_server)["refused"] == before["refused"] + 1


def _handshakes(server: Any) -> dict[str, int]:
    wire = httpx.get(server.url + "/health", timeout=5).json()["wire"]
    counts: dict[str, int] = wire["websocket_reader"]["handshakes_in_process"]
    return counts
