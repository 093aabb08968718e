"""Frame fuzzing (the reliability suite of issue #15): random raw Engine.IO / Socket.IO frames,
over websocket and over long-polling, against one real server.

Each generated case opens a fresh session, completes the handshakes, sends one to three frames
drawn from a grammar of Engine.IO and Socket.IO packets (valid, mutated, truncated, with huge
or negative counts and ids, odd namespaces, deep nesting, binary frames, random text), then
probes the session with a second CONNECT to the default namespace. Every case must end one of
two ways within a few seconds: the server closed the offender, or the session still answers
(``40…`` or ``44…``) — a session that neither answers nor closes is *wedged*, the failure this
suite exists to catch. Throughout, a canary in its own room keeps sending acknowledged messages;
its worst round trip, the server's memory growth and its log are asserted at the end: no
traceback, one line per refused session at most.

hypothesis draws the frames with a fixed seed (``derandomize``) and a fixed number of examples,
so a run costs the same every time; set ``PLUGBUS_FUZZ_EXAMPLES`` to search longer.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Server, start_server
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

EXAMPLES = int(os.environ.get("PLUGBUS_FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
#: a session that neither answers the probe nor is closed within this is wedged
PROBE_SECONDS = 4.0
RECORD_SEPARATOR = "\x1e"


# -- the frame grammar ----------------------------------------------------------------------

VALID = [
    '42["send-message",{"message":"hi","roomID":"fuzz"}]',
    '421["join-room",{"room":"fuzz"}]',
    '4212["room-members",{"room":"fuzz"}]',
    '451-["send-message",{"message":{"_placeholder":true,"num":0},"roomID":"fuzz"}]',
    '43/admin,1["x"]',
    "40",
    "41",
    '40{"token":"x"}',
    "3",
    "2",
    "5",
    "6",
]
NUMBERS = st.one_of(
    st.integers(min_value=-5, max_value=20),
    st.integers(min_value=10**8, max_value=10**30),
).map(str) | st.just("9" * 5000)  # a 5000-digit ack id was one of the original attacks
JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(['"\\ud800"', '{"_placeholder":true,"num":99}', '{"_placeholder":1}']),
)


def _json(value: Any) -> str:
    import json

    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


JSON_TEXT = st.one_of(
    st.recursive(
        JSON_LEAF,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=8,
    ).map(_json),
    st.integers(min_value=1, max_value=20_000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(min_value=1, max_value=20_000).map(lambda depth: "[" * depth),
    st.text(max_size=40),
)
SOCKETIO = st.builds(
    lambda kind, attachments, nsp, ack, data: f"4{kind}{attachments}{nsp}{ack}{data}",
    st.sampled_from("0123456789x"),
    st.one_of(st.just(""), NUMBERS.map(lambda n: n + "-")),
    st.sampled_from(["", "/", "/admin,", "/nope,", "/,", ",", "/a/b,"]),
    st.one_of(st.just(""), NUMBERS),
    st.one_of(
        JSON_TEXT,
        st.builds(
            lambda name, arg: f"[{_json(name)},{arg}]",
            st.one_of(
                st.sampled_from(["send-message", "join-room", "broadcast"]), st.text(max_size=10)
            ),
            JSON_TEXT,
        ),
    ),
)


def _mutate(frame: str, edits: list[tuple[int, int, str]]) -> str:
    for position, action, char in edits:
        if not frame:
            return char
        i = position % len(frame)
        if action == 0:
            frame = frame[:i] + frame[i + 1 :]
        elif action == 1:
            frame = frame[:i] + char + frame[i:]
        else:
            frame = frame[:i] + char + frame[i + 1 :]
    return frame


MUTATED = st.builds(
    _mutate,
    st.sampled_from(VALID),
    st.lists(
        st.tuples(st.integers(0, 200), st.integers(0, 2), st.characters(max_codepoint=0x2FF)),
        min_size=1,
        max_size=4,
    ),
)
TEXT_FRAME = st.one_of(
    SOCKETIO,
    MUTATED,
    st.builds(lambda kind, rest: kind + rest, st.sampled_from("0123456789b"), st.text(max_size=30)),
    st.text(max_size=30),
)
FRAME = st.one_of(TEXT_FRAME, TEXT_FRAME, st.binary(max_size=64))


# -- the server, the canary -------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("frame-fuzz"),
        {"server": {"namespaces": ["/", "/admin"], "limits": {"events_per_second": 0}}},
    )
    baseline["rss_kib"] = _rss_kib(server.proc.pid)
    yield server
    server.stop()


baseline: dict[str, int] = {}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _ws_url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket"


@contextmanager
def _ws_session(server: Server) -> Iterator[ClientConnection]:
    """A raw websocket that finished the Engine.IO handshake and connected to ``/``."""
    with connect(_ws_url(server), compression=None, open_timeout=5, max_size=None) as ws:
        assert str(ws.recv(timeout=5)).startswith("0{")
        ws.send("40")
        while True:
            reply = ws.recv(timeout=5)
            if reply == "2":
                ws.send("3")
            elif str(reply).startswith("40{"):
                break
        yield ws


class Canary(threading.Thread):
    """A websocket client in its own room sending acknowledged messages while the fuzzer runs;
    ``worst`` is its slowest round trip, ``missed`` counts acks that never came."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.stop = threading.Event()
        self.worst = 0.0
        self.sent = 0
        self.missed = 0

    def run(self) -> None:
        with _ws_session(self.server) as ws:
            while not self.stop.is_set():
                self.sent += 1
                ack_id = self.sent
                start = time.monotonic()
                ws.send(f'42{ack_id}["send-message",{{"message":"tweet","roomID":"canary"}}]')
                if not self._await_ack(ws, ack_id):
                    self.missed += 1
                self.worst = max(self.worst, time.monotonic() - start)
                self.stop.wait(0.05)

    @staticmethod
    def _await_ack(ws: ClientConnection, ack_id: int) -> bool:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                frame = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                return False
            if frame == "2":
                ws.send("3")
            elif str(frame).startswith(f"43{ack_id}["):
                return True
        return False


@pytest.fixture(scope="module")
def canary(fuzz_server: Server) -> Iterator[Canary]:
    bird = Canary(fuzz_server)
    bird.start()
    yield bird
    bird.stop.set()
    bird.join(10)


# -- the outcome of one case ------------------------------------------------------------------


def _answered_or_closed_ws(ws: ClientConnection) -> str:
    """``closed`` or ``answered``; raises when the session is wedged."""
    try:
        ws.send("40")
        deadline = time.monotonic() + PROBE_SECONDS
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("wedged: neither answered the probe nor closed")
            frame = ws.recv(timeout=remaining)
            if frame == "2":
                ws.send("3")
            elif isinstance(frame, str) and frame[:2] in ("40", "44"):
                return "answered"
    except ConnectionClosed:
        return "closed"
    except TimeoutError:
        raise AssertionError("wedged: neither answered the probe nor closed") from None


outcomes: dict[str, int] = {"closed": 0, "answered": 0}


@FUZZ
@given(frames=st.lists(FRAME, min_size=1, max_size=3))
def test_random_websocket_frames_close_the_offender_or_leave_a_working_session(
    fuzz_server: Server, canary: Canary, frames: list[str | bytes]
) -> None:
    with _ws_session(fuzz_server) as ws:
        for frame in frames:
            try:
                ws.send(frame)
            except ConnectionClosed:
                break
        outcome = _answered_or_closed_ws(ws)
    outcomes[outcome] += 1


def _polling(server: Server, http: httpx.Client) -> str:
    base = "/socket.io/?EIO=4&transport=polling"
    handshake = http.get(base)
    assert handshake.status_code == 200 and handshake.text.startswith("0{")
    import json

    sid = json.loads(handshake.text[1:])["sid"]
    url = f"{base}&sid={sid}"
    assert http.post(url, content="40").status_code == 200
    assert "40{" in http.get(url).text
    return url


def _answered_or_closed_polling(http: httpx.Client, url: str) -> str:
    post = http.post(url, content="40")
    if post.status_code != 200:
        return "closed"
    deadline = time.monotonic() + PROBE_SECONDS
    while time.monotonic() < deadline:
        got = http.get(url, timeout=PROBE_SECONDS)
        if got.status_code != 200:
            return "closed"
        packets = got.text.split(RECORD_SEPARATOR)
        if any(p[:2] in ("40", "44") for p in packets):
            return "answered"
        if "1" in packets:
            return "closed"
        if "2" in packets:
            http.post(url, content="3")
    raise AssertionError("wedged: the polling session neither answered the probe nor closed")


POLLING_BODY = st.one_of(
    st.lists(TEXT_FRAME, min_size=1, max_size=3).map(RECORD_SEPARATOR.join),
    st.binary(max_size=64).map(lambda b: "b" + __import__("base64").b64encode(b).decode()),
    st.text(max_size=40),
)


@FUZZ
@given(body=POLLING_BODY)
def test_random_polling_payloads_close_the_offender_or_leave_a_working_session(
    fuzz_server: Server, canary: Canary, body: str
) -> None:
    with httpx.Client(base_url=fuzz_server.url, timeout=PROBE_SECONDS + 2) as http:
        url = _polling(fuzz_server, http)
        sent = http.post(url, content=body.encode("utf-8", "surrogatepass"))
        # a POST the server refuses ends the session; anything else must be answered or closed
        outcome = "closed" if sent.status_code != 200 else _answered_or_closed_polling(http, url)
    outcomes[outcome] += 1


def test_after_the_fuzzing_the_server_is_bounded_quiet_and_the_canary_was_spared(
    fuzz_server: Server, canary: Canary
) -> None:
    """Runs after the two fuzzers (file order): their cases all ended; here the costs."""
    print("frame fuzz outcomes:", outcomes)
    assert outcomes["closed"] > 0 and outcomes["answered"] > 0, outcomes
    growth = _rss_kib(fuzz_server.proc.pid) - baseline["rss_kib"]
    assert growth < 64 * 1024, f"the server grew by {growth} KiB during the fuzzing"
    log = fuzz_server.log()
    assert "Traceback" not in log
    assert log.count("protocol violation") <= outcomes["closed"] + 10
    assert canary.sent > 10 and canary.missed == 0
    assert canary.worst < 1.0, f"the canary's worst round trip was {canary.worst:.2f} s"
