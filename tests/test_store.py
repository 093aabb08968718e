"""The plugin store (``bus.store(name)``): one contract, two backends, the same tests.

Each test runs on the memory store and on the Redis store (a fresh real redis-server), in this
process, through the Backend a node builds. What crosses nodes — a counter two nodes share,
pub/sub between them — is tested with two real plugbus processes at the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from plugbus import Store, StoreUnavailable
from plugbus.core.backend import Backend

TESTS = Path(__file__).resolve().parent


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        node = Backend("memory")
    else:
        node = Backend(request.getfixturevalue("redis_server").url)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.store("polls")


async def test_values_with_expiry(store: Store) -> None:
    assert await store.get("missing") is None
    await store.set("poll:1", {"question": "tea?", "options": ["yes", "no"], "open": True})
    assert await store.get("poll:1") == {"question": "tea?", "options": ["yes", "no"], "open": True}
    await store.set("short", "gone soon", ttl=0.2)
    assert await store.get("short") == "gone soon"
    assert await store.get_many(["poll:1", "nothing", "short"]) == [
        {"question": "tea?", "options": ["yes", "no"], "open": True},
        None,
        "gone soon",
    ]
    await asyncio.sleep(0.3)
    assert await store.get("short") is None
    assert await store.add("lock", 1, ttl=5) is True
    assert await store.add("lock", 2) is False
    assert await store.get("lock") == 1
    assert await store.exchange("poll:1", [1, 2]) == {
        "question": "tea?",
        "options": ["yes", "no"],
        "open": True,
    }
    assert await store.exchange("fresh", 0) is None
    assert await store.expire("fresh", 0.2) is True
    assert await store.expire("never-set", 1) is False
    await asyncio.sleep(0.3)
    assert await store.get("fresh") is None
    assert await store.delete("poll:1", "lock", "nothing") == 2
    assert await store.get("poll:1") is None


async def test_compare_and_delete(store: Store) -> None:
    await store.set("claim", {"owner": "a"})
    assert await store.delete_if("claim", {"owner": "b"}) is False
    assert await store.get("claim") == {"owner": "a"}
    assert await store.delete_if("claim", {"owner": "a"}) is True
    assert await store.get("claim") is None
    assert await store.delete_if("claim", {"owner": "a"}) is False


async def test_counters_are_atomic_and_take_a_window(store: Store) -> None:
    assert await store.incr("votes") == 1
    assert await store.incr("votes", 4) == 5
    assert await store.get("votes") == 5
    results = await asyncio.gather(*(store.incr("many") for _ in range(50)))
    assert sorted(results) == list(range(1, 51))
    assert await store.incr("window", ttl=0.2) == 1
    assert await store.incr("window", ttl=10) == 2  # the first ttl stands
    await asyncio.sleep(0.3)
    assert await store.incr("window") == 1


async def test_hashes(store: Store) -> None:
    assert await store.hgetall("tally") == {}
    assert await store.hset("tally", {"yes": 1, "no": 0}) == 2
    assert await store.hset("tally", {"yes": 2, "maybe": 1}) == 1
    assert await store.hset("tally", {"yes": 99, "blank": 0}, only_new=True) == 1
    assert await store.hgetall("tally") == {"yes": 2, "no": 0, "maybe": 1, "blank": 0}
    assert await store.hget("tally", "yes") == 2
    assert await store.hget("tally", "nope") is None
    assert await store.hdel("tally", "no", "nope") == 1
    await store.hset("brief", {"a": 1}, ttl=0.2)
    await asyncio.sleep(0.3)
    assert await store.hgetall("brief") == {}


async def test_sets(store: Store) -> None:
    assert await store.smembers("voters") == set()
    assert await store.sadd("voters", "ann", "bob") == 2
    assert await store.sadd("voters", "bob", "cy") == 1
    assert await store.smembers("voters") == {"ann", "bob", "cy"}
    assert await store.srem("voters", "bob", "dan") == 1
    assert await store.smembers("voters") == {"ann", "cy"}


async def test_capped_lists(store: Store) -> None:
    for i in range(5):
        length = await store.append("history", {"n": i}, keep=3)
    assert length == 3
    assert await store.tail("history", 10) == [{"n": 2}, {"n": 3}, {"n": 4}]
    assert await store.tail("history", 2) == [{"n": 3}, {"n": 4}]
    assert await store.tail("history", 0) == []


async def test_a_key_of_another_kind_is_a_type_error(store: Store) -> None:
    await store.set("plain", 1)
    with pytest.raises(TypeError):
        await store.hget("plain", "x")
    await store.sadd("aset", "x")
    with pytest.raises(TypeError):
        await store.get("aset")


async def test_token_buckets_and_the_clock(store: Store) -> None:
    for _ in range(2):
        assert await store.take_token("bucket:ann", rate=10, burst=2) == 0
    wait = await store.take_token("bucket:ann", rate=10, burst=2)
    assert 0 < wait <= 0.1
    assert await store.take_token("bucket:bob", rate=10, burst=2) == 0
    await asyncio.sleep(wait + 0.02)
    assert await store.take_token("bucket:ann", rate=10, burst=2) == 0
    assert abs(await store.time() - time.time()) < 5


async def test_batches_write_together(store: Store) -> None:
    async with store.batch() as batch:
        batch.set("a", {"x": 1}, ttl=5)
        batch.hset("h", {"f": "v", "g": "w"})
        batch.hdel("h", "g")
        batch.sadd("s", "m1", "m2")
        batch.srem("s", "m1")
        batch.expire("h", 0.2)
        batch.delete("nothing")
    assert await store.get("a") == {"x": 1}
    assert await store.smembers("s") == {"m2"}
    assert await store.hgetall("h") == {"f": "v"}
    await asyncio.sleep(0.3)
    assert await store.hgetall("h") == {}


async def test_stores_are_namespaced_by_name(backend: Backend) -> None:
    polls, quiz = backend.store("polls"), backend.store("quiz")
    await polls.set("k", "polls'")
    await quiz.set("k", "quiz's")
    assert await polls.get("k") == "polls'"
    assert await backend.store("polls").get("k") == "polls'"  # one name, one set of keys
    assert polls.name == "polls" and polls.shared == backend.shared


async def test_publish_reaches_every_subscriber_this_node_included(store: Store) -> None:
    got: list[tuple[str, Any]] = []
    done = asyncio.Event()

    async def slow(message: Any) -> None:
        got.append(("async", message))
        done.set()

    first = await store.subscribe("news", lambda m: got.append(("plain", m)))
    await store.subscribe("news", slow)
    await store.subscribe("other", lambda m: got.append(("other", m)))
    await store.publish("news", {"headline": "hi"})
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0.05)
    assert sorted(got, key=str) == [("async", {"headline": "hi"}), ("plain", {"headline": "hi"})]
    await first.close()
    await first.close()  # harmless
    done.clear()
    got.clear()
    await store.publish("news", 2)
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0.05)
    assert got == [("async", 2)]


async def test_a_redis_outage_is_store_unavailable_and_passes(redis_server: Any) -> None:
    node = Backend(redis_server.url)
    await node.start()
    try:
        store = node.store("polls")
        await store.set("k", 1)
        redis_server.stop()
        with pytest.raises(StoreUnavailable) as info:
            await store.get("k")
        assert info.value.status == 503 and info.value.code == "store_unavailable"
        redis_server.start()
        await store.set("k", 2)  # redis-py reconnects on the next command
        assert await store.get("k") == 2
        # the pub/sub listener subscribes again by itself
        got = asyncio.Event()
        await store.subscribe("after", lambda m: got.set())
        deadline = time.monotonic() + 10
        while not got.is_set():
            assert time.monotonic() < deadline, "pub/sub did not come back"
            await store.publish("after", "x")
            await asyncio.sleep(0.2)
    finally:
        await node.stop()


# -- two nodes ---------------------------------------------------------------------------------


async def test_the_docs_shared_counter_counts_across_two_nodes(
    serve: Any, redis_server: Any
) -> None:
    """The worked example of docs/plugins/bus.md (tests/fixture_plugins/counter.py is that
    page's code) on two real nodes sharing one Redis."""
    config = {
        "server": {"backend": redis_server.url},
        "plugins": {
            "builtins": [],
            "modules": {"counter": "fixture_plugins.counter:CounterPlugin"},
        },
    }
    env = {"PYTHONPATH": str(TESTS)}
    a, b = serve(config, env=env), serve(config, env=env)
    async with httpx.AsyncClient(base_url=a.url) as on_a, httpx.AsyncClient(base_url=b.url) as on_b:
        assert (await on_a.post("/counter/clicks")).json() == {"name": "clicks", "count": 1}
        assert (await on_b.post("/counter/clicks")).json() == {"name": "clicks", "count": 2}
        hits = await asyncio.gather(*(c.post("/counter/clicks") for c in (on_a, on_b) * 10))
        assert sorted(r.json()["count"] for r in hits) == list(range(3, 23))
        assert (await on_a.get("/counter/clicks")).json() == {"name": "clicks", "count": 22}
        assert (await on_b.get("/counter/other")).json() == {"name": "other", "count": 0}
