"""The websocket writers of the wire (plugbus/api/wire/writers.py): the direct path straight to
uvicorn's transport and the ASGI path that serves everywhere else, how each is chosen and
reported, the hand-built ack text and the JSON module of the Socket.IO door."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest
import socketio
import websockets
from socketio import packet as sio_packet
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from plugbus.api import wire_json
from plugbus.api.wire import seams
from plugbus.api.wire.engine import EngineServer, WireSettings
from plugbus.api.wire.session import TimerQueue
from plugbus.api.wire.writers import (
    DirectWriter,
    LeanReceiveQueue,
    LeanWritableFlag,
    encode_frame,
)


def parse_frame(data: bytes) -> Frame:
    """Parse one server frame with the websockets library's own parser (unmasked, no extensions)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None, extensions=[])
    try:
        next(parser)
        while True:
            parser.send(None)
    except StopIteration as done:
        frame: Frame = done.value
    return frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_encode_frame_is_a_frame_the_websockets_parser_reads_back(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)  # multi-byte UTF-8: the length is in bytes
    frame = parse_frame(encode_frame(text))
    assert (frame.opcode, frame.fin, frame.rsv1) == (Opcode.TEXT, True, False)
    assert frame.data.decode() == text
    blob = bytes(range(256)) * (size // 256) + b"\x00" * (size % 256)
    frame = parse_frame(encode_frame(blob))
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.BINARY, True, blob)


@pytest.mark.parametrize("namespace", ["/", "/chat"])
def test_the_hand_built_ack_is_the_text_python_socketio_encodes(namespace: str) -> None:
    reply = {
        "ok": True,
        "data": {"id": "ab" * 16, "room": "lobby", "recipients": 3, "n": [1, None]},
    }
    prefix = "43" if namespace == "/" else f"43{namespace},"
    ours = f"{prefix}17{wire_json.dumps_or_none([reply])}"
    theirs = (
        "4" + sio_packet.Packet(sio_packet.ACK, namespace=namespace, id=17, data=[reply]).encode()
    )
    assert ours == theirs


def test_wire_json_reads_what_engineio_json_reads() -> None:
    assert wire_json.loads('{"a":[1,2.5,"é",null,true]}') == {"a": [1, 2.5, "é", None, True]}
    assert wire_json.loads(str(2**63 - 1)) == 2**63 - 1
    assert wire_json.loads(str(2**70 + 1)) == float(
        2**70
    )  # past 64 bits: a float, as in JavaScript
    assert isinstance(wire_json.loads("1" * 200), float)  # never a huge int built from client input
    nan = wire_json.loads("[NaN]")[0]
    assert nan != nan
    with pytest.raises(ValueError, match="Expecting"):
        wire_json.loads('{"a":')


def test_wire_json_dumps_compact_and_leaves_binary_to_python_socketio() -> None:
    assert (
        wire_json.dumps({"a": [1, "x"], 2: None}, separators=(",", ":")) == '{"a":[1,"x"],"2":null}'
    )
    assert json.loads(wire_json.dumps({"t": "é"})) == {"t": "é"}
    assert wire_json.dumps(2**70) == str(2**70)
    assert wire_json.dumps_or_none([{"blob": b"\x00"}]) is None
    assert wire_json.dumps({"x": 1}, indent=2) == json.dumps(
        {"x": 1}, indent=2
    )  # other options: stdlib


async def test_server_pings_keep_a_direct_websocket_alive(serve, connect) -> None:
    # python-socketio's client drops a connection that saw no PING for ping_interval +
    # ping_timeout; the direct socket sends its pings from a timer, not a task.
    server = serve({"server": {"ping_interval": 1, "ping_timeout": 0.6}})
    client = await connect(server, transports=["websocket"], wait_welcome=True)
    await asyncio.sleep(3)
    assert client.sio.connected
    ack = await client.call("join-room", {"room": "still-here"})
    assert ack["ok"] is True
    assert httpx.get(server.url + "/health").json()["connections"] == 1


async def _join_over_raw_websocket(ws: websockets.ClientConnection, room: str) -> None:
    """Engine.IO OPEN, Socket.IO CONNECT and an acked join-room, by hand on ``ws``; only the
    greeting may come before the ack."""
    assert (await ws.recv()).startswith("0{")  # Engine.IO OPEN
    await ws.send("40")
    assert (await ws.recv()).startswith("40{")  # Socket.IO CONNECT
    await ws.send(f'420["join-room",{{"room":"{room}"}}]')
    before = []
    while not (msg := await ws.recv()).startswith("430"):
        before.append(msg)
    assert all(m.startswith('42["welcome"') for m in before), before
    assert len(before) <= 1
    assert json.loads(msg[3:])[0]["ok"] is True


async def _raw_socketio_client(server, room: str) -> websockets.ClientConnection:
    """A websocket client that joins ``room`` and then stops reading: a tiny receive buffer,
    and the websockets library stops reading from the socket once one message is waiting."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    ws = await websockets.connect(
        f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket",
        sock=sock,
        max_queue=1,
        compression=None,
    )
    await _join_over_raw_websocket(ws, room)
    return ws


async def test_a_client_that_stops_reading_is_dropped_and_the_others_get_everything(
    serve, connect
) -> None:
    server = serve(
        {
            "server": {"limits": {"send_buffer_bytes": 65536}},
            "plugins": {"disabled": ["moderation"]},
        }
    )  # 60 KB messages, no length rule
    reader = await connect(server, transports=["websocket"], wait_welcome=True)
    await reader.call("join-room", {"room": "firehose"})
    stalled = await _raw_socketio_client(server, "firehose")
    health = httpx.get(server.url + "/health").json()
    assert health["connections"] == 2
    count, body = 150, "x" * 60_000  # ~9 MB: more than the kernel buffers on both sides hold
    async with httpx.AsyncClient(base_url=server.url) as rest:
        for n in range(count):
            resp = await rest.post("/rooms/firehose/messages", json={"message": f"{n}:{body}"})
            assert resp.status_code == 200, resp.text
    got = await reader.wait_for("receive-message", count=count, timeout=30)
    assert [m.split(":", 1)[0] for m in got] == [str(n) for n in range(count)]  # all, in order
    deadline = asyncio.get_running_loop().time() + 10
    while httpx.get(server.url + "/health").json()["connections"] != 1:
        assert asyncio.get_running_loop().time() < deadline, "the stalled client was not dropped"
        await asyncio.sleep(0.1)
    assert "dropping a slow websocket client" in server.log()
    assert reader.sio.connected
    ack = await reader.call("send-message", {"message": "after", "roomID": "firehose"})
    assert ack["ok"] is True and ack["data"]["recipients"] == 1
    await stalled.close()


async def test_a_long_polling_client_upgrades_and_keeps_its_order(serve) -> None:
    # Sends made while the transport upgrades are queued, then flushed through the direct
    # writer before anything newer: 30 acked sends straddle the upgrade.
    server = serve()
    client = socketio.AsyncClient(reconnection=False)
    got: list[str] = []
    client.on("receive-message", lambda m: got.append(m))
    await client.connect(server.url, transports=["polling", "websocket"], wait_timeout=5)
    try:
        await client.call("join-room", {"room": "upgrade"})
        for n in range(30):
            await client.emit("send-message", {"message": str(n), "roomID": "upgrade"})
            await asyncio.sleep(0.01)
        deadline = asyncio.get_running_loop().time() + 5
        while len(got) < 30 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert got == [str(n) for n in range(30)]
        assert client.transport() == "websocket"
    finally:
        await client.disconnect()


async def test_the_lean_receive_queue_hands_items_over_in_order() -> None:
    queue = LeanReceiveQueue(["first"])
    assert (queue.qsize(), queue.empty()) == (1, False)
    assert await queue.get() == "first"
    assert queue.empty()
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    queue.put_nowait("second")
    queue.put_nowait("third")
    assert await waiting == "second"
    assert await queue.get() == "third"
    cancelled = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    queue.put_nowait("after a cancelled reader")  # no waiter left behind to trip over
    assert await asyncio.wait_for(queue.get(), 1) == "after a cancelled reader"


async def test_the_lean_writable_flag_holds_senders_until_set() -> None:
    flag = LeanWritableFlag(True)
    assert flag.is_set()
    assert await asyncio.wait_for(flag.wait(), 1) is True  # set: no waiting
    flag.clear()
    first, second = asyncio.ensure_future(flag.wait()), asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0.01)
    assert not first.done() and not second.done()
    flag.set()
    assert await asyncio.wait_for(asyncio.gather(first, second), 1) == [True, True]
    flag.clear()
    cancelled = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    flag.set()  # a cancelled waiter left behind is skipped
    assert flag.is_set()


class _Timed:
    """Stands in for an EngineSession in a TimerQueue: a sid and the deadline it holds."""

    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.due: float | None = None


async def test_a_timer_queue_fires_due_entries_in_order_and_skips_cancelled_or_moved_ones() -> None:
    fired: list[str] = []
    queue = TimerQueue(0.3, lambda s: s.due, lambda s: fired.append(s.sid))  # type: ignore[arg-type, attr-defined]

    async def until(expected: list[str]) -> None:
        for _ in range(300):
            if len(fired) >= len(expected):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # and nothing more
        assert fired == expected

    a, b, c, d = (_Timed(name) for name in "abcd")
    for timed in (a, b, c, d):
        timed.due = queue.add(timed)  # type: ignore[arg-type]
    b.due = None  # cancelled
    await asyncio.sleep(0.01)
    c.due = queue.add(c)  # type: ignore[arg-type]  # moved later: its first entry is stale
    await asyncio.sleep(0)
    assert fired == []  # nothing is due before its delay
    await until(["a", "d", "c"])
    e = _Timed("e")
    e.due = queue.add(e)  # type: ignore[arg-type]  # the queue re-arms after running empty
    await until(["a", "d", "c", "e"])
    queue.stop()


def test_session_ids_are_unguessable_url_safe_and_distinct_across_refills() -> None:
    engine = EngineServer(WireSettings(), seams.check())
    ids = [engine.generate_id() for _ in range(1000)]  # ~4 refills of the random pool
    assert len(set(ids)) == len(ids)
    for sid in ids:
        assert len(sid) == 20 and sid.replace("-", "a").replace("_", "a").isalnum()


@pytest.mark.parametrize("compression", [False, True])
async def test_websocket_compression_is_off_unless_configured_and_works_both_ways(
    serve, compression
) -> None:
    # When a client negotiated permessage-deflate, single sends (acks) are compressed through
    # the websockets protocol object and broadcasts go out as uncompressed frames (RSV1 clear):
    # the client reads both.
    server = serve({"server": {"websocket_compression": compression}})
    url = f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket"
    async with websockets.connect(url, compression="deflate") as ws:
        negotiated = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
        assert ("permessage-deflate" in negotiated) is compression
        await _join_over_raw_websocket(ws, "deflate")  # the ack: compressed when negotiated
        resp = httpx.post(server.url + "/rooms/deflate/messages", json={"message": "squeeze " * 50})
        assert resp.status_code == 200, resp.text
        assert json.loads((await ws.recv())[2:]) == ["receive-message", "squeeze " * 50]


FALLBACK_RUNNER = """
import asyncio, sys, uvicorn
from plugbus.api.app import create_app
from plugbus.core import load_config

ws, wrap, writer = sys.argv[2], sys.argv[3] == "wrap", sys.argv[4]
loaded = load_config()
loaded.config.server.ping_interval = 0.5
loaded.config.server.ping_timeout = 0.5
loaded.config.server.websocket_writer = writer
app = create_app(loaded)
asgi = app.asgi
if wrap:
    # a user's tracing middleware: five lines that wrap `send`
    async def asgi(scope, receive, send, inner=app.asgi):
        async def traced(message):
            await send(message)
        await inner(scope, receive, traced)

server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=int(sys.argv[1]),
                                       ws=ws, lifespan="on", log_level="warning"))
asyncio.run(server.serve())
"""


def _start_runner(tmp_path, ws: str, wrap: bool, writer: str = "auto"):
    import subprocess
    import sys

    from tests.conftest import free_port

    runner = tmp_path / "fallback.py"
    runner.write_text(FALLBACK_RUNNER)
    port = free_port()
    log = tmp_path / f"fallback-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-W",
                "ignore::DeprecationWarning",
                str(runner),
                str(port),
                ws,
                "wrap" if wrap else "plain",
                writer,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, port, log


async def _wait_health(proc, port, log) -> dict:
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        try:
            resp = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            if resp.status_code == 200:
                return resp.json()
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and asyncio.get_running_loop().time() < deadline, log.read_text()
        await asyncio.sleep(0.1)


async def _chat_over_websocket(port: int) -> None:
    """Acks, a broadcast in order, and pings past ping_interval + ping_timeout."""
    client = socketio.AsyncClient(reconnection=False)
    got: list[str] = []
    client.on("receive-message", lambda m: got.append(m))
    await client.connect(f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=5)
    try:
        assert (await client.call("join-room", {"room": "legacy"}, timeout=5))["ok"] is True
        for n in range(20):
            ack = await client.call(
                "send-message", {"message": str(n), "roomID": "legacy"}, timeout=5
            )
            assert ack["ok"] is True
        await asyncio.sleep(1.5)  # past ping_interval + ping_timeout: pings kept it alive
        assert client.connected
        assert got == [str(n) for n in range(20)]
    finally:
        await client.disconnect()


@pytest.mark.parametrize(
    ("ws", "wrap", "reason"),
    [
        (
            "websockets",
            False,
            "websockets are served by uvicorn.protocols.websockets.websockets_impl.WebSocketProtocol",
        ),
        (
            "websockets-sansio",
            True,
            "the ASGI send callable is not uvicorn's (an ASGI middleware wraps it)",
        ),
    ],
)
async def test_where_the_direct_writer_cannot_be_had_the_asgi_writer_serves_and_it_is_reported(
    tmp_path, ws: str, wrap: bool, reason: str
) -> None:
    # uvicorn's legacy `websockets` implementation, or a middleware that wraps `send`: the
    # ASGI writer carries acks, broadcasts and pings in order, and /health and the log say why.
    proc, port, log = _start_runner(tmp_path, ws, wrap)
    try:
        await _wait_health(proc, port, log)
        await _chat_over_websocket(port)
        wire = httpx.get(f"http://127.0.0.1:{port}/health").json()["wire"]["websocket_writer"]
        assert wire["setting"] == "auto"
        assert wire["fallbacks"] == {reason: 1}
        assert wire["connections"] == {"direct": 0, "compatible": 0}  # the client has left
        assert log.read_text().count(reason) == 1, log.read_text()[-2000:]
    finally:
        proc.terminate()
        proc.wait(10)


async def test_websocket_writer_direct_refuses_a_websocket_it_cannot_write_directly(
    tmp_path,
) -> None:
    proc, port, log = _start_runner(tmp_path, "websockets-sansio", True, writer="direct")
    try:
        await _wait_health(proc, port, log)
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
        ) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        wire = httpx.get(f"http://127.0.0.1:{port}/health").json()["wire"]["websocket_writer"]
        assert wire["setting"] == "direct" and wire["path"] == "direct"
        assert "websocket refused" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)


async def test_plugbus_serve_with_the_shipped_config_takes_the_direct_path(serve) -> None:
    server = serve()
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(server.url, transports=["websocket"], wait_timeout=5)
    try:
        health = httpx.get(server.url + "/health").json()
        wire = health["wire"]["websocket_writer"]
        assert (wire["setting"], wire["path"], wire["direct_available"]) == ("auto", "direct", True)
        assert wire["connections"] == {"direct": 1, "compatible": 0} and wire["fallbacks"] == {}
        assert all(seam["ok"] and seam["version_verified"] for seam in health["wire"]["seams"])
        assert health["sessions"] == 1
    finally:
        await client.disconnect()


async def test_the_connect_ack_and_the_greeting_leave_in_one_write(plugbus_server) -> None:
    """The direct writer keeps a connection's frames to the end of the loop turn: the CONNECT
    ack and the welcome greeting reach the socket in one write, the ack first (a system call
    each cost more than framing both)."""
    server = await plugbus_server()
    url = f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket"
    async with websockets.connect(url) as ws:
        opened = json.loads((await ws.recv())[1:])
        session = server.app.sio.eio.session_of(opened["sid"])
        writer = session.writer
        assert isinstance(writer, DirectWriter)
        real = writer._transport
        writes: list[bytes] = []

        class Counting:
            """uvloop's transport, with each write recorded."""

            def __getattr__(self, name: str) -> object:
                return getattr(real, name)

            def write(self, data: bytes) -> None:
                writes.append(bytes(data))
                real.write(data)

        writer._transport = Counting()
        await ws.send("40")
        ack = await asyncio.wait_for(ws.recv(), 5)
        greeting = await asyncio.wait_for(ws.recv(), 5)
    assert isinstance(ack, str) and ack.startswith('40{"sid":'), ack
    assert isinstance(greeting, str) and greeting.startswith('42["welcome",'), greeting
    assert writes[:1] == [encode_frame(ack) + encode_frame(greeting)], writes


@pytest.mark.parametrize(
    "seam",
    [seams.UVICORN_READER, seams.WEBSOCKETS_PARSER, seams.ASYNCIO_TASKS],
    ids=lambda s: s.names[-1],
)
def test_the_direct_reader_is_declined_by_name_when_a_seam_it_needs_is_missing(seam) -> None:
    from plugbus.api.wire.engine import reader_protocol
    from plugbus.api.wire.reader import ReaderProtocol

    report = seams.check()
    assert reader_protocol("auto", report) == (ReaderProtocol, None)
    gone = seam.names[-1]
    report.results[seam] = {**report.results[seam], "ok": False, "missing": [gone]}
    cls, reason = reader_protocol("auto", report)
    assert cls is None and reason is not None and gone in reason
