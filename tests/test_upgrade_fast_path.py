"""plugbus's fast path for a connection's first request when it is a websocket upgrade
(plugbus.api.wire.upgrade) against the code it skips: uvicorn's httptools protocol with its
HTTP request handling and ``handle_websocket_upgrade``.

Two real uvicorn servers run side by side in the test's loop, with the same websocket protocol
(plugbus's reader) and head limits: one is given the fast path's HTTP protocol class, the
other plugbus's bounded httptools class it is built on. Each request below is sent over raw TCP
to both; the answers must be the same bytes (but for the date), the ASGI scope the application
sees must be the same, and the fast path must have taken exactly the requests it is meant to
take (everything else declined to uvicorn's own handling, whatever the answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st

from plugbus.api.wire import seams
from plugbus.api.wire.http_limits import limited_http_protocol
from plugbus.api.wire.reader import ReaderProtocol
from plugbus.api.wire.upgrade import UPGRADES, upgrade_protocol, upgrade_unavailable

MAX_HEAD, MAX_HEADERS = 2048, 12
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def request(
    target: bytes = b"/socket.io/?EIO=4&transport=websocket",
    *extra: bytes,
    drop: tuple[bytes, ...] = (),
    line: bytes | None = None,
) -> bytes:
    """An upgrade request: the usual headers less ``drop`` (by name), then ``extra`` lines."""
    headers = [
        b"Host: 127.0.0.1",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + KEY,
        b"Sec-WebSocket-Version: 13",
    ]
    kept = [h for h in headers if h.split(b":")[0] not in drop]
    head = line if line is not None else b"GET " + target + b" HTTP/1.1"
    return b"\r\n".join([head, *kept, *extra]) + b"\r\n\r\n"


#: (id, request, whether the fast path takes it)
CASES: list[tuple[str, bytes, bool]] = [
    ("plain", request(), True),
    ("names-in-any-case", request(b"/", b"ORIGIN: http://x", b"user-agent: t"), True),
    (
        "keep-alive-and-upgrade",
        request(b"/", b"Connection: keep-alive, Upgrade", drop=(b"Connection",)),
        True,
    ),
    ("value-whitespace", request(b"/", b"X-A: \t padded \t ", b"X-B:", b"X-C: a\tb"), True),
    ("obs-text-value", request(b"/", b"X-A: caf\xc3\xa9 \xff"), True),
    ("percent-path", request(b"/a%20b/%7e?q=%41&r=b+c"), True),
    (
        "every-printable-byte",
        request(b"/" + bytes(range(0x21, 0x7F)).replace(b"?", b"") + b"?x=1"),
        True,
    ),
    ("content-length-zero", request(b"/", b"Content-Length: 0"), True),
    ("at-the-header-limit", request(b"/", *[b"X-%d: v" % i for i in range(MAX_HEADERS - 5)]), True),
    (
        "over-the-header-limit",
        request(b"/", *[b"X-%d: v" % i for i in range(MAX_HEADERS - 4)]),
        False,
    ),
    ("over-the-byte-limit", request(b"/", b"X-A: " + b"a" * MAX_HEAD), False),
    ("two-connection-headers-last-not-upgrade", request(b"/", b"Connection: keep-alive"), False),
    ("two-connection-headers-both-upgrade", request(b"/", b"Connection: upgrade"), False),
    ("del-in-target", request(b"/a\x7fb"), False),
    ("non-ascii-target", request(b"/caf\xc3\xa9"), False),
    ("control-in-target", request(b"/a\x01b"), False),
    ("control-in-value", request(b"/", b"X-A: a\x01b"), False),
    ("bad-header-name", request(b"/", b"X(A: b"), False),
    ("obs-fold", request(b"/", b"X-A: a", b" folded"), False),
    ("no-host", request(drop=(b"Host",)), False),
    (
        "version-12",
        request(b"/", b"Sec-WebSocket-Version: 12", drop=(b"Sec-WebSocket-Version",)),
        False,
    ),
    ("bad-key", request(b"/", b"Sec-WebSocket-Key: AAAA", drop=(b"Sec-WebSocket-Key",)), False),
    ("subprotocol", request(b"/", b"Sec-WebSocket-Protocol: chat"), False),
    ("http-1.0", request(line=b"GET / HTTP/1.0"), False),
    ("post", request(line=b"POST / HTTP/1.1"), False),
    ("absolute-form", request(b"http://127.0.0.1/"), False),
    ("upgrade-to-something-else", request(b"/", b"Upgrade: h2c", drop=(b"Upgrade",)), False),
    ("no-upgrade-header", request(drop=(b"Upgrade",)), False),
    ("plain-get", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", False),
    ("body-after-the-head", request(b"/", b"Content-Length: 2") + b"ab", False),
    (
        "frame-after-the-head",
        request() + b"\x81\x82abcd" + bytes([ord("4") ^ 0x61, ord("0") ^ 0x62]),
        False,
    ),
]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Records each scope; accepts a websocket, answers an HTTP request with its path."""
    if scope["type"] == "lifespan":
        return
    SCOPES.append(scope)
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept", "headers": [(b"x-app", b"1")]})
        with contextlib.suppress(Exception):
            await asyncio.wait_for(receive(), 0.5)
        return
    body = scope["path"].encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


SCOPES: list[dict[str, Any]] = []


@contextlib.asynccontextmanager
async def uvicorn_server(
    http: type, ws: type | str = ReaderProtocol, log_level: str = "warning"
) -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        http=http,
        ws=ws,
        ws_ping_interval=None,
        lifespan="off",
        log_config=None,
        log_level=log_level,
    )
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection; the answer's head and body (or what came before the
    server closed, or stopped answering for a second), the Date header left out."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        got = b""
        while b"\r\n\r\n" not in got:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 1)
            except TimeoutError:  # uvicorn leaves an upgrade to another protocol unanswered
                return got + b"<no answer>"
            if not chunk:
                break
            got += chunk
        head, sep, rest = got.partition(b"\r\n\r\n")
        if sep and b"content-length:" in head.lower():
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(rest) < length:
                chunk = await asyncio.wait_for(reader.read(65536), 5)
                if not chunk:
                    break
                rest += chunk
        lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"date:")]
        return b"\r\n".join(lines) + sep + rest
    finally:
        writer.close()


def comparable(scope: dict[str, Any]) -> dict[str, Any]:
    """A scope less what differs between two servers and two connections."""
    return {k: v for k, v in scope.items() if k not in ("client", "server", "state")}


@pytest.fixture
async def servers() -> AsyncIterator[tuple[int, int]]:
    base = limited_http_protocol(MAX_HEAD, MAX_HEADERS)
    fast_path = upgrade_protocol(base, MAX_HEAD, MAX_HEADERS)
    async with uvicorn_server(fast_path) as fast, uvicorn_server(base) as slow:
        yield fast, slow


async def test_the_fast_path_answers_as_uvicorn_does(servers: tuple[int, int]) -> None:
    """Each request: the same answer and the same scope from both servers, and taken by the
    fast path exactly when it is a plain, valid upgrade httptools parses the same way."""
    fast, slow = servers
    for name, data, taken in CASES:
        SCOPES.clear()
        before = UPGRADES["taken"]
        got_fast = await exchange(fast, data)
        scopes_fast = [comparable(s) for s in SCOPES]
        SCOPES.clear()
        assert UPGRADES["taken"] == before + taken, name
        got_slow = await exchange(slow, data)
        scopes_slow = [comparable(s) for s in SCOPES]
        assert UPGRADES["taken"] == before + taken, name
        assert got_fast == got_slow, (name, got_fast, got_slow)
        assert scopes_fast == scopes_slow, name
        if taken:
            assert got_fast.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), name
            assert scopes_fast[0]["type"] == "websocket", name


async def test_a_request_in_two_reads_takes_uvicorns_path(servers: tuple[int, int]) -> None:
    """Only a first read that holds the whole request is taken: one that comes in two goes
    to uvicorn's handling (and is answered the same)."""
    fast, _slow = servers
    before = UPGRADES["taken"]
    data = request()
    reader, writer = await asyncio.open_connection("127.0.0.1", fast)
    try:
        writer.write(data[:20])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(data[20:])
        got = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    assert got.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), got
    assert UPGRADES["taken"] == before


class _Lines(logging.Handler):
    """The messages of one logger, whatever propagation an earlier test's logging set up."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_the_accept_is_logged_as_uvicorn_logs_it() -> None:
    """The reader's 101 makes uvicorn's ``[accepted]`` line only when it is to be logged (its
    arguments cost ~1.5 µs): at info level it is the line uvicorn's own protocol logs."""
    base = limited_http_protocol(MAX_HEAD, MAX_HEADERS)
    data = request(b"/socket.io/?EIO=4&transport=websocket&x=%C3%A9")
    lines: dict[str, list[str]] = {}
    logger = logging.getLogger("uvicorn.error")
    for name, http, ws in [
        ("reader", upgrade_protocol(base, MAX_HEAD, MAX_HEADERS), ReaderProtocol),
        ("uvicorn", base, "websockets-sansio"),
    ]:
        handler = _Lines()
        logger.addHandler(handler)
        try:
            async with uvicorn_server(http, ws, "info") as port:
                got = await exchange(port, data)
        finally:
            logger.removeHandler(handler)
        assert got.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), (name, got)
        lines[name] = [
            # the client's port differs from one connection to the next
            message.split(" - ", 1)[1]
            for message in handler.messages
            if "[accepted]" in message
        ]
    assert lines["reader"] == [
        '"WebSocket /socket.io/?EIO=4&transport=websocket&x=%C3%A9" [accepted]'
    ]
    assert lines["reader"] == lines["uvicorn"]


def test_the_fast_path_is_declined_by_name_when_a_seam_it_needs_is_missing() -> None:
    from plugbus.api.app import uvicorn_options
    from plugbus.core.config import Config

    report = seams.check()
    assert upgrade_unavailable(ReaderProtocol, report) is None
    assert upgrade_unavailable(None, report) == "the direct websocket reader is not in use"
    gone = seams.UVICORN_UPGRADE.names[1]
    result = report.results[seams.UVICORN_UPGRADE]
    report.results[seams.UVICORN_UPGRADE] = {**result, "ok": False, "missing": [gone]}
    reason = upgrade_unavailable(ReaderProtocol, report)
    assert reason is not None and gone in reason
    # plugbus serve's options: the fast path's class, named as such, unless the reader is off
    http = uvicorn_options(Config())["http"]
    assert http.__qualname__.endswith("UpgradeProtocol"), http
    off = uvicorn_options(Config.model_validate({"server": {"websocket_writer": "compatible"}}))
    assert not off["http"].__qualname__.endswith("UpgradeProtocol"), off["http"]


async def test_health_and_the_start_up_log_say_which_upgrade_path_runs(serve: Any) -> None:
    """A real ``plugbus serve``: /health names the path and counts what it took, and the
    start-up log says it; with the direct reader off, both say uvicorn's path runs, and why."""
    server = serve({"server": {"log_level": "info"}})
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
    finally:
        writer.close()
    upgrade = _upgrade(server)
    assert upgrade["path"] == "plugbus" and upgrade["unavailable_reason"] is None, upgrade
    assert upgrade["taken_in_process"] == 1, upgrade
    header_lines = httpx.get(server.url + "/health", timeout=5).json()["wire"]["websocket_reader"][
        "header_lines"
    ]
    assert header_lines == {"match": "one regex", "unavailable_reason": None}, header_lines
    assert "header lines matched one by one" not in server.log()
    assert "wire: websocket upgrade requests parsed by plugbus" in server.log()

    off = serve({"server": {"websocket_writer": "compatible"}})
    upgrade = _upgrade(off)
    assert upgrade["path"] == "uvicorn", upgrade
    assert upgrade["unavailable_reason"] == "the direct websocket reader is not in use", upgrade
    assert (
        "wire: websocket upgrade requests go through uvicorn's HTTP request handling "
        "(the direct websocket reader is not in use)" in off.log()
    )


def _upgrade(server: Any) -> dict[str, Any]:
    wire = httpx.get(server.url + "/health", timeout=5).json()["wire"]
    upgrade: dict[str, Any] = wire["websocket_reader"]["upgrade"]
    return upgrade


# -- the header lines, matched at once ------------------------------------------------------

#: bytes that sit on the edges of websockets' header grammar
EDGE = b"aZ09-!~(:;, \t\r\n\x00\x01\x7f\x80\xff"
HEADER_LINE = st.one_of(
    st.sampled_from([b"Host: h", b"X-A: \t v \t", b"X-B:", b"Connection: keep-alive, Upgrade"]),
    st.binary(max_size=12).map(lambda b: bytes(EDGE[x % len(EDGE)] for x in b)),
)


@settings(max_examples=600, deadline=None, database=None, derandomize=True)
@given(st.lists(HEADER_LINE, max_size=8), st.booleans())
def test_the_header_lines_matched_at_once_are_judged_as_line_by_line(
    extra: list[bytes], deflate: bool
) -> None:
    """``parse_handshake`` checks a head's header lines with one regex (reader._HEADER_LINES)
    instead of websockets' name and value patterns line by line: the same verdict for any
    lines, bytes on the grammar's edges included."""
    from plugbus.api.wire import reader

    data = request(b"/", *extra)
    block = reader._HEADER_LINES
    assert block is not None  # websockets' grammar has the shape the block needs
    at_once = reader.parse_handshake(data, deflate)
    reader._HEADER_LINES = None
    try:
        line_by_line = reader.parse_handshake(data, deflate)
    finally:
        reader._HEADER_LINES = block
    assert at_once == line_by_line, data


def test_the_header_lines_are_matched_one_by_one_for_another_grammar() -> None:
    """A grammar of another shape (a value class with CR, a token class with ``:``, a
    pattern that is not one class) gets no block regex: each line is matched on its own."""
    import re

    from websockets.http11 import _token_re, _value_re

    from plugbus.api.wire.reader import _header_lines

    assert _header_lines(_token_re, _value_re) is not None
    assert _header_lines(_token_re, re.compile(rb"[\x09\x0d\x20-\x7e]*")) is None
    assert _header_lines(re.compile(rb"[a-z:]+"), _value_re) is None
    assert _header_lines(re.compile(rb"(?:[a-z]|-)+"), _value_re) is None
    assert _header_lines(_token_re, re.compile(rb"[\x21-\x7e]*")) is None  # no SP / HTAB
    assert _header_lines(None, _value_re) is None


def test_header_lines_matched_one_by_one_are_named_in_health_and_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When websockets' grammar does not allow the one regex, ``GET /health``'s wire report
    and the start-up log say the header lines are matched one by one, and why."""
    from plugbus.api import app as app_module
    from plugbus.api.app import create_app
    from plugbus.api.wire import engine
    from plugbus.core.config import load_config

    why = "websockets' header grammar is not of the shape one regex needs"
    monkeypatch.setattr(engine, "HEADER_LINES_UNAVAILABLE", why)
    monkeypatch.setattr(app_module, "HEADER_LINES_UNAVAILABLE", why)
    with caplog.at_level(logging.INFO, logger="plugbus"):
        sio = create_app(load_config(None)).sio  # type: ignore[attr-defined]
        app_module._log_wire(sio)
    header_lines = sio.eio.report.as_dict()["websocket_reader"]["header_lines"]
    assert header_lines == {"match": "line by line", "unavailable_reason": why}
    assert f"wire: handshake header lines matched one by one ({why})" in caplog.text
