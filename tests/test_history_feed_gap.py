"""A node that falls behind the history feed's trim finds the gap and says so (issue #18).

The feed is trimmed to about ``feed_length`` entries; a node more than that behind reads on
from the oldest entry left. Here, on a real redis-server with a short feed, a follower that
stops reading while another node appends past the trim reports exactly one gap (the offsets
it names, the count, its moderation copy cleared) and goes on delivering what follows; one
that falls behind without a trim reports nothing and misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import RedisServer
from redis import asyncio as aioredis

from plugbus.core.backend import Backend
from plugbus.core.config import HistorySettings
from plugbus.core.history import FeedEvent, RedisHistory, entry_values

FEED_LENGTH = 200
READ_COUNT = 50


class Node:
    """One node's backend and history, with the events its feed reader delivered."""

    def __init__(self, backend: Backend, history: RedisHistory) -> None:
        self.backend = backend
        self.history = history
        self.got: list[str] = []
        history.deliver_many = lambda events: self.got.extend(delivered(e) for e in events)

    async def pause(self) -> None:
        """Stop the real feed reader where it is (the watermark stays)."""
        task = self.history._listener
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def resume(self) -> None:
        """The real feed reader again, from the watermark it stopped at."""
        self.history._listener = asyncio.create_task(self.history._follow())

    async def publish(self, texts: list[str]) -> None:
        await asyncio.gather(
            *[self.history.append("/", "room", "r", "m", (t,), None, keep=False) for t in texts]
        )


@pytest.fixture
async def nodes(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Node, Node]]:
    monkeypatch.setattr(RedisHistory, "feed_length", FEED_LENGTH)
    monkeypatch.setattr(RedisHistory, "read_count", READ_COUNT)
    made: list[Node] = []
    for _ in range(2):
        backend = Backend(redis_server.url)
        await backend.start()
        history = RedisHistory(HistorySettings(), backend)
        await history.start()
        made.append(Node(backend, history))
    try:
        yield made[0], made[1]
    finally:
        for node in made:
            await node.history.stop()
            await node.backend.stop()


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def delivered(event: FeedEvent) -> str:
    return str(event.call[1][0])


async def test_a_follower_behind_the_trim_reports_one_gap_clears_its_copy_and_goes_on(
    nodes: tuple[Node, Node], redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    follower, writer = nodes
    await asyncio.wait_for(follower.history.following.wait(), 10)
    await writer.publish(["before"])
    await until(lambda: follower.got == ["before"])
    await follower.pause()
    # the writer's own reader would fall behind too while this loop publishes: not its test
    await writer.pause()
    watermark = follower.history.watermark
    follower.backend.cache._values["plugbus:moderation:ban"] = "cached"

    texts = [f"e{i}" for i in range(FEED_LENGTH * 5)]
    for i in range(0, len(texts), 100):
        await writer.publish(texts[i : i + 100])
    r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        info = await r.xinfo_stream(follower.history.feed)
        before = await r.xrevrange(follower.history.feed, watermark, "-", count=1)
    finally:
        await r.aclose()
    assert before == []  # the trim passed the follower's watermark
    # every entry is one event here: those the trim took after the follower's watermark
    missed = info["entries-added"] - info["length"] - 1
    assert missed > 0
    first = info["recorded-first-entry-id"]
    kept = texts[missed:]

    caplog.set_level(logging.WARNING, logger="plugbus")
    follower.resume()
    await until(lambda: len(follower.got) == 1 + len(kept))
    assert follower.got == ["before", *kept]  # everything left after the gap, in order
    assert follower.history.feed_gaps == 1
    assert follower.backend.cache._values == {}
    gaps = [r.getMessage() for r in caplog.records if "trimmed before this node" in r.message]
    assert len(gaps) == 1
    assert f"{missed} entries it never read are gone (its watermark {watermark}, " in gaps[0]
    assert f"the oldest entry left {first};" in gaps[0]
    assert "may have missed those events" in gaps[0]
    assert follower.history.feed_report()["gaps"] == 1
    # reads after the gap find none
    await writer.publish(["after"])
    await until(lambda: follower.got[-1] == "after")
    assert follower.history.feed_gaps == 1


async def test_a_follower_behind_without_a_trim_reports_nothing_and_misses_nothing(
    nodes: tuple[Node, Node],
) -> None:
    follower, writer = nodes
    await asyncio.wait_for(follower.history.following.wait(), 10)
    await follower.pause()
    follower.backend.cache._values["plugbus:moderation:ban"] = "cached"
    # fewer than the feed keeps, more than one read takes: read in several full batches
    texts = [f"e{i}" for i in range(FEED_LENGTH - 20)]
    await writer.publish(texts)
    follower.resume()
    await until(lambda: len(follower.got) == len(texts))
    assert follower.got == texts
    assert follower.history.feed_gaps == 0
    assert follower.backend.cache._values == {"plugbus:moderation:ban": "cached"}


async def test_a_stalled_follower_that_read_a_short_batch_last_still_finds_the_gap(
    nodes: tuple[Node, Node], redis_server: RedisServer
) -> None:
    """The reader is not cancelled: its loop is held (a blocking call) right after a read
    that was not full, while another client appends past the trim. The next read, an
    unchecked one, skips the gap; being full, the check after it finds it."""
    follower, writer = nodes
    await asyncio.wait_for(follower.history.following.wait(), 10)
    feed, clock = follower.history.feed, follower.backend.key("history", "clock")
    script = follower.history._script.script

    def append_elsewhere() -> None:
        import redis

        r = redis.Redis.from_url(redis_server.url, decode_responses=True)
        append = r.register_script(script)
        for i in range(FEED_LENGTH * 3):
            values = entry_values("/", "m", (f"x{i}",), "r", "room", None, kept=False)
            append(keys=[clock, "s", "S", feed], args=[10, 60_000, FEED_LENGTH, "0", *values])
        r.close()

    stalled: list[bool] = []

    def deliver(events: list[FeedEvent]) -> None:
        follower.got.extend(delivered(e) for e in events)
        if not stalled:
            stalled.append(True)
            append_elsewhere()  # holds the follower's loop while the feed moves on

    follower.history.deliver_many = deliver
    await writer.publish(["first"])
    await until(lambda: len(follower.got) > 1 and follower.got[-1] == f"x{FEED_LENGTH * 3 - 1}")
    assert follower.got[0] == "first"
    assert follower.history.feed_gaps == 1
