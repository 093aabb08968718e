"""Room history: the bounded log that connection state recovery replays and history pages read.

Every event the bus stores gets an **offset**, ``"<ms>-<seq>"``: a millisecond timestamp and a
sequence number that one counter hands out for the whole cluster (in this process with the
memory backend, in Redis with a Redis backend). Offsets order events across rooms, which is what
lets a reconnecting client name one offset for all its rooms. They are also the ids of the
messages in history and the Redis Stream entry ids, so trimming by age is Redis's own ``MINID``.

An event is stored in one **stream**: a room's (``room``), a connection's own (``sid``: direct
messages) or its namespace's (``all``: broadcasts). A recovery reads only the streams of the
client's own rooms, its own and its namespace's — not every event of the cluster.

With Redis, one Lua script takes the next offset, appends to the stream, trims it and appends
the event to the cluster's **feed** (a Redis Stream of every event, in offset order, kept
events and ephemeral ones alike), atomically. Every node follows the feed with ``XREAD`` from
the last offset it delivered, and resumes from there after any disconnection from Redis: the
nodes receive every event once and in offset order, which is what makes an offset a truthful
"everything up to here was delivered" mark. Each node delivers what it reads through the
callback the bus gives it (:attr:`History.deliver`). A stream also
remembers, in a *floor* key, the newest offset it ever trimmed: a recovery from an older offset
would have a gap, and is refused rather than silently lossy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import orjson

from .errors import BackendUnavailable

if TYPE_CHECKING:
    from .backend import Backend
    from .config import HistorySettings

log = logging.getLogger("plugbus.history")


class Parking:
    """A connection's word with its reader about ordered appends: while the reader runs one of
    the connection's messages eagerly (``eager``), an append that suspends on the line's
    future records that future (``future``), so that the reader knows, exactly, that the
    message is suspended on nothing but its own append."""

    __slots__ = ("behind", "eager", "future")

    #: set once a Redis history that can park (no ``backend_replicas``) was made in this
    #: process: until then the reader keeps no ``Parking`` (nothing per message)
    wanted: ClassVar[bool] = False

    def __init__(self) -> None:
        self.eager = False
        #: the message running eagerly was started while earlier ones wait for their appends:
        #: what it says or does, but for its own append, waits for its turn
        self.behind = False
        self.future: asyncio.Future[Any] | None = None


#: set once in a connection's context by the direct websocket reader
PARKING: ContextVar[Parking | None] = ContextVar("plugbus_parking", default=None)


async def wait_turn() -> None:
    """Return once the messages of this connection before the running one are finished: at
    once, unless it was started while they waited for their appends (``Parking.behind``);
    then it suspends, which holds it (and what follows it) until the reader's host has
    finished them."""
    parking = PARKING.get()
    if parking is not None and parking.behind:
        await asyncio.sleep(0)


#: Which stream an event goes to: a room's, one connection's (direct), or everyone's.
Kind = Literal["room", "sid", "all"]
_KIND_CODE = {"room": "r", "sid": "s", "all": "a"}

#: ``deliver(namespace, event, args, target, kind, skip_sid, offset)``: hand an event to this
#: node's connections (the socket door's fan-out).
Deliver = Callable[[str, str, tuple[Any, ...], str | None, str, str | None, str | None], None]

ZERO = "0-0"


def parse_offset(text: Any) -> tuple[int, int] | None:
    """``"<ms>-<seq>"`` as a pair of integers, or None when it is not an offset."""
    if not isinstance(text, str) or len(text) > 41:
        return None
    ms, sep, seq = text.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit() or not ms.isascii() or not seq.isascii():
        return None
    return int(ms), int(seq)


def later(a: str, b: str) -> str:
    """The later of two offsets."""
    return a if (parse_offset(a) or (0, 0)) >= (parse_offset(b) or (0, 0)) else b


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event in history.

    :ivar id: its offset (``"<ms>-<seq>"``), unique and ordered across the cluster.
    :ivar event: the event name.
    :ivar args: its arguments (binary data as bytes).
    :ivar skip: the connection it was not sent to (the sender of an "everyone but me").
    :ivar room: the room it was sent to (None for a broadcast or a direct message).
    """

    id: str
    event: str
    args: tuple[Any, ...]
    skip: str | None = None
    room: str | None = None

    @property
    def ts(self) -> float:
        """When it was stored, in seconds since the epoch."""
        return int(self.id.partition("-")[0]) / 1000


class FeedEvent:
    """One event read from the feed, on its way to this node's connections.

    :ivar namespace: its namespace.
    :ivar target: the room or connection it goes to (None: everyone in the namespace).
    :ivar skip: the connection it is not sent to.
    :ivar offset: its offset when it is stored (None: an ephemeral event).
    :ivar mark: its feed id (the offset it has, stored or not): the node's watermark once it
        is delivered.
    :ivar text: the JSON text of ``[event, *args]`` as the publishing node encoded it, once
        for every node (None when it could not: binary data; :attr:`call` has the values).
    """

    __slots__ = ("_call", "mark", "namespace", "offset", "skip", "target", "text")

    def __init__(
        self,
        namespace: str,
        target: str | None,
        skip: str | None,
        offset: str | None,
        mark: str,
        text: str | None,
        call: tuple[str, tuple[Any, ...]] | None = None,
    ) -> None:
        self.namespace = namespace
        self.target = target
        self.skip = skip
        self.offset = offset
        self.mark = mark
        self.text = text
        self._call = call

    @property
    def call(self) -> tuple[str, tuple[Any, ...]]:
        """``(event, args)``, decoded from :attr:`text` the first time it is asked for (only
        recipients that need more than the encoded text do)."""
        if self._call is None:
            assert self.text is not None
            values = orjson.loads(self.text)
            self._call = (values[0], tuple(values[1:]))
        return self._call


#: ``deliver_many(events)``: hand events read from the feed, in offset order, to this node's
#: connections (the socket door's batched fan-out).
DeliverMany = Callable[[list[FeedEvent]], None]


_new_object = object.__new__
_time = time.time
_set_id, _set_event, _set_args, _set_skip, _set_room = (
    StoredEvent.__dict__[name].__set__ for name in ("id", "event", "args", "skip", "room")
)


def _stored_event(
    id: str, event: str, args: tuple[Any, ...], skip: str | None, room: str | None
) -> StoredEvent:
    """``StoredEvent(id, event, args, skip, room)`` at half the cost, for the memory history's
    append (once per emitted event): a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``; this sets the slots through their descriptors directly."""
    stored: StoredEvent = _new_object(StoredEvent)
    _set_id(stored, id)
    _set_event(stored, event)
    _set_args(stored, args)
    _set_skip(stored, skip)
    _set_room(stored, room)
    return stored


@dataclass(frozen=True, slots=True)
class StreamRead:
    """One stream a recovery reads: its kind and name, and the offset it has up to."""

    kind: Kind
    name: str | None
    after: str


# -- the stored form ------------------------------------------------------------------------
# An entry (in its stream and on the feed alike) has five fields, always in this order, so a
# node reading the feed takes them by position from the raw reply, with no dict per entry:
# "k" the kind code ("r", "s", "a"; "~" after it for an ephemeral event), "n" the namespace,
# "t" the target ("" for everyone), "x" the connection skipped ("" for none) and "d" the JSON
# text of [event, *args] -- made once by the publishing node, and the very text every node
# puts in its Socket.IO packet (orjson with non-string keys allowed, as the wire encodes).
# Events JSON cannot carry (binary data) keep the older one-field form, "e": JSON with binary
# data lifted out as Socket.IO does it (a {"_placeholder": true, "num": i} in place, the bytes
# base64 in "b"); entries of that form written before are read as they were.

_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS


def encode_call(event: str, args: tuple[Any, ...]) -> str | None:
    """The JSON text of ``[event, *args]``, or None when JSON cannot carry it (bytes)."""
    try:
        return orjson.dumps([event, *args], option=_JSON_OPTIONS).decode()
    except TypeError:
        return None


def entry_values(
    namespace: str,
    event: str,
    args: tuple[Any, ...],
    target: str | None,
    kind: str,
    skip: str | None,
    kept: bool = True,
) -> list[str]:
    """An event's entry as the append script takes it: the values of "k", "n", "t", "x" and
    "d" (the script adds the field names); "k" empty for the one-field "e" form, whose text
    is then the last value."""
    text = encode_call(event, args)
    if text is None:
        return ["", "", "", "", pack(namespace, event, args, target, kind, skip, kept).decode()]
    code = _KIND_CODE[kind] if kept else _KIND_CODE[kind] + "~"
    return [code, namespace, target or "", skip or "", text]


def feed_event(offset: str, fields: list[Any]) -> FeedEvent:
    """A feed entry (its raw field/value list) as a :class:`FeedEvent`."""
    if fields[0] == "k":
        code = fields[1]
        return FeedEvent(
            fields[3],
            fields[5] if code[0] != "a" else None,
            fields[7] or None,
            offset if len(code) == 1 else None,
            offset,
            fields[9],
        )
    record, stored = unpack(offset, fields[1])
    return FeedEvent(
        record["n"],
        record.get("t"),
        stored.skip,
        None if record.get("v") else offset,
        offset,
        None,
        (stored.event, stored.args),
    )


def stored_event(offset: str, fields: dict[str, Any]) -> StoredEvent:
    """A stream entry (its fields as redis-py returns them) as a :class:`StoredEvent`."""
    if "e" in fields:
        return unpack(offset, fields["e"])[1]
    values = orjson.loads(fields["d"])
    room = fields["t"] if fields["k"][0] == "r" else None
    return StoredEvent(offset, values[0], tuple(values[1:]), fields["x"] or None, room)


def _lift(value: Any, out: list[bytes]) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        out.append(bytes(value))
        return {"_placeholder": True, "num": len(out) - 1}
    if isinstance(value, list | tuple):
        return [_lift(v, out) for v in value]
    if isinstance(value, dict):
        return {k: _lift(v, out) for k, v in value.items()}
    return value


def _drop(value: Any, attachments: list[bytes]) -> Any:
    if isinstance(value, list):
        return [_drop(v, attachments) for v in value]
    if isinstance(value, dict):
        if value.get("_placeholder") is True and isinstance(value.get("num"), int):
            return attachments[value["num"]]
        return {k: _drop(v, attachments) for k, v in value.items()}
    return value


def pack(
    namespace: str,
    event: str,
    args: tuple[Any, ...],
    target: str | None,
    kind: str,
    skip: str | None,
    kept: bool = True,
) -> bytes:
    """An event as stored and as the nodes read it from the feed (``kept`` False: an
    ephemeral event, on the feed only)."""
    attachments: list[bytes] = []
    lifted = _lift(list(args), attachments)
    record: dict[str, Any] = {"n": namespace, "e": event, "a": lifted, "t": target, "k": kind}
    if skip is not None:
        record["x"] = skip
    if not kept:
        record["v"] = 1
    if attachments:
        record["b"] = [base64.b64encode(a).decode() for a in attachments]
    return orjson.dumps(record)


def unpack(offset: str, raw: bytes | str) -> tuple[dict[str, Any], StoredEvent]:
    """(the record, its :class:`StoredEvent`) from :func:`pack`'s text."""
    record = orjson.loads(raw)
    args = record["a"]
    if "b" in record:
        args = _drop(args, [base64.b64decode(b) for b in record["b"]])
    room = record.get("t") if record.get("k") == "room" else None
    return record, StoredEvent(offset, record["e"], tuple(args), record.get("x"), room)


# -- memory ---------------------------------------------------------------------------------


#: one event in a memory stream: its offset as a key, then StoredEvent's five fields (id,
#: event, args, skip, room). A plain tuple: the StoredEvent is made when the event is read
#: (:func:`_entry_event`), not on every append.
_Entry = tuple[tuple[int, int], str, str, tuple[Any, ...], str | None, str | None]


def _entry_event(entry: _Entry) -> StoredEvent:
    """The :class:`StoredEvent` a memory stream's entry holds."""
    return _stored_event(entry[1], entry[2], entry[3], entry[4], entry[5])


@dataclass(slots=True)
class _Stream:
    max_messages: int
    max_age_ms: int
    entries: deque[_Entry]
    floor: tuple[int, int] = (0, 0)

    def trim(self, now_ms: int) -> None:
        entries = self.entries
        while len(entries) > self.max_messages:
            self.floor = entries.popleft()[0]
        cutoff = now_ms - self.max_age_ms
        while entries and entries[0][0][0] < cutoff:
            self.floor = entries.popleft()[0]


class MemoryHistory:
    """History in this process (the memory backend): nothing survives a restart.

    :ivar watermark: the newest offset handed out; every stored event up to it was delivered.
    """

    shared = False

    def __init__(self, settings: HistorySettings) -> None:
        self.settings = settings
        self.deliver: Deliver | None = None
        #: the feed's batched delivery (a Redis history delivers every event through it)
        self.deliver_many: DeliverMany | None = None
        self.watermark = ZERO
        self._ms = 0
        self._seq = 0
        self._streams: dict[tuple[str, str, str | None], _Stream] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def keeps(self, kind: Kind, target: str | None) -> bool:
        """Whether events to this stream are stored (its room's ``max_messages`` is not 0)."""
        if not self.settings.rooms:  # no per-room limits: every stream is kept alike
            return self.settings.max_messages > 0
        return self.settings.limits_for(target if kind == "room" else None)[0] > 0

    def _next(self) -> tuple[int, int]:
        now = int(time.time() * 1000)
        self._ms = max(now, self._ms)  # never backwards, whatever the clock does
        self._seq += 1
        return self._ms, self._seq

    def _stream(self, namespace: str, kind: Kind, name: str | None) -> _Stream:
        key = (namespace, kind, name)
        stream = self._streams.get(key)
        if stream is None:
            most, age = self.settings.limits_for(name if kind == "room" else None)
            stream = self._streams[key] = _Stream(most, int(age * 1000), deque())
        return stream

    async def append(
        self,
        namespace: str,
        kind: Kind,
        target: str | None,
        event: str,
        args: tuple[Any, ...],
        skip: str | None,
        *,
        park: bool = False,
    ) -> str:
        """Store an event and deliver it on this node; return its offset. (``park`` is
        :meth:`RedisHistory.append`'s: nothing waits here.)"""
        return self.append_now(namespace, kind, target, event, args, skip)

    def append_now(
        self,
        namespace: str,
        kind: Kind,
        target: str | None,
        event: str,
        args: tuple[Any, ...],
        skip: str | None,
    ) -> str:
        """:meth:`append` without its coroutine: a memory history never waits, so
        ``Bus.emit`` calls this directly (once per emitted event)."""
        # _next, inline (once per emitted event)
        now = int(_time() * 1000)
        if now > self._ms:  # never backwards, whatever the clock does
            self._ms = now
        ms = self._ms
        seq = self._seq = self._seq + 1
        key = (ms, seq)
        offset = f"{ms}-{seq}"
        stream = self._streams.get((namespace, kind, target))
        if stream is None:
            stream = self._stream(namespace, kind, target)
        entries = stream.entries
        if len(entries) >= stream.max_messages and entries:
            # a full stream (every event, once a room has a history): the oldest goes, as
            # trim would take it after the append, without trim's call and loop
            stream.floor = entries.popleft()[0]
        entries.append((key, offset, event, args, skip, target if kind == "room" else None))
        # trim only when something is to go: the first test of each of trim's loops
        if len(entries) > stream.max_messages or entries[0][0][0] < ms - stream.max_age_ms:
            stream.trim(ms)
        self.watermark = offset
        if self.deliver is not None:
            self.deliver(namespace, event, args, target, kind, skip, offset)
        return offset

    async def read(self, namespace: str, streams: list[StreamRead]) -> list[StoredEvent] | None:
        """Every stored event after each stream's offset, merged in offset order; None when
        one of the streams trimmed an event the reader has not seen (a gap)."""
        now = int(time.time() * 1000)
        out: list[_Entry] = []
        for want in streams:
            stream = self._streams.get((namespace, want.kind, want.name))
            if stream is None:
                continue
            stream.trim(now)
            after = parse_offset(want.after) or (0, 0)
            if stream.floor > after:
                return None
            out.extend(entry for entry in stream.entries if entry[0] > after)
        out.sort(key=lambda entry: entry[0])
        return [_entry_event(entry) for entry in out]

    async def page(
        self, namespace: str, room: str, after: str | None, limit: int
    ) -> list[StoredEvent]:
        """Up to ``limit`` events of ``room`` after offset ``after`` (from the oldest kept
        when None), oldest first."""
        stream = self._streams.get((namespace, "room", room))
        if stream is None:
            return []
        stream.trim(int(time.time() * 1000))
        start = parse_offset(after) if after is not None else (0, 0)
        out = []
        for entry in stream.entries:
            if start is None or entry[0] > start:
                out.append(_entry_event(entry))
                if len(out) >= limit:
                    break
        return out

    async def delete(self, namespace: str, room: str, offset: str) -> bool:
        """Remove one event from ``room``'s history (moderation); True when it was there."""
        stream = self._streams.get((namespace, "room", room))
        key = parse_offset(offset)
        if stream is None or key is None:
            return False
        for i, entry in enumerate(stream.entries):
            if entry[0] == key:
                del stream.entries[i]
                return True
        return False

    def size(self) -> int:
        """Events held in all streams (for memory measurements)."""
        return sum(len(s.entries) for s in self._streams.values())

    async def start(self) -> None:
        """Drop idle streams now and then (a stream is otherwise trimmed when written)."""
        self._sweeper = asyncio.create_task(self._sweep(), name="plugbus-history-sweep")

    async def stop(self) -> None:
        """Stop sweeping."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(30)
            now = int(time.time() * 1000)
            for key, stream in list(self._streams.items()):
                stream.trim(now)
                if not stream.entries:
                    del self._streams[key]


# -- Redis ----------------------------------------------------------------------------------

# The cluster-wide clock both scripts below start with (KEYS[1] is its hash): the next offset
# ``id``, never behind the last one even when a node's or Redis's clock steps back.
_CLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('HGET', KEYS[1], 'ms') or '0')
if now < last then now = last end
local ms = string.format('%.0f', now)
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'ms', ms)
local id = ms .. '-' .. seq
"""

# KEYS: the clock hash, the stream, its floor key, the feed.
# ARGV: max_messages, max_age_ms, the feed's length, "1" to keep the event in its stream ("0":
# an ephemeral event, on the feed only), then the entry's five values (entry_values).
# Returns the offset. TIME in a script is allowed since Redis 5 (effects are replicated).
APPEND_SCRIPT = (
    _CLOCK
    + """
local fields
if ARGV[5] == '' then
  fields = {'e', ARGV[9]}
else
  fields = {'k', ARGV[5], 'n', ARGV[6], 't', ARGV[7], 'x', ARGV[8], 'd', ARGV[9]}
end
if ARGV[4] == '1' then
  local maxlen = tonumber(ARGV[1])
  local maxage = tonumber(ARGV[2])
  redis.call('XADD', KEYS[2], id, unpack(fields))
  local floor = false
  local len = redis.call('XLEN', KEYS[2])
  if len > maxlen then
    local gone = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', len - maxlen)
    floor = gone[#gone][1]
    redis.call('XTRIM', KEYS[2], 'MAXLEN', maxlen)
  end
  -- the oldest entry first: XREVRANGE from the cutoff walks back over every newer entry of
  -- its listpack node (~90 us a call with a thousand entries), so it runs only when
  -- something is old enough to trim
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
  if #first > 0 and tonumber(string.match(first[1][1], '^(%d+)')) < now - maxage then
    local cutoff = string.format('%.0f', now - maxage) .. '-0'
    local old = redis.call('XREVRANGE', KEYS[2], '(' .. cutoff, '-', 'COUNT', 1)
    floor = old[1][1]
    redis.call('XTRIM', KEYS[2], 'MINID', cutoff)
  end
  if floor then redis.call('SET', KEYS[3], floor, 'PX', maxage) end
  redis.call('PEXPIRE', KEYS[2], maxage)
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], id, unpack(fields))
return id
"""
)


# An invalidation of cached keys (NodeCache) on the feed, in the events' order and clock.
# KEYS: the clock hash, the feed. ARGV: the feed's length, the keys (a JSON list). Returns the
# entry's offset.
INVALIDATE_SCRIPT = (
    _CLOCK
    + """
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id, 'i', ARGV[2])
return id
"""
)

# The append script for a batch of events (issue #16 item 4): what APPEND_SCRIPT does for one
# event, for each of N in one call -- the clock read once, each event its own offset (one
# millisecond, consecutive sequence numbers, in the batch's order; the clock's "ms" written
# only when it moved), each stream trimmed once after the batch's appends to it (the same
# entries and floor as trimming after each: the script is atomic, so nothing sees the states
# in between), the entries that go and the new first one (for the age limit) in one XRANGE.
# KEYS: the clock hash, the feed, then per event its stream and its floor key.
# ARGV: the feed's length, then per event eight values: max_messages, max_age_ms, "1" to keep
# it in its stream, and the entry's five values (entry_values).
# Returns one reply per event, in order: its offset, or the error its XADD met (an event
# either is stored and on the feed or was refused -- one event's error fails that event
# alone, as when each had its own call).
APPEND_BATCH_SCRIPT = """
local n = (#KEYS - 2) / 2
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('HGET', KEYS[1], 'ms') or '0')
if now < last then now = last end
local ms = string.format('%.0f', now)
local first_seq = redis.call('HINCRBY', KEYS[1], 'seq', n) - n
if now > last then redis.call('HSET', KEYS[1], 'ms', ms) end
local out = {}
local kept = {}
local order = {}
for i = 1, n do
  local id = ms .. '-' .. (first_seq + i)
  local a = 2 + (i - 1) * 8
  local fields
  if ARGV[a + 3] == '' then
    fields = {'e', ARGV[a + 7]}
  else
    fields = {'k', ARGV[a + 3], 'n', ARGV[a + 4], 't', ARGV[a + 5], 'x', ARGV[a + 6],
              'd', ARGV[a + 7]}
  end
  local ok = true
  if ARGV[a + 2] == '1' then
    local key = KEYS[1 + 2 * i]
    local added = redis.pcall('XADD', key, id, unpack(fields))
    if type(added) == 'table' and added.err then
      out[i] = added
      ok = false
    elseif not kept[key] then
      kept[key] = {KEYS[2 + 2 * i], tonumber(ARGV[a]), tonumber(ARGV[a + 1])}
      order[#order + 1] = key
    end
  end
  if ok then
    local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id, unpack(fields))
    if type(added) == 'table' and added.err then out[i] = added else out[i] = id end
  end
end
for _, key in ipairs(order) do
  local floorkey, maxlen, maxage = kept[key][1], kept[key][2], kept[key][3]
  local floor = false
  local first
  local len = redis.call('XLEN', key)
  if len > maxlen then
    -- the entries that go and the one that is first after them, in one read
    local gone = redis.call('XRANGE', key, '-', '+', 'COUNT', len - maxlen + 1)
    floor = gone[len - maxlen][1]
    first = gone[len - maxlen + 1]
    redis.call('XTRIM', key, 'MAXLEN', maxlen)
  else
    first = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1]
  end
  if first and tonumber(string.match(first[1], '^(%d+)')) < now - maxage then
    local cutoff = string.format('%.0f', now - maxage) .. '-0'
    local old = redis.call('XREVRANGE', key, '(' .. cutoff, '-', 'COUNT', 1)
    floor = old[1][1]
    redis.call('XTRIM', key, 'MINID', cutoff)
  end
  if floor then redis.call('SET', floorkey, floor, 'PX', maxage) end
  redis.call('PEXPIRE', key, maxage)
end
return out
"""


def bulk(value: str | int) -> bytes:
    """One RESP bulk string (``$<length>\r\n<bytes>\r\n``), as redis-py packs a command's
    argument (UTF-8)."""
    data = str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


_KEEP = bulk("1")
_EPHEMERAL = bulk("0")


class _Line:
    """One Redis connection of its own for the appends (issue #16 item 4): the events waiting
    when the connection is free go out as one call of :data:`APPEND_BATCH_SCRIPT` (at most
    :attr:`most` of them), and its one reply lists their offsets.

    redis-py makes the connection (``connect()``: authentication, TLS, the database, and for
    a Sentinel-managed one the sentinels' word on where the primary is), then this protocol
    takes its transport over: a batch is written from the call that queued it, and its reply
    is parsed (hiredis) and answered in the callback that received it. redis-py's own command
    path costs a task and two timeout contexts per command, and the pool a condition and a
    socket probe: together more CPU than the round trip (issue #16 item 4).

    Nothing is ever sent twice (issue #18): a batch that failed to go out or got no reply
    within the backend's command timeout is refused whole, and so is every event waiting
    behind it (the connection is down: a publish is refused at once, not queued for the next
    attempt); the next event connects again. ``NOSCRIPT`` (Redis restarted and lost its
    script cache: the script did not run) is answered with ``EVAL`` of the same batch. A batch
    goes out only once the one before it was answered, so the offsets follow the order of
    :meth:`append`'s calls.
    """

    #: Events one script call carries at most (Redis runs nothing else while a script runs).
    most = 256

    def __init__(self, backend: Backend, head: list[str]) -> None:
        self._conn: Any = backend.redis_client().connection_pool.make_connection()
        self._timeout = backend.command_timeout
        # the command's fixed keys (the clock and the feed) and its first value (the feed's
        # length), packed once
        self._keys = b"".join(bulk(key) for key in head[:-1])
        self._first = bulk(head[-1])
        self._evalsha = b"$7\r\nEVALSHA\r\n" + bulk(
            hashlib.sha1(APPEND_BATCH_SCRIPT.encode()).hexdigest()
        )
        self._eval = b"$4\r\nEVAL\r\n" + bulk(APPEND_BATCH_SCRIPT)
        self._queue: list[tuple[bytes, bytes, asyncio.Future[Any]]] = []
        #: the batch written and not answered yet, and whether it went again as EVAL
        self._flight: list[tuple[bytes, bytes, asyncio.Future[Any]]] | None = None
        self._again = False
        self._timer: asyncio.TimerHandle | None = None
        self._transport: Any = None
        self._parser: Any = None
        self._connecting: asyncio.Task[None] | None = None
        self._running = False

    def start(self) -> None:
        """Take appends from now on.

        :raises RuntimeError: redis-py's connection lacks the stream writer this line takes
            over (``_writer``, set by redis 8.1's connection constructor): the node refuses to
            start rather than refuse every publish later."""
        if not hasattr(self._conn, "_writer"):
            raise RuntimeError(
                f"redis-py {_redis_version()}'s connection has no stream writer (_writer): "
                "plugbus's history appends cannot take it over (verified with redis 8.1)"
            )
        self._running = True

    async def stop(self) -> None:
        self._running = False
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        self._down(ConnectionError("the node is stopping"))
        with contextlib.suppress(Exception):
            # nowait: the stream writer's protocol no longer hears of the close
            await self._conn.disconnect(nowait=True)

    def append(self, keys: bytes, values: bytes) -> asyncio.Future[Any]:
        """Queue one event: ``keys`` its stream's and floor key's bulk strings, ``values``
        its eight values' (the script's comment). Its result is the event's offset, or the
        error Redis answered for it (a value, for the caller to raise); the batch's failure
        is raised."""
        future = asyncio.get_running_loop().create_future()
        if not self._running:
            future.set_exception(ConnectionError("the history is not started"))
            return future
        self._queue.append((keys, values, future))
        if self._flight is None:
            self._next()
        return future

    def command(self, verb: bytes, calls: list[tuple[bytes, bytes, Any]]) -> bytes:
        """The RESP command for a batch: ``verb`` (``EVALSHA`` and the script's digest, or
        ``EVAL`` and its text, as bulk strings), the key count, the keys, the values."""
        n = len(calls)
        return b"".join(
            (
                b"*%d\r\n" % (6 + 10 * n),
                verb,
                bulk(2 + 2 * n),
                self._keys,
                *[keys for keys, _, _ in calls],
                self._first,
                *[values for _, values, _ in calls],
            )
        )

    def _next(self) -> None:
        """Write the next batch (nothing is in flight), or connect first."""
        if not self._queue:
            return
        if self._transport is None:
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(
                    self._connect(), name="plugbus-history-appends-connect"
                )
            return
        calls, self._queue = self._queue[: self.most], self._queue[self.most :]
        self._flight, self._again = calls, False
        self._transport.write(self.command(self._evalsha, calls))
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._timed_out)

    async def _connect(self) -> None:
        from redis.exceptions import InvalidResponse, ResponseError
        from redis.utils import HIREDIS_AVAILABLE

        conn = self._conn
        try:
            await conn.disconnect(nowait=True)
            await conn.connect()
            writer = getattr(conn, "_writer", None)
            if not isinstance(writer, asyncio.StreamWriter):
                # the one private detail of redis-py used here (redis 8.1): its stream writer
                raise RuntimeError(
                    f"redis-py {_redis_version()}'s connection has no stream writer "
                    "(_writer): plugbus's history appends cannot take it over"
                )
            encoder = conn.encoder
            if HIREDIS_AVAILABLE:
                import hiredis

                self._parser = hiredis.Reader(
                    protocolError=InvalidResponse,
                    replyError=ResponseError,
                    encoding=encoder.encoding,
                    errors=encoder.encoding_errors,
                )
            else:  # what /health's backend.reply_parser says ("python")
                self._parser = RespReader(encoder.encoding, encoder.encoding_errors)
            writer.transport.set_protocol(_Link(self, writer.transport))
            self._transport = writer.transport
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(self._queue, exc)
            self._queue = []
            return
        finally:
            self._connecting = None
        self._next()

    def _answer(self, reply: Any) -> None:
        from redis.exceptions import ResponseError

        calls = self._flight
        if calls is None:  # nothing was asked: the connection cannot be trusted
            self._transport.abort()
            return
        if isinstance(reply, ResponseError):
            if not self._again and str(reply).startswith("NOSCRIPT"):
                # Redis lost its script cache (a restart): the script did not run, so
                # sending it whole cannot store an event twice
                self._again = True
                self._transport.write(self.command(self._eval, calls))
                return
            # an error answered for the whole call (the script did not run, or stopped at
            # the clock, before any event) refuses every event of it; the connection is fine
            self._done()
            self._fail(calls, reply)
        elif not isinstance(reply, list) or len(reply) != len(calls):
            self._done()
            self._fail(calls, ResponseError(f"unexpected reply to {len(calls)} appends"))
        else:
            self._done()
            for (_, _, future), offset in zip(calls, reply, strict=True):
                if not future.done():
                    future.set_result(offset)
        self._next()

    def _done(self) -> None:
        self._flight = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        self._down(TimeoutError(f"Redis did not answer the appends within {self._timeout} s"))

    def received(self, transport: Any, data: bytes) -> None:
        if transport is not self._transport:
            return  # a connection given up already
        parser = self._parser
        parser.feed(data)
        while self._transport is transport and (reply := parser.gets()) is not False:
            self._answer(reply)

    def lost(self, transport: Any, exc: Exception | None) -> None:
        if transport is self._transport:
            self._down(ConnectionError(f"Redis closed the connection ({exc or 'EOF'})"))

    def _down(self, exc: Exception) -> None:
        """The connection is gone (or given up): the batch in flight and every event queued
        behind it are refused; the next event connects again."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        calls = self._flight or []
        self._done()
        self._fail(calls, exc)
        self._fail(self._queue, exc)
        self._queue = []

    @staticmethod
    def _fail(calls: list[tuple[bytes, bytes, asyncio.Future[Any]]], exc: Exception) -> None:
        for _, _, future in calls:
            if not future.done():
                future.set_exception(exc)


class _Incomplete(Exception):
    pass


class RespReader:
    """``hiredis.Reader``'s ``feed``/``gets`` in Python, for the replies the append line
    gets (arrays of bulk strings and errors, errors, simple values), where hiredis is not
    installed: :meth:`gets` answers one whole reply, or False while it has not all arrived;
    an error reply is a ``ResponseError`` value."""

    def __init__(self, encoding: str = "utf-8", errors: str = "strict") -> None:
        self._buffer = bytearray()
        self._encoding = encoding
        self._errors = errors

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def gets(self) -> Any:
        try:
            value, end = self._parse(0)
        except _Incomplete:
            return False
        del self._buffer[:end]
        return value

    def _parse(self, pos: int) -> tuple[Any, int]:
        from redis.exceptions import InvalidResponse, ResponseError

        buffer = self._buffer
        eol = buffer.find(b"\r\n", pos)
        if eol < 0:
            raise _Incomplete
        kind, line, pos = buffer[pos : pos + 1], bytes(buffer[pos + 1 : eol]), eol + 2
        if kind == b"$":
            size = int(line)
            if size < 0:
                return None, pos
            if len(buffer) < pos + size + 2:
                raise _Incomplete
            return buffer[pos : pos + size].decode(self._encoding, self._errors), pos + size + 2
        if kind == b"*":
            items = []
            for _ in range(int(line)):
                item, pos = self._parse(pos)
                items.append(item)
            return (items if int(line) >= 0 else None), pos
        if kind == b"-":
            return ResponseError(line.decode(self._encoding, self._errors)), pos
        if kind == b"+":
            return line.decode(self._encoding, self._errors), pos
        if kind == b":":
            return int(line), pos
        if kind == b"_":
            return None, pos
        raise InvalidResponse(f"unexpected reply type {kind!r} on the appends' connection")


class _Link(asyncio.Protocol):
    """The protocol of one connection a :class:`_Line` took over: it hands the line what
    arrives, and the end, naming the transport (a line's earlier connection is ignored)."""

    def __init__(self, line: _Line, transport: Any) -> None:
        self._line = line
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._line.received(self._transport, data)

    def eof_received(self) -> bool | None:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._line.lost(self._transport, exc)


def _redis_version() -> str:
    import redis

    return str(getattr(redis, "__version__", "?"))


def _mget(keys: list[str], redis: Any) -> Awaitable[list[Any]]:
    return redis.mget(keys)  # type: ignore[no-any-return]


def _raw_reply(response: Any, **options: Any) -> Any:
    return response


class RedisHistory(MemoryHistory):
    """History in Redis Streams, shared by every node and kept across restarts.

    Keys (under ``plugbus:history:``): ``clock`` (a hash: the last ``ms`` and ``seq``), one
    stream per room, connection and namespace, ``<len(ns)>:<ns>:<r|s|a>:<name>``, and beside
    each its floor (the same with ``R``/``S``/``A``). ``feed`` is a stream of every event of
    the cluster (the last :attr:`feed_length` or so): each node follows it from the last
    offset it delivered (:attr:`watermark`), so an outage of Redis, a stall or a restart
    delays cross-node delivery but never drops any of it.
    """

    shared = True
    #: Events the feed keeps (about: Redis trims it lazily): how far a node that lost Redis
    #: while the others kept publishing can fall behind and still resume without a gap.
    feed_length = 100_000
    #: Milliseconds one ``XREAD`` blocks waiting for new events.
    block_ms = 1000
    #: Seconds between attempts to read the feed again after Redis went away.
    retry_s = 0.1
    #: Entries one ``XREAD`` returns at most.
    read_count = 1000
    #: Seconds the reader waits after a read that returned events, before the next one: while
    #: events come one at a time it adds nothing (the next ``XREAD`` blocks until one comes);
    #: at a high rate each read carries the events of this interval, which costs each node one
    #: Redis round trip, and each recipient one write, per batch instead of per event.
    coalesce_s = 0.002
    #: The longest that wait grows to on a busy node (below).
    coalesce_max_s = 0.008
    #: Seconds a write to cached keys waits at most for every live node to read its
    #: invalidation (a node that has not by then is named in a warning).
    invalidate_timeout = 1.0

    def __init__(
        self,
        settings: HistorySettings,
        backend: Backend,
        replicas: int = 0,
        replica_timeout: float = 0.1,
    ) -> None:
        super().__init__(settings)
        self._backend = backend
        self._redis: Any = backend.redis_client()
        self._script: Any = self._redis.register_script(APPEND_SCRIPT)
        self._clock = backend.key("history", "clock")
        self.feed = backend.key("history", "feed")
        self._line = _Line(backend, [self._clock, self.feed, str(self.feed_length)])
        #: per stream, its keys and limits as the batch script's arguments, packed once
        self._packed: dict[tuple[str, str, str | None], tuple[bytes, bytes]] = {}
        #: replicas that must confirm an append before it is acknowledged (``WAIT``)
        self.replicas = replicas
        if not replicas:
            Parking.wanted = True
        self._replica_timeout_ms = max(1, round(replica_timeout * 1000))
        self._reader: Any = None
        self._listener: asyncio.Task[None] | None = None
        #: set while the feed is read; cleared while Redis is away
        self.following = asyncio.Event()
        self._invalidate: Any = self._redis.register_script(INVALIDATE_SCRIPT)
        #: the last invalidation this node read from the feed (acknowledged in ``seen:<node>``)
        self._invalidated: str | None = None

    def _key(self, namespace: str, kind: Kind, name: str | None, floor: bool = False) -> str:
        code = _KIND_CODE[kind]
        if floor:
            code = code.upper()
        return self._backend.key("history", str(len(namespace)), namespace, code, name or "")

    def _pack_stream(self, namespace: str, kind: Kind, target: str | None) -> tuple[bytes, bytes]:
        """A stream's two keys and its two limits as the batch script takes them (RESP bulk
        strings), kept for its next event."""
        if len(self._packed) >= 4096:  # one per connection that was sent something: bounded
            self._packed.clear()
        most, age = self.settings.limits_for(target if kind == "room" else None)
        packed = self._packed[(namespace, kind, target)] = (
            bulk(self._key(namespace, kind, target))
            + bulk(self._key(namespace, kind, target, floor=True)),
            bulk(most) + bulk(int(age * 1000)),
        )
        return packed

    async def append(
        self,
        namespace: str,
        kind: Kind,
        target: str | None,
        event: str,
        args: tuple[Any, ...],
        skip: str | None,
        keep: bool = True,
        *,
        park: bool = False,
    ) -> str:
        """Store the event in Redis (its stream, unless ``keep`` is False, and the feed every
        node reads, this one included, which delivers it from there); return its offset once
        Redis has it. ``park``: nothing of the event's handling follows this append (bus.emit's
        ``last``), so that the connection's reader, while it runs the event, may be told that
        it waits for this append only (:class:`Parking`).

        :raises BackendUnavailable: Redis did not take it (down, or no answer within the
            backend's command timeout): nothing was acknowledged.
        """
        values = entry_values(namespace, event, args, target, kind, skip, keep)
        try:
            if self.replicas:
                most, age = self.settings.limits_for(target if kind == "room" else None)
                keys = [
                    self._clock,
                    self._key(namespace, kind, target),
                    self._key(namespace, kind, target, floor=True),
                    self.feed,
                ]
                argv = [most, int(age * 1000), self.feed_length, "1" if keep else "0", *values]
                offset, confirmed = await self._append_and_wait(keys, argv)
            else:
                stream = self._packed.get((namespace, kind, target))
                if stream is None:
                    stream = self._pack_stream(namespace, kind, target)
                future = self._line.append(
                    stream[0],
                    b"".join(
                        (stream[1], _KEEP if keep else _EPHEMERAL, *[bulk(v) for v in values])
                    ),
                )
                if park:
                    parking = PARKING.get()
                    if parking is not None and parking.eager:
                        parking.future = future
                offset = await future
                if isinstance(offset, Exception):
                    raise offset
        except Exception as exc:
            raise self._unavailable("publish an event", exc) from None
        if self.replicas and confirmed < self.replicas:
            log.warning(
                "publish %s refused: %d of %d replicas confirmed it within %d ms",
                offset,
                confirmed,
                self.replicas,
                self._replica_timeout_ms,
            )
            raise BackendUnavailable(
                f"the shared backend's replicas did not confirm the event in time "
                f"({confirmed} of {self.replicas}): it was not acknowledged (it may still be "
                "delivered); try again shortly",
                details={"backend": "redis", "replicas": confirmed, "wanted": self.replicas},
            )
        return str(offset)

    async def _append_and_wait(self, keys: list[str], argv: list[Any]) -> tuple[str, int]:
        """The append script and ``WAIT replicas timeout`` in one round trip: (the offset,
        how many replicas confirmed it)."""
        from redis.exceptions import NoScriptError

        def run() -> Awaitable[list[Any]]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.evalsha(self._script.sha, len(keys), *keys, *argv)
            pipe.wait(self.replicas, self._replica_timeout_ms)
            return pipe.execute()  # type: ignore[no-any-return]

        try:
            offset, confirmed = await run()
        except NoScriptError:
            # Redis restarted (its script cache is empty): the script did not run, so
            # loading it and sending it again cannot store the event twice
            await self._redis.script_load(APPEND_SCRIPT)
            offset, confirmed = await run()
        return offset, int(confirmed)

    def _unavailable(self, what: str, exc: Exception) -> Exception:
        from redis.exceptions import RedisError

        if not isinstance(exc, RedisError | OSError | TimeoutError):
            return exc
        self._backend._unavailable(what, exc)  # logged once per outage
        return BackendUnavailable(
            "the shared backend (Redis) cannot be reached: nothing was sent; try again shortly",
            details={"backend": "redis"},
        )

    async def _call(self, what: str, call: Callable[[Any], Awaitable[Any]]) -> Any:
        """A read or an idempotent write, through the backend (one retry on a dead
        connection; an outage is :class:`~plugbus.StoreUnavailable`)."""
        return await self._backend.redis_call(what, call)

    async def read(self, namespace: str, streams: list[StreamRead]) -> list[StoredEvent] | None:
        if not streams:
            return []

        def run(redis: Any) -> Awaitable[Any]:
            pipe = redis.pipeline(transaction=False)
            for want in streams:
                pipe.get(self._key(namespace, want.kind, want.name, floor=True))
                pipe.xrange(self._key(namespace, want.kind, want.name), min=f"({want.after}")
            return pipe.execute()  # type: ignore[no-any-return]

        replies = await self._call("read history", run)
        out: list[tuple[tuple[int, int], StoredEvent]] = []
        for i, want in enumerate(streams):
            floor, entries = replies[2 * i], replies[2 * i + 1]
            if floor is not None and (parse_offset(floor) or (0, 0)) > (
                parse_offset(want.after) or (0, 0)
            ):
                return None
            for entry_id, fields in entries:
                out.append((parse_offset(entry_id) or (0, 0), stored_event(entry_id, fields)))
        out.sort(key=lambda entry: entry[0])
        return [event for _, event in out]

    async def page(
        self, namespace: str, room: str, after: str | None, limit: int
    ) -> list[StoredEvent]:
        start = "-" if after is None else f"({after}"
        if after is not None and parse_offset(after) is None:
            return []
        key = self._key(namespace, "room", room)
        entries = await self._call("read history", lambda r: r.xrange(key, min=start, count=limit))
        return [stored_event(entry_id, fields) for entry_id, fields in entries]

    async def delete(self, namespace: str, room: str, offset: str) -> bool:
        if parse_offset(offset) is None:
            return False
        key = self._key(namespace, "room", room)
        return bool(await self._call("delete from history", lambda r: r.xdel(key, offset)))

    async def start(self) -> None:
        """Take the current clock as this node's watermark (every event after it reaches
        this node through the feed), then follow the feed from there.

        :raises RuntimeError: the appends' line cannot be had (:meth:`_Line.start`)."""
        self._line.start()
        clock = await self._call("read the clock", lambda r: r.hmget(self._clock, "ms", "seq"))
        if clock[0] is not None and clock[1] is not None:
            self.watermark = later(self.watermark, f"{clock[0]}-{clock[1]}")
        self._reader = self._backend.blocking_client(self.block_ms / 1000 + 2)
        # the raw reply: redis-py's XREAD callback builds a dict per entry, which _follow
        # would only take apart again
        self._reader.set_response_callback("XREAD", _raw_reply)
        self._listener = asyncio.create_task(self._follow(), name="plugbus-history-feed")
        self._backend.cache.feed = self

    async def stop(self) -> None:
        """Stop following the feed."""
        if self._backend.cache.feed is self:
            self._backend.cache.feed = None
            self._backend.cache.clear()
        await self._line.stop()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader.aclose(close_connection_pool=True)
            self._reader = None

    async def _follow(self) -> None:
        lost_at: float | None = None
        feed, count, block = self.feed, self.read_count, self.block_ms
        loop = asyncio.get_running_loop()
        pause = self.coalesce_s
        while True:
            try:
                reply = await self._reader.execute_command(
                    "XREAD", "COUNT", count, "BLOCK", block, "STREAMS", feed, self.watermark
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.following.clear()
                # invalidations may be missed while the feed is away (or trimmed before it is
                # back): nothing cached survives, and nothing is kept until it is read again
                self._backend.cache.clear()
                if lost_at is None:
                    lost_at = time.monotonic()
                    log.warning(
                        "history feed lost (%s: %s); reading it again from %s",
                        type(exc).__name__,
                        exc,
                        self.watermark,
                    )
                await asyncio.sleep(self.retry_s)
                continue
            self.following.set()
            if lost_at is not None:
                log.warning(
                    "history feed back after %.1f s; resuming from %s",
                    time.monotonic() - lost_at,
                    self.watermark,
                )
                lost_at = None
            if not reply:
                continue
            # the raw reply (the reader has no XREAD callback): RESP2 [[feed, entries]],
            # RESP3 {feed: entries}
            entries = reply.get(feed, ()) if isinstance(reply, dict) else reply[0][1]
            if entries:
                self._on_entries(entries)
                if self._invalidated is not None:
                    await self._acknowledge()
                if len(entries) < count and pause:
                    # Events come faster than one XREAD each: let a few gather, so that one
                    # read (and each recipient's one write) carries several.
                    asleep = loop.time()
                    await asyncio.sleep(pause)
                    # A node whose loop woke this reader late is short of CPU: a batch costs
                    # mostly per recipient (one write each), not per event, so it gathers
                    # more per batch (up to coalesce_max_s) and the cost per delivery falls
                    # as the load rises; an idle node keeps the short wait (issue #16).
                    late = loop.time() - asleep - pause
                    pause = min(self.coalesce_max_s, self.coalesce_s + 2 * max(late, 0.0))

    async def invalidate(self, keys: list[str]) -> None:
        """Put an invalidation of ``keys`` on the feed, then wait until every other live node
        (presence's heartbeats) has read it (``seen:<node>``), at most
        :attr:`invalidate_timeout` seconds.

        :raises StoreUnavailable: Redis cannot be reached.
        """
        text = orjson.dumps(keys).decode()
        offset = str(
            await self._call(
                "invalidate cached keys",
                lambda r: self._invalidate(
                    keys=[self._clock, self.feed], args=[self.feed_length, text]
                ),
            )
        )
        wanted = parse_offset(offset) or (0, 0)
        nodes_key = self._backend.key("presence", "nodes")
        deadline = time.monotonic() + self.invalidate_timeout
        pause = 0.0005
        while True:
            nodes = sorted(
                set(await self._call("read the nodes", lambda r: r.smembers(nodes_key)))
                - {self._backend.node_id}
            )
            if not nodes:
                return
            alive_keys = [self._backend.key("presence", "alive", n) for n in nodes]
            seen_keys = [self._backend.key("history", "seen", n) for n in nodes]
            found = await self._call("read the nodes", partial(_mget, alive_keys + seen_keys))
            behind = [
                node
                for node, alive, seen in zip(nodes, found, found[len(nodes) :], strict=False)
                if alive is not None and (parse_offset(seen) or (0, 0)) < wanted
            ]
            if not behind:
                return
            if time.monotonic() >= deadline:
                log.warning(
                    "cached keys changed (%s), but node(s) %s did not read it within %g s: they "
                    "may answer from their old copy until they do",
                    offset,
                    ", ".join(behind),
                    self.invalidate_timeout,
                )
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.01)

    async def _acknowledge(self) -> None:
        """Tell the writers of cached keys this node has read their invalidations."""
        seen, key = self._invalidated, self._backend.key("history", "seen", self._backend.node_id)
        try:
            await self._redis.set(key, seen, px=60_000)
        except Exception as exc:  # the writer waits, then warns; the next one acknowledges
            log.debug("acknowledging invalidation %s: %s", seen, exc)
            return
        if self._invalidated == seen:
            self._invalidated = None

    def _on_entries(self, entries: list[Any]) -> None:
        events: list[FeedEvent] = []
        for entry_id, fields in entries:
            if fields[0] == "i":  # cached keys changed (NodeCache), not an event
                try:
                    self._backend.cache.drop(orjson.loads(fields[1]))
                except Exception:
                    log.exception("unreadable invalidation %s on the history feed", entry_id)
                    self._backend.cache.clear()
                self._invalidated = entry_id
                continue
            try:
                events.append(feed_event(entry_id, fields))
            except Exception:
                log.exception("unreadable event %s on the history feed", entry_id)
        try:
            if events and self.deliver_many is not None:
                self.deliver_many(events)
        except Exception:
            log.exception(
                "delivering %s..%s from the history feed failed", entries[0][0], entries[-1][0]
            )
        finally:
            self.watermark = entries[-1][0]
