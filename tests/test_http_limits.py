"""HTTP request heads are bounded (issue #15 item 3): a head over ``max_header_bytes`` or with
more than ``max_header_count`` headers gets a 431 problem at once and its connection is closed,
before the server has read (or parsed) the rest; everyone else goes on. Raw sockets, because an
HTTP client library refuses to send such requests."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
from conftest import Server

LIMIT = 16_384  # the shipped default (config.yaml)


def _connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a content-length body: status, headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the body"
        body += chunk
    return status, headers, body[:length]


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _assert_431(status: int, headers: dict[str, str], body: bytes, setting: str) -> None:
    assert status == 431
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    problem = json.loads(body)
    assert problem["status"] == 431
    assert problem["code"] == "headers_too_large"
    assert problem["details"]["setting"] == setting
    assert setting in problem["detail"]


def test_a_head_over_the_byte_limit_gets_431_before_the_rest_is_read(
    default_server: Server,
) -> None:
    """The original attack streamed a 150 MB header; the server must answer after ~16 KiB and
    close, so the attacker cannot make it read (and parse) the rest."""
    sock = _connect(default_server)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent, refused = 0, False
    chunk = b"a" * 8192
    try:
        while sent < 50_000_000:
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        refused = True
    except TimeoutError:
        # the server stopped reading: it answered and closed; the kernel buffers are full
        refused = True
    assert refused, "the server kept reading a 50 MB header"
    # what got through: the limit plus what the socket buffers held, far below the 50 MB sent
    assert sent < 16 * 1024 * 1024
    sock.close()
    # everyone else is served
    assert httpx.get(default_server.url + "/health", timeout=5).status_code == 200


def test_the_431_names_the_setting_and_closes(default_server: Server) -> None:
    with _connect(default_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (LIMIT + 100))
        status, headers, body = _read_response(sock)
        _assert_431(status, headers, body, "server.limits.max_header_bytes")
        assert _closed_by_server(sock)


def test_a_long_request_line_counts_against_the_head(default_server: Server) -> None:
    with _connect(default_server) as sock:
        sock.sendall(b"GET /health?" + b"q" * (LIMIT + 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        _assert_431(*_read_response(sock), "server.limits.max_header_bytes")


def test_a_head_under_the_limit_is_served(default_server: Server) -> None:
    with _connect(default_server) as sock:
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (LIMIT - 200) + b"\r\n\r\n"
        )
        status, _, body = _read_response(sock)
        assert status == 200, body
        assert json.loads(body)["status"] == "ok"


def test_too_many_headers_get_431(default_server: Server) -> None:
    with _connect(default_server) as sock:
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        _assert_431(*_read_response(sock), "server.limits.max_header_count")
        assert _closed_by_server(sock)


def test_exactly_the_header_limit_is_served(default_server: Server) -> None:
    with _connect(default_server) as sock:
        # Host plus 99 others: 100 headers, the shipped limit
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(99))
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        status, _, _ = _read_response(sock)
        assert status == 200


def test_each_keep_alive_request_has_its_own_budget(default_server: Server) -> None:
    """Two requests of 10 KiB heads on one connection: 20 KiB together, each within the limit."""
    with _connect(default_server) as sock:
        request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 10_240 + b"\r\n\r\n"
        for _ in range(2):
            sock.sendall(request)
            status, headers, _ = _read_response(sock)
            assert status == 200
            assert headers.get("connection", "keep-alive") != "close"


def test_the_body_does_not_count_against_the_head(default_server: Server) -> None:
    """A small head and a 60 KB body sent in one write: the body is the body limit's business
    (max_message_bytes), not the head's."""
    body = json.dumps({"room": "lobby", "message": "x" * 60_000}).encode()
    head = (
        b"POST /events/nope HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with _connect(default_server) as sock:
        sock.sendall(head + body)
        status, _, _ = _read_response(sock)
        assert status != 431


def test_a_websocket_handshake_with_a_huge_head_gets_431(default_server: Server) -> None:
    with _connect(default_server) as sock:
        sock.sendall(
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: "
            + b"c" * (LIMIT + 1)
            + b"\r\n\r\n"
        )
        _assert_431(*_read_response(sock), "server.limits.max_header_bytes")


def test_others_keep_their_latency_while_heads_are_refused(default_server: Server) -> None:
    """Attackers in a loop sending oversized heads; a canary's /health round trips stay fast."""
    stop = threading.Event()
    refused = [0]

    def attack() -> None:
        while not stop.is_set():
            try:
                with _connect(default_server) as sock:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 200_000)
                    status, _, _ = _read_response(sock)
                    if status == 431:
                        refused[0] += 1
            except OSError:
                pass

    threads = [threading.Thread(target=attack, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        worst = 0.0
        with httpx.Client(timeout=5) as client:
            for _ in range(30):
                start = time.monotonic()
                assert client.get(default_server.url + "/health").status_code == 200
                worst = max(worst, time.monotonic() - start)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert refused[0] > 0
    assert worst < 1.0, f"a canary request took {worst:.2f} s"


def test_zero_switches_the_limits_off(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve({"server": {"limits": {"max_header_bytes": 0, "max_header_count": 0}}})
    with _connect(server) as sock:
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (LIMIT * 2) + b"\r\n" + many
        )
        sock.sendall(b"\r\n")
        status, _, _ = _read_response(sock)
        assert status == 200


def test_health_reports_the_http_seam(default_server: Server) -> None:
    seams = httpx.get(default_server.url + "/health").json()["wire"]["seams"]
    http = [s for s in seams if "request's head" in s["why"]]
    assert len(http) == 1
    assert http[0]["package"] == "uvicorn" and http[0]["ok"] is True
