"""Engine.IO v4 over HTTP long-polling: sending, receiving, closing, binary payloads.

Spec: socketio/engine.io-protocol README (4th version), "HTTP long-polling" and "Packet
encoding"; where the README is silent the spec's own test suite (``test-suite/``, which "lets
you check the compliance of a server implementation") is quoted.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from eio_raw import RS, SMALL, eio_path, open_polling, packets, poll, post, shared_server
from server_state import get_pending, session, until


@pytest.fixture
def default_server(request: pytest.FixtureRequest) -> Any:
    """The directory's shared server with the embedded defaults (tests/conftest.py's
    test pings: 2 s interval, 5 s timeout)."""
    return shared_server(request, "default")


@pytest.fixture
def small_server(request: pytest.FixtureRequest) -> Any:
    return shared_server(request, "small", SMALL)


async def answered(request: Any, what: str) -> httpx.Response:
    """Await an HTTP request; a timeout fails the test saying which request went unanswered."""
    try:
        resp: httpx.Response = await request
    except (httpx.TimeoutException, TimeoutError):
        raise AssertionError(f"no answer to {what}") from None
    return resp


async def sio_over_polling(http: httpx.AsyncClient) -> tuple[str, str]:
    """Engine.IO session + Socket.IO CONNECT to ``/`` over polling, greeting read; returns
    (engine sid, socket sid)."""
    eio_sid = (await open_polling(http))["sid"]
    assert (await post(http, eio_sid, "40")).status_code == 200
    got: list[str] = []
    deadline = time.monotonic() + 3
    while not any(p.startswith('42["welcome"') for p in got):
        assert time.monotonic() < deadline, got
        resp = await poll(http, eio_sid)
        assert resp.status_code == 200, resp.text
        got += packets(resp.text)
    [ack] = [p for p in got if p.startswith("40")]
    return eio_sid, json.loads(ack[2:])["sid"]


async def collect_until(
    http: httpx.AsyncClient, sid: str, done: Any, timeout: float = 3.0
) -> list[str]:
    """Poll (answering pings) until ``done(packets)``; returns every packet received."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        assert time.monotonic() < deadline, got
        resp = await poll(http, sid)
        assert resp.status_code == 200, resp.text
        new = packets(resp.text)
        got += new
        if "2" in new:
            await post(http, sid, "3")
    return got


async def test_polling_post_is_answered_ok(default_server: Any) -> None:
    """ "To indicate success, the server MUST return an HTTP 200 response, with the string `ok`
    in the response body." — lower case, exactly."""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        sid = (await open_polling(http))["sid"]
        resp = await post(http, sid, "40")
    assert resp.status_code == 200
    assert resp.text == "ok", resp.text


async def test_polling_post_payload_carries_several_packets(default_server: Any) -> None:
    """ "multiple packets might be concatenated in a single payload ... The packets are separated
    by the record separator character: \\x1e" — a CONNECT and an EVENT asking for an ack in one
    POST are both handled, in order."""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        sid = (await open_polling(http))["sid"]
        resp = await post(http, sid, "40" + RS + '421["my-rooms"]')
        assert resp.status_code == 200, resp.text
        got = await collect_until(http, sid, lambda ps: any(p.startswith("431") for p in ps))
    assert got[0].startswith("40{"), got
    [ack] = [p for p in got if p.startswith("431")]
    assert isinstance(json.loads(ack[3:]), list), ack


async def test_polling_get_payload_separates_packets_with_record_separator(
    default_server: Any,
) -> None:
    """ "Format: <packet type>[<data>]<separator><packet type>[<data>]..." with separator
    \\x1e — every packet of a GET body is a whole packet, in the order sent (the CONNECT
    answer before the greeting)."""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        sid = (await open_polling(http))["sid"]
        await post(http, sid, "40")
        got = await collect_until(http, sid, lambda ps: len([p for p in ps if p != "2"]) >= 2)
    got = [p for p in got if p != "2"]
    assert got[0].startswith("40{") and json.loads(got[0][2:])["sid"], got
    assert got[1] == '42["welcome","Welcome to server"]', got


async def test_polling_invalid_packet_closes_session(default_server: Any) -> None:
    """Spec test suite, "closes the session upon invalid packet format": a POST of ``abc``
    is refused (400) and the session is gone (the next GET gets 400)."""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        sid = (await open_polling(http))["sid"]
        try:
            resp = await post(http, sid, "abc")
            assert resp.status_code == 400, (resp.status_code, resp.text)
        except httpx.TransportError:
            pass  # a server may also drop the request
        after = await poll(http, sid, timeout=2)
    assert after.status_code == 400, after.text


async def test_polling_concurrent_gets_close_session(plugbus_server: Any) -> None:
    """ "To ensure packet ordering, a client MUST NOT have more than one active `GET` request.
    Should it happen, the server MUST return an HTTP 400 error status and close the session."
    The spec's test suite: the first GET gets a close packet ``1``, the second 400, and the
    session is closed."""
    server = await plugbus_server(record_hooks=False)
    async with httpx.AsyncClient(base_url=server.url) as http:
        sid = (await open_polling(http))["sid"]
        first = asyncio.create_task(poll(http, sid))
        await until(get_pending(server, sid), "the first GET pending")
        second = await answered(
            http.get(eio_path(sid=sid, t="burst"), timeout=1),
            "the second concurrent GET within 1 s",
        )
        first_resp = await answered(asyncio.wait_for(first, 2), "the first GET within 2 s")
        after = await answered(poll(http, sid, timeout=1), "a GET after both (session alive?)")
    assert second.status_code == 400, (second.status_code, second.text)
    assert (first_resp.status_code, first_resp.text) == (200, "1")
    assert after.status_code == 400, after.text


async def test_polling_concurrent_posts_close_session(plugbus_server: Any) -> None:
    """ "To ensure packet ordering, a client MUST NOT have more than one active `POST` request.
    Should it happen, the server MUST return an HTTP 400 error status and close the session."
    The first POST is held open by sending half its body over a raw TCP connection."""
    server = await plugbus_server(record_hooks=False)
    async with httpx.AsyncClient(base_url=server.url) as http:
        sid = (await open_polling(http))["sid"]
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(
                (
                    f"POST {eio_path(sid=sid)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    "Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 40\r\n\r\n"
                    "4hel"
                ).encode()
            )
            await writer.drain()
            await until(lambda: session(server, sid).posting, "the first POST under way")
            second = await answered(post(http, sid, "4second", timeout=2), "the second POST")
            after = await answered(
                poll(http, sid, timeout=1), "a GET after the second POST within 1 s (session alive)"
            )
        finally:
            writer.close()
    assert second.status_code == 400, (second.status_code, second.text)
    assert after.status_code == 400, after.text


async def test_polling_cancelled_get_closes_session(plugbus_server: Any) -> None:
    """Spec test suite, "closes the session upon cancelled polling request": a client that
    drops its pending GET has lost the packets that GET may have carried, so the session is
    closed (the next GET gets 400)."""
    server = await plugbus_server(record_hooks=False)
    async with httpx.AsyncClient(base_url=server.url) as http:
        sid = (await open_polling(http))["sid"]
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET {eio_path(sid=sid)} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        await until(get_pending(server, sid), "the GET pending")
        writer.close()
        await until(lambda: session(server, sid) is None, "the session closed")
        after = await answered(
            poll(http, sid, timeout=1), "a GET after the cancelled one within 1 s (session alive)"
        )
    assert after.status_code == 400, (after.status_code, after.text)


async def test_polling_close_packet_from_client_closes_session(plugbus_server: Any) -> None:
    """ "close | 1 | Used to indicate that a transport can be closed." The spec's test suite,
    "forcefully closes the session": a POST of ``1`` answers the pending GET with a noop ``6``
    at once, and the session is gone (the next GET gets 400)."""
    server = await plugbus_server(record_hooks=False)
    async with httpx.AsyncClient(base_url=server.url) as http:
        sid = (await open_polling(http))["sid"]
        pending = asyncio.create_task(poll(http, sid))
        await until(get_pending(server, sid), "the GET pending")
        closing = await post(http, sid, "1")
        got = await answered(
            asyncio.wait_for(pending, 1), "the pending GET within 1 s of the close"
        )
        after = await answered(poll(http, sid, timeout=1), "a GET after the close within 1 s")
    assert closing.status_code == 200, closing.text
    assert (got.status_code, got.text) == (200, "6")
    assert after.status_code == 400, after.text


async def test_polling_forced_close_answers_pending_get_at_once(plugbus_server: Any) -> None:
    """A session the server closes (here: kicked over REST, ``DELETE /connections/{sid}``)
    ends its pending GET at once with the packets that say so — "close | 1 | Used to indicate
    that a transport can be closed" — not by a 400 on a later request: well under 100 ms."""
    server = await plugbus_server(record_hooks=False)
    async with httpx.AsyncClient(base_url=server.url) as http:
        eio_sid, sio_sid = await sio_over_polling(http)
        pending = asyncio.create_task(poll(http, eio_sid))
        await until(get_pending(server, eio_sid), "the GET pending")
        kicked = await http.delete(f"/connections/{sio_sid}")
        kicked_at = time.monotonic()
        got = await answered(asyncio.wait_for(pending, 3), "the pending GET within 3 s of the kick")
        waited = time.monotonic() - kicked_at
    assert kicked.status_code == 200, kicked.text
    assert got.status_code == 200, (got.status_code, got.text)
    assert waited < 0.1, f"the pending GET was answered {waited:.3f} s after the kick"
    got_packets = packets(got.text)
    assert got_packets and set(got_packets) <= {"41", "1"}, got_packets


async def test_polling_kick_closes_the_engine_session(default_server: Any) -> None:
    """A kick closes the connection, not only its namespace: after the DISCONNECT the
    Engine.IO session ends too ("close | 1 | Used to indicate that a transport can be closed"),
    as Node's ``socket.disconnect(true)`` does — a GET after the kick gets the close packet or
    400, not the next ping. (Socket.IO: after a DISCONNECT "The low-level connection MAY be kept
    alive if the client is connected to another namespace"; this client is in no other.)"""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        eio_sid, sio_sid = await sio_over_polling(http)
        assert (await http.delete(f"/connections/{sio_sid}")).status_code == 200
        seen: list[str] = []
        deadline = time.monotonic() + 2.5  # a ping (every 2 s) would have come by then
        while time.monotonic() < deadline:
            try:
                resp = await poll(http, eio_sid, timeout=deadline - time.monotonic())
            except httpx.TimeoutException:
                break
            if resp.status_code == 400:
                return
            seen += packets(resp.text)
            if "1" in seen:
                return
    raise AssertionError(f"the engine session outlived the kick; GETs returned {seen!r}")


async def test_polling_binary_packets_are_base64_with_b_prefix(default_server: Any) -> None:
    """ "Binary payloads MUST be base64-encoded and prefixed with a `b` character" — both ways:
    a BINARY_EVENT posted with its attachment as ``bAQIDBA==`` comes back (broadcast to the
    sender) with its attachment as ``bAQIDBA==``."""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        sid, _ = await sio_over_polling(http)
        sent = await post(
            http,
            sid,
            '451-["broadcast",{"message":{"_placeholder":true,"num":0},'
            '"include_self":true}]' + RS + "bAQIDBA==",
        )
        assert sent.status_code == 200, sent.text
        got = await collect_until(http, sid, lambda ps: any(p.startswith("b") for p in ps))
    got = [p for p in got if p != "2"]
    i = got.index('451-["receive-message",{"_placeholder":true,"num":0}]')
    assert got[i + 1] == "bAQIDBA==", got


async def test_polling_binary_payload_is_sent_as_utf8_text(default_server: Any) -> None:
    """ "Binary payloads MUST be base64-encoded" and "The character encoding is UTF-8 for plain
    text and for base64-encoded binary payloads": a polling body that carries binary is
    text, so it is labelled as text (the spec's sample session: ``Content-Type: text/plain;
    charset=UTF-8``). The header rule for binary ("MUST include a `Content-Type:
    application/octet-stream` header") is for raw binary bodies, which v4 polling never sends."""
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        sid, _ = await sio_over_polling(http)
        await post(
            http,
            sid,
            '451-["broadcast",{"message":{"_placeholder":true,"num":0},'
            '"include_self":true}]' + RS + "bAQIDBA==",
        )
        resp = await poll(http, sid)
        while "bAQIDBA==" not in resp.text:
            assert resp.status_code == 200
            resp = await poll(http, sid)
    ctype = resp.headers.get("content-type", "").replace(" ", "").lower()
    assert ctype == "text/plain;charset=utf-8", ctype
    resp.content.decode("utf-8")


async def test_polling_post_over_max_payload_is_refused(small_server: Any) -> None:
    """ "maxPayload: The maximum number of bytes per chunk" (here 1000): a POST body larger
    than that is refused (400 or 413), never answered ``ok``."""
    async with httpx.AsyncClient(base_url=small_server.url) as http:
        data = await open_polling(http)
        assert data["maxPayload"] == 1000
        resp = await answered(
            post(http, data["sid"], "4" + "x" * 2000, timeout=1), "a 2001-byte POST within 1 s"
        )
    assert resp.status_code in (400, 413), (resp.status_code, resp.text)
