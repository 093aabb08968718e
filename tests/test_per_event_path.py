"""The per-event path's shortcuts (issue #16) answer exactly as the general code they skip."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar

import pytest
import yaml
from pydantic import (
    JsonValue,
    PlainValidator,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from plugbus import (
    Event,
    EventDropped,
    InvalidPayload,
    MessageRejected,
    NotAllowed,
    Origin,
    Violation,
)
from plugbus.core import history as history_module
from plugbus.core.backend import Backend
from plugbus.core.bus import Bus
from plugbus.core.config import HistorySettings, load_config
from plugbus.core.context import Connection
from plugbus.core.events import EventRegistry, payload_size
from plugbus.core.history import MemoryHistory, StoredEvent, StreamRead, _stored_event
from plugbus.core.hooks import FOLD_AT, ImplTimings, _timed
from plugbus.core.loader import load_plugins
from plugbus.plugins.moderation.pipeline import QUIET_MARK
from plugbus.plugins.moderation.rules import MaxLengthRule, sanction_keys, text_fields
from plugbus.plugins.moderation.store import Sanction
from plugbus.plugins.relay import SendMessage, _strict_bytes
from plugbus.testing import PlugbusAppFactory


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"message": "ping", "roomID": "echo-nobody"},
        {"message": "héllo wörld ✓", "roomID": "Zimmer-ü"},
        {"m": "", "": "x"},
    ],
)
def test_an_object_of_strings_is_counted_as_the_walk_counts_it(payload: dict[str, str]) -> None:
    # Inside a list the object is counted by the general walk (the list adds 2, plus 1 per item)
    walked = payload_size([payload], 1 << 20) - 3
    assert payload_size(payload, 1 << 20) == walked
    # at the limit it passes, one byte below it is refused, as the walk decides
    assert payload_size(payload, walked) <= walked
    assert payload_size(payload, walked - 1) > walked - 1


def test_an_object_with_other_values_takes_the_walk() -> None:
    payload = {"message": ["a", 1, None], "roomID": "r"}
    assert payload_size(payload, 1 << 20) == payload_size([payload], 1 << 20) - 3


class Ping(Event):
    name: ClassVar[str] = "ping"
    text: str


class CheckedPing(Event):
    """Overrides ``model_validate``: the registry must call it, not the schema validator."""

    name: ClassVar[str] = "checked-ping"
    text: str
    seen: ClassVar[list[Any]] = []

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> CheckedPing:
        cls.seen.append(obj)
        return super().model_validate({"text": str(obj["text"]).upper()}, **kwargs)


def test_events_validate_through_their_model_validate_when_they_override_it() -> None:
    registry = EventRegistry()
    registry.register(Ping, owner="tests")
    registry.register(CheckedPing, owner="tests")
    ping = registry.parse_args("ping", [{"text": "hi"}])
    assert type(ping) is Ping and ping.text == "hi"
    with pytest.raises(InvalidPayload):
        registry.parse_args("ping", [{"text": 1}])
    checked = registry.parse_args("checked-ping", [{"text": "hi"}])
    assert checked.text == "HI" and CheckedPing.seen == [{"text": "hi"}]  # type: ignore[attr-defined]


def test_history_entries_are_the_frozen_dataclass() -> None:
    made = _stored_event("1-2", "receive-message", ("hi",), "sid1", "lobby")
    assert made == StoredEvent("1-2", "receive-message", ("hi",), "sid1", "lobby")
    assert type(made) is StoredEvent and hash(made) == hash(StoredEvent(*dataclasses.astuple(made)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.room = "other"  # type: ignore[misc]


async def test_an_ack_id_of_unicode_digits_is_read_as_before(
    plugbus_app: PlugbusAppFactory,
) -> None:
    """The door scans ASCII ids in one step and falls back to ``str.isdigit`` for others, so
    an id written in Arabic-Indic digits ("١٢" is 12, as ``int`` reads it) is still acked."""
    app = await plugbus_app()
    client = await app.client()
    future: asyncio.Future[list[object]] = asyncio.get_running_loop().create_future()
    client._acks[12] = future
    await client._post('42\u0661\u0662["send-message",{"message":"hi","roomID":"r1"}]')
    ack = await asyncio.wait_for(future, 5)
    assert ack[0]["ok"] is True and ack[0]["data"]["room"] == "r1"  # type: ignore[index]


async def test_hook_timings_count_every_per_event_call(plugbus_app: PlugbusAppFactory) -> None:
    """The per-event walks keep each implementation's timing entry after its first call; the
    counts still reach the metrics."""
    app = await plugbus_app()
    client = await app.client()
    timings = app.bus.hooks.timings
    assert timings is not None
    for _ in range(3):
        assert (await client.call("send-message", {"message": "hi", "roomID": "r1"}))["ok"]
    assert timings.stats[("plugbus_moderate", "moderation")][0] == 3
    assert timings.stats[("plugbus_handle_event", "relay")][0] == 3
    assert timings.stats[("plugbus_authorize_join", "auth")][0] == 3
    text = (await app.http.get("/metrics")).text
    assert 'hook="plugbus_moderate",plugin="moderation"' in text


JOIN = "plugins_for_tests.join_plugins"


@pytest.mark.parametrize("room", ["open", "no-first", "no-deferred", "no-last"])
async def test_authorize_join_without_a_coroutine_calls_as_the_general_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, room: str
) -> None:
    """``Hooks.authorize_join`` runs synchronous implementations at once and hands back an
    awaitable already done; one that returns an awaitable hands the rest of the walk to a
    coroutine. Either way: the same calls in the same order, the same refusal, and each call
    timed, as the general walk (``Hooks._each``) does it."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    from plugins_for_tests import join_plugins

    modules = {
        name: f"{JOIN}:{cls}" for name, cls in [("a", "First"), ("b", "Deferred"), ("c", "Last")]
    }
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump({"plugins": {"builtins": [], "entry_points": False, "modules": modules}}),
        encoding="utf-8",
    )
    loaded = load_config(path)
    bus = Bus(loaded.config, load_plugins(loaded))
    timings = bus.hooks.time_implementations()
    connection = Connection("sid-1", "/")

    async def outcome(call: Any) -> tuple[list[Any], Any]:
        join_plugins.RECORD.clear()
        try:
            await call()
            result: Any = "passed"
        except NotAllowed as exc:
            result = exc.message
        return list(join_plugins.RECORD), result

    fast = await outcome(lambda: bus.hooks.authorize_join(connection, room, bus))
    counted = {plugin: entry[0] for (hook, plugin), entry in timings.stats.items()}
    general = await outcome(
        lambda: bus.hooks._each(
            "plugbus_authorize_join",
            {"connection": connection, "room": room, "bus": bus},
            keep_going=False,
        )
    )
    assert fast == general
    # pluggy's order (the last registered first); a refusal ends the walk
    calls = [
        ("last", room, "plugbus"),
        ("deferred called", room),
        ("deferred awaited", room),
        ("first", room),
    ]
    expected = {
        "open": (calls, "passed", {"c": 1, "b": 1, "a": 1}),
        "no-first": (calls, "first says no", {"c": 1, "b": 1}),
        "no-deferred": (calls[:3], "deferred says no", {"c": 1}),
        "no-last": (calls[:1], "last says no", {}),
    }[room]
    assert fast == (expected[0], expected[1])
    assert counted == expected[2]  # each implementation timed once it has returned


async def test_authorize_join_of_synchronous_implementations_makes_no_coroutine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    from plugins_for_tests import join_plugins

    path = tmp_path / "config.yaml"
    modules = {"a": f"{JOIN}:First", "c": f"{JOIN}:Last"}
    path.write_text(
        yaml.safe_dump({"plugins": {"builtins": [], "entry_points": False, "modules": modules}}),
        encoding="utf-8",
    )
    loaded = load_config(path)
    bus = Bus(loaded.config, load_plugins(loaded))
    join_plugins.RECORD.clear()
    done = bus.hooks.authorize_join(Connection("sid-1", "/"), "open", bus)
    assert not asyncio.iscoroutine(done)
    assert join_plugins.RECORD == [("last", "open", "plugbus"), ("first", "open")]
    assert await done is None
    with pytest.raises(NotAllowed, match="first says no"):
        await bus.hooks.authorize_join(Connection("sid-1", "/"), "no-first", bus)


@pytest.mark.parametrize("most", [0, 1, 3])
async def test_a_full_memory_stream_drops_its_oldest_as_trim_did(most: int) -> None:
    """The memory history's append takes the oldest entry out of a full stream itself (not
    through ``trim``): what is kept, and the floor that tells a reader of a gap, are trim's."""
    history = MemoryHistory(HistorySettings(max_messages=most))
    offsets = [await history.append("/", "room", "r", "m", (i,), None) for i in range(5)]
    kept = await history.page("/", "r", None, 10)
    assert [e.args for e in kept] == [(i,) for i in range(5)][5 - most :] if most else kept == []
    assert len(history._streams[("/", "room", "r")].entries) == most
    if most:
        # reading from the last dropped offset on misses nothing; from before it, a gap
        after_dropped = StreamRead("room", "r", offsets[4 - most])
        assert [e.id for e in await history.read("/", [after_dropped]) or []] == offsets[5 - most :]
        if 4 - most > 0:
            assert await history.read("/", [StreamRead("room", "r", offsets[3 - most])]) is None
    assert history.watermark == offsets[-1]


async def test_a_memory_streams_entries_read_as_the_stored_events_append_made() -> None:
    """The memory history keeps each event's fields in a plain tuple and makes its
    StoredEvent when it is read: what read, page and delete answer is what they answered when
    append stored ``_stored_event(offset, event, args, skip, room)`` (room only for a room)."""
    history = MemoryHistory(HistorySettings(max_messages=3))
    sent = [
        ("room", "r", "m", ("hi",), None),
        ("room", "r", "m", ("a", {"b": [1]}), "sid-1"),
        ("sid", "sid-2", "greet", (), None),
        ("all", None, "news", (b"\x00bin",), "sid-3"),
        ("room", "r", "m", ("x",), None),
        ("room", "r", "m", ("y",), "sid-1"),
    ]
    made: dict[str, StoredEvent] = {}
    for i, (kind, target, event, args, skip) in enumerate(sent):
        # both entry points: the coroutine, and the call Bus.emit makes
        offset = (
            await history.append("/", kind, target, event, args, skip)  # type: ignore[arg-type]
            if i % 2
            else history.append_now("/", kind, target, event, args, skip)  # type: ignore[arg-type]
        )
        made[offset] = _stored_event(offset, event, args, skip, target if kind == "room" else None)
    offsets = list(made)
    room = [made[o] for o in offsets if made[o].room == "r"][-3:]
    assert await history.page("/", "r", None, 10) == room
    assert await history.page("/", "r", room[0].id, 1) == room[1:2]
    read = await history.read(
        "/",
        [
            StreamRead("room", "r", offsets[1]),
            StreamRead("sid", "sid-2", "0-0"),
            StreamRead("all", None, "0-0"),
        ],
    )
    assert read == [made[offsets[i]] for i in (2, 3, 4, 5)]
    assert all(type(e) is StoredEvent for e in read or [])
    assert await history.read("/", [StreamRead("room", "r", "0-0")]) is None  # a gap: trimmed
    assert await history.delete("/", "r", offsets[4]) is True
    assert await history.delete("/", "r", offsets[4]) is False
    assert await history.page("/", "r", None, 10) == [room[0], room[2]]
    assert history.size() == 4 and history.watermark == offsets[-1]


async def test_bus_emit_appends_to_a_memory_history_as_its_coroutine_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``Bus.emit`` calls a memory history's ``append_now`` without the coroutine: the same
    stored event, delivery and offset as awaiting ``append``; any other history (a subclass
    such as Redis's) is awaited as before."""
    # one clock reading for both histories, so that their offsets can be compared
    monkeypatch.setattr(history_module, "_time", lambda: 1_700_000_000.0)
    loaded = load_config()
    bus = Bus(loaded.config, load_plugins(loaded))
    delivered: list[tuple[Any, ...]] = []
    bus.history.deliver = lambda *a: delivered.append(a)
    offset = await bus.emit("m", "hi", room="lobby", skip_sid="sid-9")
    reference = MemoryHistory(bus.history.settings)
    expected: list[tuple[Any, ...]] = []
    reference.deliver = lambda *a: expected.append(a)
    reference._seq = bus.history._seq - 1
    again = await reference.append("/", "room", "lobby", "m", ("hi",), "sid-9")
    assert offset == again == bus.history.watermark
    assert delivered == expected == [("/", "m", ("hi",), "lobby", "room", "sid-9", offset)]
    assert await bus.history.page("/", "lobby", None, 5) == await reference.page(
        "/", "lobby", None, 5
    )

    class Awaited(MemoryHistory):
        calls = 0

        async def append(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]
            Awaited.calls += 1
            return await super().append(*args, **kwargs)

    bus.history = Awaited(bus.history.settings)
    assert await bus.emit("m", "again", room="lobby") == bus.history.watermark
    assert Awaited.calls == 1


@pytest.mark.parametrize(
    "message",
    [
        "short",
        "x" * 21,
        {"a": "short", "b": ["fine", "y" * 25], "c": "z" * 30},
        ["ok", {"deep": "w" * 40}],
        {"n": 1, "none": None},
    ],
)
def test_max_length_finds_the_field_the_text_fields_walk_finds(message: Any) -> None:
    """MaxLengthRule measures string fields where it finds them (no list of every string):
    it reports the first text over the limit in text_fields' order, with its path."""
    event = SendMessage(message=message, roomID="r")
    rule = MaxLengthRule(20)
    expected = next(((p, t) for p, t in text_fields(event) if len(t) > 20), None)
    violation = rule.check(event, None)  # type: ignore[arg-type]
    if expected is None:
        assert violation is None
    else:
        assert violation is not None
        assert violation.field == expected[0]
        assert violation.details == {"limit": 20, "length": len(expected[1])}
        assert (
            violation.message
            == f"{expected[0]} is {len(expected[1])} characters long; the limit is 20"
        )


class Limited(Event):
    name: ClassVar[str] = "limited"
    max_bytes: ClassVar[int | None] = 40
    text: str


@pytest.mark.parametrize("text", ["a", "é", "\u2713\u2713", "plain ascii"])
def test_an_object_of_ascii_strings_is_sized_and_checked_as_the_walks_do(text: str) -> None:
    """An object of ASCII strings is sized in one pass (no surrogate check, no encode): at the
    limit it passes and one byte over it is refused, where payload_size says; other text takes
    both walks, with the same answers."""
    registry = EventRegistry()
    registry.register(Limited, owner="tests")
    fits = 40 - payload_size({"text": ""}, 1 << 20)  # UTF-8 bytes the text may take
    unit = len(text.encode())
    at_limit = text * (fits // unit) + "x" * (fits % unit)
    assert payload_size({"text": at_limit}, 1 << 20) == 40
    assert registry.parse_args("limited", [{"text": at_limit}]).text == at_limit  # type: ignore[attr-defined]
    with pytest.raises(InvalidPayload) as over:
        registry.parse_args("limited", [{"text": at_limit + "x"}])
    assert over.value.message == "payload of 'limited' is larger than its limit of 40 bytes"
    assert over.value.details["errors"][0]["type"] == "too_large"
    with pytest.raises(InvalidPayload, match="lone UTF-16 surrogate"):
        registry.parse_args("limited", [{"text": "a\ud800"}])


async def test_moderation_rules_answer_at_once_as_their_awaited_reads(
    plugbus_app: PlugbusAppFactory,
) -> None:
    """Ban, mute and slow mode read their state without a coroutine when the store has it at
    hand (``Store.get_many_now``, ``hget_now``): each answers as the awaited read it skips
    (``_check_later``), with no sanction, with one in force, and with one whose time is up."""
    app = await plugbus_app()
    client = await app.client()
    bus = app.bus
    moderation = bus.pm.get_plugin("moderation")
    store = moderation.store
    connection = bus.connection(client.sid)
    assert connection is not None
    ctx = bus.context(Origin.SOCKET, connection, wants_ack=True)
    event = bus.events.parse_args("send-message", [{"message": "hi", "roomID": "r1"}])
    rules = {step.rule.name: step.rule for step in moderation.pipeline.steps}
    ban, mute, slow = rules["ban"], rules["mute"], rules["slow_mode"]

    async def both(rule: Any) -> tuple[Any, Any]:
        at_once = rule.check(event, ctx)
        assert not inspect.isawaitable(at_once), f"{rule.name} made a coroutine"
        if rule is slow:
            later = await rule._check_later(event, connection, "r1")
        else:
            later = await rule._check_later(sanction_keys(store, rule.name, connection))
        return at_once, later

    def shown(violation: Violation | None) -> Any:
        return None if violation is None else (violation.message, violation.details)

    for rule in (ban, mute, slow):
        at_once, later = await both(rule)
        assert at_once is None and later is None
    # the clean event passes the whole pipeline without a coroutine
    assert moderation.pipeline.run(event, ctx) is None
    now = datetime.now(UTC)
    for kind, rule in (("ban", ban), ("mute", mute)):
        sanction = Sanction(
            id=f"{kind}-1",
            type=kind,
            kind="connection",
            value=connection.sid,
            reason="testing",
            created_at=now,
            expires_at=now + timedelta(hours=1),
        )
        await store.add_sanction(sanction)
        at_once, later = await both(rule)
        assert at_once is not None and shown(at_once) == shown(later)
        refused = moderation.pipeline.run(event, ctx)
        assert refused is not None
        with pytest.raises(MessageRejected) as caught:
            await refused
        assert caught.value.message == at_once.message
        # a sanction whose time is up, still stored (as Redis may hold it until it expires)
        over = sanction.model_copy(update={"expires_at": now - timedelta(seconds=1)})
        key = sanction_keys(store, kind, connection)[0]
        await store.store.set(key, over.model_dump(mode="json"))
        at_once, later = await both(rule)
        assert at_once is None and later is None
        await store.store.delete(key)
    # a room with a delay: the rest of the rule (the sender's clock) is the coroutine it was
    await store.set_slow_mode("slow-room", 5)
    slow_event = bus.events.parse_args("send-message", [{"message": "hi", "roomID": "slow-room"}])
    pending = slow.check(slow_event, ctx)
    assert inspect.isawaitable(pending) and await pending is None


async def test_reads_without_waiting_answer_as_the_awaited_reads() -> None:
    """``get_many_now`` and ``hget_now`` of a memory store answer what ``get_many`` and
    ``hget`` answer (missing keys, values, expired keys, a key of another kind); a Redis store
    answers only from its node's copy, so before any read is kept there it says it cannot."""
    backend = Backend("memory")
    await backend.start()
    try:
        store = backend.store("polls")
        await store.set("a", {"x": 1})
        await store.set("brief", "gone soon", ttl=0.05)
        await store.hset("h", {"f": [1, 2]})
        keys = ["a", "missing", "brief"]
        assert (
            store.get_many_now(keys) == await store.get_many(keys) == [{"x": 1}, None, "gone soon"]
        )
        assert store.hget_now("h", "f") == (await store.hget("h", "f"),) == ([1, 2],)
        assert store.hget_now("h", "nope") == (None,) and store.hget_now("nothing", "f") == (None,)
        await asyncio.sleep(0.1)
        assert store.get_many_now(keys) == await store.get_many(keys) == [{"x": 1}, None, None]
        with pytest.raises(TypeError):
            store.get_many_now(["h"])
        with pytest.raises(TypeError):
            await store.get_many(["h"])
        with pytest.raises(TypeError):
            store.hget_now("a", "f")
    finally:
        await backend.stop()


async def test_a_redis_store_reads_at_once_only_from_its_nodes_copy(redis_server: Any) -> None:
    backend = Backend(redis_server.url)
    await backend.start()
    try:
        plain = backend.store("polls")
        cached = backend.store("mod", cached=("sanction:",))
        await plain.set("a", 1)
        await cached.set("sanction:x", 2)
        assert plain.get_many_now(["a"]) is None and plain.hget_now("h", "f") is None
        # this node follows no history feed here: its copy keeps nothing, every read waits
        assert await cached.get_many(["sanction:x"]) == [2]
        assert cached.get_many_now(["sanction:x"]) is None
        assert cached.get_many_now(["other"]) is None
        assert cached.version_now() is None and plain.version_now() is None
    finally:
        await backend.stop()


async def test_the_rules_skipped_after_a_clean_event_see_every_write_before_the_next(
    plugbus_app: PlugbusAppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an event that ban, mute and slow mode found nothing to say about, the next event
    of the connection skips them while the moderation store was not written (its version);
    any write — through the plugin, or through another store of the same name — makes the
    next event ask them again, so a ban, a mute or a delay holds from the next event on."""
    app = await plugbus_app()
    client = await app.client()
    bus = app.bus
    moderation = bus.pm.get_plugin("moderation")
    store = moderation.store
    other = bus.store("moderation")  # the same keys, another store object
    connection = bus.connection(client.sid)
    assert connection is not None
    reads: list[list[str]] = []
    find = store.find_sanctioned_now

    def counted(keys: list[str]) -> Any:
        reads.append(keys)
        return find(keys)

    monkeypatch.setattr(store, "find_sanctioned_now", counted)

    async def send(room: str = "r1") -> dict[str, Any]:
        return await client.call("send-message", {"message": "hi", "roomID": room})  # type: ignore[no-any-return]

    assert (await send())["ok"]
    assert len(reads) == 2  # ban and mute read
    assert connection.state[QUIET_MARK] == (store.version_now(), SendMessage, "roomID", "r1")
    assert (await send())["ok"]
    assert len(reads) == 2  # nothing was written: skipped
    await other.set("unrelated", 1)
    assert (await send())["ok"]
    assert len(reads) == 4  # asked again after a write

    now = datetime.now(UTC)

    def sanction(kind: str) -> Sanction:
        return Sanction(
            id=f"{kind}-1",
            type=kind,
            kind="connection",
            value=connection.sid,
            created_at=now,
            expires_at=now + timedelta(hours=1),
        )

    # a ban written straight into the store's keys by another store object
    ban_key = sanction_keys(store, "ban", connection)[0]
    await other.set(ban_key, sanction("ban").model_dump(mode="json"))
    refused = await send()
    assert not refused["ok"] and "banned" in refused["error"]["message"]
    await other.delete(ban_key)
    assert (await send())["ok"]
    # a mute made through the plugin, then an event without text (mutes are not read for
    # it), then one with text: the mute is read for that one
    await store.add_sanction(sanction("mute"))
    assert (await client.call("join-room", {"room": "lobby"}))["ok"]
    join = bus.events.parse_args("join-room", [{"room": "lobby"}])
    assert connection.state[QUIET_MARK][1:3] == (type(join), None)  # no text: no room read
    refused = await send()
    assert not refused["ok"] and "muted" in refused["error"]["message"]
    await store.lift_sanction("mute", "mute-1")
    assert (await send())["ok"]
    # a delay in one room: another room's clean answer does not stand for it
    await store.set_slow_mode("slow", 30)
    assert (await send("r1"))["ok"]
    assert (await send("slow"))["ok"]
    refused = await send("slow")
    assert not refused["ok"] and refused["error"]["code"] == "rate_limited"


async def test_a_memory_stores_version_counts_every_write_of_its_name() -> None:
    backend = Backend("memory")
    await backend.start()
    try:
        store, same, other = backend.store("polls"), backend.store("polls"), backend.store("x")
        writes = [
            lambda: store.set("a", 1),
            lambda: store.add("b", 1),
            lambda: store.exchange("a", 2),
            lambda: store.delete_if("a", 2),
            lambda: store.incr("n"),
            lambda: store.expire("n", 60),
            lambda: store.hset("h", {"f": 1}),
            lambda: store.hdel("h", "f"),
            lambda: store.sadd("s", "m"),
            lambda: store.srem("s", "m"),
            lambda: store.append("l", 1),
            lambda: store.take_token("t", rate=1, burst=1),
            lambda: store.delete("b"),
        ]
        for write in writes:
            before, unrelated = store.version_now(), other.version_now()
            await write()
            assert store.version_now() > before and same.version_now() == store.version_now()
            assert other.version_now() == unrelated
        async with same.batch() as batch:
            batch.set("c", 1)
            before = store.version_now()
        assert store.version_now() > before
        before = store.version_now()
        await store.get_many(["a", "c"])
        await store.hget("h", "f")
        await store.hgetall("h")
        await store.smembers("s")
        await store.tail("l", 1)
        store.get_many_now(["a"])
        store.hget_now("h", "f")
        assert store.version_now() == before
    finally:
        await backend.stop()


def test_durations_appended_by_the_walks_count_as_each_call_added() -> None:
    """The per-event walks append durations and :class:`ImplTimings` counts them when read:
    the same calls, the same float total (the same additions in the same order) and the same
    buckets as :meth:`ImplTimings.add` one call at a time; the lists stay bounded."""
    values = [i * 1.7e-6 for i in range(1, 1500)] + [0.00005, 0.0001, 0.3, 2.0, 1e-9]
    added, appended = ImplTimings(), ImplTimings()
    for seconds in values:
        added.add("plugbus_moderate", "moderation", seconds)
    entry, samples = appended.durations("plugbus_moderate", "moderation")
    for seconds in values[:700]:
        samples.append(seconds)
    assert appended.stats == {("plugbus_moderate", "moderation"): entry}
    assert entry[0] == 700 and samples == []
    samples.extend(values[700:])
    assert appended.stats == added.stats
    # through the walk's own step: every call counted, at most FOLD_AT durations waiting
    loaded = load_config()
    fast = Bus(loaded.config, load_plugins(loaded)).hooks._moderate.fast
    assert fast is not None
    call = fast[0]
    timings = ImplTimings()
    for _ in range(3 * FOLD_AT + 5):
        _timed(timings, "plugbus_moderate", call, time.perf_counter())
    assert call.samples is not None and len(call.samples) < FOLD_AT
    counted = timings.stats[("plugbus_moderate", call.plugin_name)]
    assert counted[0] == 3 * FOLD_AT + 5 == sum(counted[2])


def _one_socket_error(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """What relay's socket message used before its union reported its own error."""
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError(
            "message_type", "Input should be a valid string, a JSON object or array, or binary data"
        ) from None


class WrappedSendMessage(Event):
    name: ClassVar[str] = "wrapped-send-message"
    message: Annotated[
        str
        | Annotated[bytes, PlainValidator(_strict_bytes)]
        | dict[str, JsonValue]
        | list[JsonValue],
        WrapValidator(_one_socket_error),
    ]
    roomID: str


@pytest.mark.parametrize(
    "message",
    [1, None, 1.5, True, {"a": {1, 2}}, [object()], {1: 2}, b"x", bytearray(b"y"), "s", {"a": [1]}],
)
def test_a_socket_message_is_refused_with_the_one_error_the_wrap_validator_gave(
    message: Any,
) -> None:
    def outcome(cls: type[Event]) -> Any:
        try:
            return cls.model_validate({"message": message, "roomID": "r"}).message
        except ValidationError as exc:
            return exc.errors(include_url=False)

    assert outcome(SendMessage) == outcome(WrappedSendMessage)


async def test_a_text_message_skips_the_sender_check_only_while_no_role_is_asked_for(
    plugbus_app: PlugbusAppFactory,
) -> None:
    """relay skips ``_check_sender`` for a text ``send-message`` when ``sender_roles`` is
    empty (the check has nothing to refuse then); with roles asked for, or a message that is
    not text, it runs as before."""
    app = await plugbus_app(settings={"relay": {"sender_roles": {"send-message": ["admin"]}}})
    client = await app.client()
    refused = await client.call("send-message", {"message": "hi", "roomID": "r1"})
    assert not refused["ok"] and refused["error"]["code"] == "not_allowed"
    assert refused["error"]["details"]["roles"] == ["admin"]
    open_app = await plugbus_app(settings={"relay": {"structured": False}})
    other = await open_app.client()
    assert (await other.call("send-message", {"message": "hi", "roomID": "r1"}))["ok"]
    refused = await other.call("send-message", {"message": {"a": 1}, "roomID": "r1"})
    assert not refused["ok"] and refused["error"]["code"] == "invalid_payload"


def test_membership_and_room_sizes_read_the_attached_transport_as_the_property_does() -> None:
    """``Bus.is_member`` and ``room_size`` read the attached transport without the
    ``transport`` property's call; with none attached they still raise as it does."""
    loaded = load_config()
    bus = Bus(loaded.config, load_plugins(loaded))
    assert bus.is_member("sid-1", "sid-1") is True  # a connection's own room: no transport
    with pytest.raises(RuntimeError, match="no transport"):
        bus.is_member("sid-1", "r1")
    with pytest.raises(RuntimeError, match="no transport"):
        bus.room_size("r1")


MODERATE = "plugins_for_tests.moderate_plugins"


def _moderate_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *names: str) -> Bus:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    path = tmp_path / "config.yaml"
    modules = {name.lower(): f"{MODERATE}:{name}" for name in names}
    path.write_text(
        yaml.safe_dump({"plugins": {"builtins": [], "entry_points": False, "modules": modules}}),
        encoding="utf-8",
    )
    loaded = load_config(path)
    return Bus(loaded.config, load_plugins(loaded))


async def _outcome(call: Any) -> tuple[list[Any], Any]:
    from plugins_for_tests import moderate_plugins

    moderate_plugins.RECORD.clear()
    try:
        result: Any = await call()
        if isinstance(result, Event):
            result = (type(result).__name__, result.model_dump())
    except Exception as exc:  # the same exception, by type and message
        result = (type(exc).__name__, str(exc))
    return list(moderate_plugins.RECORD), result


MODERATED_TEXTS = [
    "hello",
    "mask",
    "drop-first",
    "wrong-first",
    "defer-mask",
    "no-deferred",
    "drop-last",
]


@pytest.mark.parametrize("text", MODERATED_TEXTS)
async def test_moderate_without_a_coroutine_calls_as_the_general_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """``Hooks.moderate_now`` runs synchronous implementations in the call and hands the rest
    of the walk to a coroutine from the first that returns an awaitable. It, ``Hooks.moderate``
    and the general walk (the one monitors and tracing take) make the same calls in the same
    order, give the same event (masked or not) or the same exception, and time each call."""
    from plugins_for_tests.moderate_plugins import Say

    bus = _moderate_bus(tmp_path, monkeypatch, "First", "Deferred", "Last")
    timings = bus.hooks.time_implementations()
    ctx = bus.context(Origin.SOCKET, Connection("sid-1", "/"))

    def counts() -> dict[str, int]:
        return {plugin: entry[0] for (hook, plugin), entry in timings.stats.items()}

    async def now() -> Any:
        moderated = bus.hooks.moderate_now(Say(text=text), ctx)
        return moderated if type(moderated) is Say else await moderated  # type: ignore[misc]

    fast = await _outcome(now)
    fast_counts = counts()
    assert await _outcome(lambda: bus.hooks.moderate(Say(text=text), ctx)) == fast
    assert {p: n * 2 for p, n in fast_counts.items()} == counts()
    fast_counts = {p: n // 2 for p, n in counts().items()}
    bus.hooks._trace = True  # the general walk (_call, _ainvoke), as a monitor would take
    try:
        general = await _outcome(lambda: bus.hooks.moderate(Say(text=text), ctx))
    finally:
        bus.hooks._trace = False
    assert fast == general
    if text in ("hello", "mask", "defer-mask", "wrong-first"):
        # timed alike both times (an implementation that raises is timed by the general walk
        # only, as before this shortcut: the per-event walk counts what returned)
        assert {p: n * 3 for p, n in fast_counts.items()} == counts()
    # pluggy's order (the last registered first); a replacement is what the next one sees
    calls = [
        ("last", text),
        ("first", text),
        ("deferred called", text),
        ("deferred awaited", text),
    ]
    masked = [*calls[:2], ("deferred called", "****"), ("deferred awaited", "****")]
    every = {"last": 1, "first": 1, "deferred": 1}
    expected = {
        "hello": (calls, ("Say", {"text": "hello"}), every),
        "mask": (masked, ("Say", {"text": "****"}), every),
        "drop-first": (calls[:2], ("EventDropped", "first drops"), {"last": 1}),
        "wrong-first": (
            calls[:2],
            (
                "TypeError",
                "plugbus_moderate of plugin 'first' returned Whisper; expected None or a Say",
            ),
            {"last": 1, "first": 1},
        ),
        "defer-mask": (calls, ("Say", {"text": "deferred ****"}), every),
        "no-deferred": (calls, ("NotAllowed", "deferred says no"), {"last": 1, "first": 1}),
        "drop-last": (calls[:1], ("EventDropped", "last drops"), {}),
    }[text]
    assert fast[0] == expected[0]
    assert fast[1] == expected[1]
    assert fast_counts == expected[2]


async def test_moderate_now_makes_no_coroutine_while_every_implementation_answers_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plugins_for_tests import moderate_plugins
    from plugins_for_tests.moderate_plugins import Say

    bus = _moderate_bus(tmp_path, monkeypatch, "First", "Last")
    ctx = bus.context(Origin.SOCKET, Connection("sid-1", "/"))
    moderate_plugins.RECORD.clear()
    event = Say(text="hello")
    assert bus.hooks.moderate_now(event, ctx) is event
    masked = bus.hooks.moderate_now(Say(text="mask"), ctx)
    assert type(masked) is Say and masked.text == "****"
    assert moderate_plugins.RECORD == [
        ("last", "hello"),
        ("first", "hello"),
        ("last", "mask"),
        ("first", "mask"),
    ]
    with pytest.raises(EventDropped, match="first drops"):
        bus.hooks.moderate_now(Say(text="drop-first"), ctx)
    # one implementation that returns an awaitable: the rest of the walk, to await
    bus = _moderate_bus(tmp_path, monkeypatch, "First", "Deferred", "Last")
    ctx = bus.context(Origin.SOCKET, Connection("sid-1", "/"))
    pending = bus.hooks.moderate_now(Say(text="defer-mask"), ctx)
    assert inspect.isawaitable(pending)
    done = await pending
    assert type(done) is Say and done.text == "deferred ****"


@pytest.mark.parametrize("text", [*MODERATED_TEXTS, "pass-on", "first-handle", "defer-handle"])
@pytest.mark.parametrize("name", ["say", "whisper"])
async def test_dispatch_args_answers_as_publish_of_the_parsed_event(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    text: str,
    name: str,
) -> None:
    """``Bus.dispatch_args`` runs ``publish``'s steps inline: the same history flag, the same
    moderation, a drop answered None and logged alike, the same handlers (plain, ``async def``,
    arguments in another order) called in the same order, the same answer or exception, each
    call timed alike; ``publish`` through the general walks (tracing on) answers the same."""
    bus = _moderate_bus(tmp_path, monkeypatch, "First", "Deferred", "Last")
    timings = bus.hooks.time_implementations()

    def counts() -> dict[tuple[str, str], int]:
        return {key: entry[0] for key, entry in timings.stats.items()}

    async def run(way: str) -> tuple[tuple[list[Any], Any], bool, list[str], Any]:
        ctx = bus.context(Origin.SOCKET, Connection("sid-1", "/"))
        caplog.clear()
        before = counts()
        if way == "inline":
            outcome = await _outcome(lambda: bus.dispatch_args(name, [{"text": text}], ctx))
        else:
            bus.hooks._trace = way == "general"
            try:
                outcome = await _outcome(
                    lambda: bus.publish(bus.events.parse_args(name, [{"text": text}], "/"), ctx)
                )
            finally:
                bus.hooks._trace = False
        after = counts()
        timed = {key: n - before.get(key, 0) for key, n in after.items()}
        logged = [r.getMessage() for r in caplog.records if r.name == "plugbus.bus"]
        return outcome, ctx.history, logged, timed

    with caplog.at_level("INFO", logger="plugbus.bus"):
        inline = await run("inline")
        published = await run("publish")
        general = await run("general")
    assert inline == published
    if text not in ("drop-first", "no-deferred", "drop-last"):
        assert inline == general  # (raising implementations: timed by the general walk only)
    else:
        assert inline[:3] == general[:3]
    (record, result), history, logged, timed = inline
    assert history is (name == "say")
    handled = [r for r in record if "handle" in r[0]]
    if text.startswith("drop-"):
        assert result is None
        assert logged == [f"dropped {name} from sid-1: {text.split('-')[1]} drops"]
        assert handled == []
    elif text in ("hello", "mask", "defer-mask"):
        shown = {"hello": "hello", "mask": "****"}.get(text, "deferred ****")
        assert result == {"text": shown, "history": name == "say"}
        assert handled == [("handled", shown)]
        assert timed[("plugbus_handle_event", "last")] == 1
        assert ("plugbus_handle_event", "first") not in timed
    elif text == "first-handle":
        assert result == {"first": text}
        assert handled == [("first handles", text)]
    elif text == "defer-handle":
        assert result == {"deferred": text, "history": name == "say"}
        assert handled == [("first handles", text), ("deferred handles", text)]
        assert timed[("plugbus_handle_event", "deferred")] == 1
    elif text == "pass-on":
        assert result is None
        assert handled == [("first handles", text), ("deferred handles", text)]
        assert {k[1] for k in timed if k[0] == "plugbus_handle_event"} == {
            "last",
            "first",
            "deferred",
        }
    else:
        assert result[0] in ("TypeError", "NotAllowed")
        assert handled == []


@pytest.mark.parametrize("room", ["open", "no-first", "no-deferred", "no-last"])
@pytest.mark.parametrize("kinds", [("a", "b", "c"), ("a", "c")])
async def test_bus_authorize_join_answers_as_the_general_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, room: str, kinds: tuple[str, ...]
) -> None:
    """``Bus.authorize_join`` awaits the walk only when it has something left to await (an
    implementation that returned an awaitable): the same calls, the same refusal as the
    general walk, with and without such an implementation."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    from plugins_for_tests import join_plugins

    names = {"a": "First", "b": "Deferred", "c": "Last"}
    path = tmp_path / "config.yaml"
    modules = {kind: f"{JOIN}:{names[kind]}" for kind in kinds}
    path.write_text(
        yaml.safe_dump({"plugins": {"builtins": [], "entry_points": False, "modules": modules}}),
        encoding="utf-8",
    )
    loaded = load_config(path)
    bus = Bus(loaded.config, load_plugins(loaded))
    connection = Connection("sid-1", "/")

    async def outcome(call: Any) -> tuple[list[Any], Any]:
        join_plugins.RECORD.clear()
        try:
            await call()
            result: Any = "passed"
        except NotAllowed as exc:
            result = exc.message
        return list(join_plugins.RECORD), result

    through_bus = await outcome(lambda: bus.authorize_join(connection, room))
    general = await outcome(
        lambda: bus.hooks._each(
            "plugbus_authorize_join",
            {"connection": connection, "room": room, "bus": bus},
            keep_going=False,
        )
    )
    assert through_bus == general
    refused = {"no-first": "first says no", "no-last": "last says no"}
    if "b" in kinds:
        refused["no-deferred"] = "deferred says no"
    assert through_bus[1] == refused.get(room, "passed")
    assert ("deferred awaited", room) in through_bus[0] or "b" not in kinds or room == "no-last"
