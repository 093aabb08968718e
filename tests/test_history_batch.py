"""The Redis history's batched appends (issue #16 item 4) against the code they replace.

A node's appends go out on one connection of their own, as one call of the batch script per
batch of waiting events, packed by hand. Each shortcut is checked here against what it
skips, on a real redis-server: the batch script leaves Redis exactly as the one-event script
called once per event does (offsets, streams, floors, the feed, an event's own error); the
hand-packed command is byte for byte what redis-py packs; events appended together go as one
call, in call order; ``NOSCRIPT`` is answered with ``EVAL`` and stores nothing twice; a
stalled Redis refuses the batch and everything queued behind it within the command timeout,
and the next append connects again.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import RedisServer
from redis import asyncio as aioredis
from redis.exceptions import ResponseError

from plugbus.core.backend import Backend
from plugbus.core.config import HistorySettings
from plugbus.core.errors import BackendUnavailable
from plugbus.core.history import (
    APPEND_BATCH_SCRIPT,
    APPEND_SCRIPT,
    RedisHistory,
    entry_values,
)

#: the clock pinned far ahead of Redis's own, so both scripts hand out the same offsets
PINNED_MS = 4_000_000_000_000
FEED_LENGTH = 100_000

# (stream, max_messages, max_age_ms, keep, entry values): rooms that trim by count and by age,
# a room that keeps nothing (ephemeral events), direct messages, binary data (the "e" form)
ROOM_A = ("{h}:r:a", 3, 600_000)
ROOM_B = ("{h}:r:b", 50, 1_000)
EVENTS: list[tuple[tuple[str, int, int], bool, list[str]]] = [
    (ROOM_A, True, entry_values("/", "m", ("a1",), "a", "room", None)),
    (ROOM_B, True, entry_values("/", "m", ({"n": 1},), "b", "room", "sid-1")),
    (ROOM_A, True, entry_values("/", "m", ("a2",), "a", "room", None)),
    (ROOM_A, False, entry_values("/", "typing", ("x",), "a", "room", None, kept=False)),
    (("{h}:s:sid-9", 5, 600_000), True, entry_values("/", "dm", ("hi",), "sid-9", "sid", None)),
    (ROOM_A, True, entry_values("/", "m", (b"\x00\x01",), "a", "room", None)),
    (ROOM_B, True, entry_values("/chat", "m", ("b2", 2), "b", "room", None)),
    (ROOM_A, True, entry_values("/", "m", ("a4",), "a", "room", None)),
    (("{h}:a:", 5, 600_000), True, entry_values("/", "all", ("everyone",), None, "all", None)),
    (ROOM_A, True, entry_values("/", "m", ("a5",), "a", "room", None)),
]
BATCHES = [1, 4, 2, 3]  # how the batch script takes EVENTS


async def prepare(r: Any) -> None:
    """The same starting state in each database: the clock pinned, room a already full,
    room b holding entries older than its age limit and one within it."""
    await r.hset("{h}:clock", mapping={"ms": PINNED_MS, "seq": 0})
    for i in range(1, 5):
        await r.xadd("{h}:r:a", {"k": "r", "n": "/", "t": "a", "x": "", "d": "[]"}, id=f"1-{i}")
    for ms in (PINNED_MS - 5_000, PINNED_MS - 3_000, PINNED_MS - 500):
        await r.xadd("{h}:r:b", {"k": "r", "n": "/", "t": "b", "x": "", "d": "[]"}, id=f"{ms}-0")


async def state(r: Any) -> dict[str, Any]:
    """Everything the scripts wrote: every key's content, and which keys expire."""
    out: dict[str, Any] = {}
    for key in sorted(await r.keys("*")):
        kind = await r.type(key)
        if kind == "stream":
            value: Any = await r.xrange(key)
        elif kind == "hash":
            value = await r.hgetall(key)
        else:
            value = await r.get(key)
        out[key] = (kind, value, await r.pttl(key) > 0)
    return out


def keys_and_args(stream: tuple[str, int, int], keep: bool, values: list[str]) -> list[Any]:
    name, most, age = stream
    floor = name.replace(":r:", ":R:").replace(":s:", ":S:").replace(":a:", ":A:")
    return [name, floor, most, age, "1" if keep else "0", *values]


def answer(reply: Any) -> Any:
    return str(reply).partition(" script: ")[0] if isinstance(reply, Exception) else reply


@pytest.fixture
async def two_dbs(redis_server: RedisServer) -> AsyncIterator[tuple[Any, Any]]:
    one = aioredis.Redis(port=redis_server.port, db=0, decode_responses=True)
    batch = aioredis.Redis(port=redis_server.port, db=1, decode_responses=True)
    yield one, batch
    await one.aclose()
    await batch.aclose()


async def test_the_batch_script_leaves_redis_as_the_one_event_script_does(
    two_dbs: tuple[Any, Any],
) -> None:
    one, batch = two_dbs
    # an event whose stream is not a stream: its own error, and only its own
    events = [*EVENTS[:5], (("{h}:r:broken", 5, 600_000), True, EVENTS[0][2]), *EVENTS[5:]]
    for r in (one, batch):
        await prepare(r)
        await r.set("{h}:r:broken", "not a stream")

    singles: list[Any] = []
    for stream, keep, values in events:
        name, floor, most, age, flag, *entry = keys_and_args(stream, keep, values)
        try:
            singles.append(
                await one.eval(
                    APPEND_SCRIPT,
                    4,
                    "{h}:clock",
                    name,
                    floor,
                    "{h}:feed",
                    most,
                    age,
                    FEED_LENGTH,
                    flag,
                    *entry,
                )
            )
        except ResponseError as exc:
            singles.append(exc)

    batched: list[Any] = []
    start = 0
    for size in [*BATCHES, 1]:
        chunk = events[start : start + size]
        start += size
        keys: list[Any] = []
        argv: list[Any] = []
        for stream, keep, values in chunk:
            name, floor, *rest = keys_and_args(stream, keep, values)
            keys += [name, floor]
            argv += rest
        batched += await batch.eval(
            APPEND_BATCH_SCRIPT, 2 + len(keys), "{h}:clock", "{h}:feed", *keys, FEED_LENGTH, *argv
        )
    assert start == len(events)

    # an error's text alike (redis.call's adds where in the script it was raised)
    assert [answer(x) for x in batched] == [answer(x) for x in singles]
    broken = singles[5]
    assert isinstance(broken, ResponseError) and "WRONGTYPE" in str(broken)
    assert isinstance(batched[5], ResponseError)
    assert [x for x in singles if not isinstance(x, Exception)] == [
        f"{PINNED_MS}-{seq}" for seq in range(1, len(events) + 1) if seq != 6
    ]
    expected = await state(one)
    assert await state(batch) == expected
    # what the comparison covers: trims by count (room a) and by age (room b), with floors
    assert len(expected["{h}:r:a"][1]) == 3
    assert expected["{h}:R:a"][1] == f"{PINNED_MS}-3"
    assert expected["{h}:R:b"][1] == f"{PINNED_MS - 3_000}-0"
    assert len(expected["{h}:feed"][1]) == len(events) - 1


@pytest.fixture
async def history(redis_server: RedisServer) -> AsyncIterator[RedisHistory]:
    backend = Backend(redis_server.url)
    await backend.start()
    h = RedisHistory(HistorySettings(), backend)
    # the appends' line alone: these tests read Redis themselves, not through the feed
    h._line.start()
    yield h
    await h._line.stop()
    await backend.stop()


def commandstats(redis_server: RedisServer) -> dict[str, int]:
    calls: dict[str, int] = {}
    for line in redis_server.command("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_") :].partition(":")
            calls[name] = int(rest.split(",")[0].partition("=")[2])
    return calls


async def test_a_batch_is_packed_as_redis_py_packs_the_same_command(
    history: RedisHistory,
) -> None:
    line: Any = history._line
    queued: list[tuple[bytes, bytes, Any]] = []
    append = line.append

    def record(keys: bytes, values: bytes) -> Any:
        queued.append((keys, values, None))
        return append(keys, values)

    line.append = record
    await history.append("/", "room", "r1", "m", ("é 😀",), None)
    await history.append("/", "sid", "s1", "m", ({"a": [1, 2]},), "skip", keep=False)
    conn = history._backend.redis_client().connection_pool.make_connection()
    for verb, script in ((line._evalsha, script_sha()), (line._eval, APPEND_BATCH_SCRIPT)):
        expected = conn.pack_command(
            verb.split(b"\r\n")[1].decode(),
            script,
            6,
            history._clock,
            history.feed,
            history._key("/", "room", "r1"),
            history._key("/", "room", "r1", floor=True),
            history._key("/", "sid", "s1"),
            history._key("/", "sid", "s1", floor=True),
            history.feed_length,
            1000,
            600_000,
            "1",
            *entry_values("/", "m", ("é 😀",), "r1", "room", None),
            1000,
            600_000,
            "0",
            *entry_values("/", "m", ({"a": [1, 2]},), "s1", "sid", "skip", kept=False),
        )
        assert line.command(verb, queued) == b"".join(expected)


def script_sha() -> str:
    return hashlib.sha1(APPEND_BATCH_SCRIPT.encode()).hexdigest()


async def test_appends_made_together_go_as_one_script_call_in_call_order(
    history: RedisHistory, redis_server: RedisServer
) -> None:
    await history.append("/", "room", "r", "m", ("warm",), None)  # loads the script
    before = commandstats(redis_server)
    offsets = await asyncio.gather(
        *(history.append("/", "room", "r", "m", (f"m{i}",), None) for i in range(40))
    )
    after = commandstats(redis_server)
    # the first goes at once, the other 39 wait for it and go together
    assert after["evalsha"] - before["evalsha"] == 2
    assert after.get("eval", 0) == before.get("eval", 0)
    keys = [tuple(int(part) for part in offset.split("-")) for offset in offsets]
    assert keys == sorted(keys) and len(set(keys)) == 40
    r = aioredis.Redis(port=redis_server.port, decode_responses=True)
    try:
        stored = await r.xrange(history._key("/", "room", "r"))
        feed = await r.xrange(history.feed)
    finally:
        await r.aclose()
    assert [entry[1]["d"] for entry in stored] == ['["m","warm"]'] + [
        f'["m","m{i}"]' for i in range(40)
    ]
    assert [entry[0] for entry in stored[1:]] == offsets
    assert [entry[0] for entry in feed[1:]] == offsets
    # the clock's "ms" follows the offsets (the script writes it only when it moved)
    assert redis_server.command("HGET", history._clock, "ms") == offsets[-1].partition("-")[0]


async def test_noscript_is_answered_with_eval_and_nothing_is_stored_twice(
    history: RedisHistory, redis_server: RedisServer
) -> None:
    await history.append("/", "room", "r", "m", ("first",), None)
    assert redis_server.command("SCRIPT", "FLUSH") == "OK"  # what a restart does to it
    before = commandstats(redis_server)
    offsets = await asyncio.gather(
        *(history.append("/", "room", "r", "m", (f"m{i}",), None) for i in range(10))
    )
    after = commandstats(redis_server)
    assert after["eval"] - before.get("eval", 0) == 1  # the first batch, sent again whole
    r = aioredis.Redis(port=redis_server.port, decode_responses=True)
    try:
        stored = await r.xrange(history._key("/", "room", "r"))
    finally:
        await r.aclose()
    assert [entry[1]["d"] for entry in stored] == ['["m","first"]'] + [
        f'["m","m{i}"]' for i in range(10)
    ]
    assert [entry[0] for entry in stored[1:]] == offsets


async def test_one_events_error_refuses_that_event_alone(
    history: RedisHistory, redis_server: RedisServer
) -> None:
    await history.append("/", "room", "ok", "m", ("warm",), None)
    assert redis_server.command("SET", history._key("/", "room", "broken"), "x") == "OK"
    results = await asyncio.gather(
        history.append("/", "room", "ok", "m", ("one",), None),
        history.append("/", "room", "ok", "m", ("two",), None),
        history.append("/", "room", "broken", "m", ("lost",), None),
        history.append("/", "room", "ok", "m", ("three",), None),
        return_exceptions=True,
    )
    assert [type(x) for x in results] == [str, str, BackendUnavailable, str]


async def test_a_stalled_redis_refuses_the_batch_and_all_behind_it_then_it_connects_again(
    history: RedisHistory, redis_server: RedisServer
) -> None:
    await history.append("/", "room", "r", "m", ("warm",), None)
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        results = await asyncio.wait_for(
            asyncio.gather(
                *(history.append("/", "room", "r", "m", (f"m{i}",), None) for i in range(5)),
                return_exceptions=True,
            ),
            10,
        )
        waited = time.monotonic() - started
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    assert all(isinstance(x, BackendUnavailable) for x in results), results
    assert 0.9 < waited < 3  # the backend's command timeout (1 s), not longer
    offset = await asyncio.wait_for(history.append("/", "room", "r", "m", ("after",), None), 10)
    assert offset.count("-") == 1


REPLIES = [
    b"*3\r\n$15\r\n1700000000000-1\r\n-WRONGTYPE Operation against a key\r\n$6\r\n\xc3\xa9-2-3\r\n",
    b"-NOSCRIPT No matching script. Please use EVAL.\r\n",
    b"*0\r\n",
    b"+OK\r\n",
    b":42\r\n",
    b"$-1\r\n",
    b"*2\r\n*1\r\n$1\r\na\r\n$0\r\n\r\n",
]


def test_the_python_reply_reader_reads_what_hiredis_reads() -> None:
    """The reader the appends' connection uses without hiredis, against hiredis's own, fed
    the same replies in pieces of every size."""
    import hiredis
    from redis.exceptions import InvalidResponse

    from plugbus.core.history import RespReader

    def read(reader: Any, pieces: list[bytes]) -> list[Any]:
        out = []
        for piece in pieces:
            reader.feed(piece)
            while (reply := reader.gets()) is not False:
                out.append(
                    answer(reply) if not isinstance(reply, list) else list(map(answer, reply))
                )
        return out

    data = b"".join(REPLIES)
    for size in (1, 2, 3, 7, len(data)):
        pieces = [data[i : i + size] for i in range(0, len(data), size)]
        mine = read(RespReader(), pieces)
        theirs = read(
            hiredis.Reader(
                protocolError=InvalidResponse, replyError=ResponseError, encoding="utf-8"
            ),
            pieces,
        )
        assert mine == theirs
        assert len(mine) == len(REPLIES)


async def test_appends_work_without_hiredis(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis.utils

    from plugbus.core.history import RespReader

    monkeypatch.setattr(redis.utils, "HIREDIS_AVAILABLE", False)
    backend = Backend(redis_server.url)
    await backend.start()
    h = RedisHistory(HistorySettings(), backend)
    h._line.start()
    try:
        offsets = await asyncio.gather(
            *(h.append("/", "room", "r", "m", (f"m{i}",), None) for i in range(5))
        )
        assert isinstance(h._line._parser, RespReader)
        keys = [tuple(int(part) for part in offset.split("-")) for offset in offsets]
        assert keys == sorted(keys) and len(set(keys)) == 5
    finally:
        await h._line.stop()
        await backend.stop()


async def test_a_node_refuses_to_start_when_redis_py_has_no_stream_writer_to_take_over(
    redis_server: RedisServer,
) -> None:
    """The line's one private detail of redis-py is checked when the history starts, not at
    the first publish."""
    backend = Backend(redis_server.url)
    await backend.start()
    try:
        h = RedisHistory(HistorySettings(), backend)
        del h._line._conn._writer  # what a redis-py without the attribute would give
        with pytest.raises(RuntimeError, match="_writer"):
            await h.start()
        assert h._listener is None  # nothing was left following the feed
    finally:
        await backend.stop()
