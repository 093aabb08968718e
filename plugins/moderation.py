"""moderation: a pipeline of rules applied to every event, whichever door it came through.

Rules, in the order they run: ``ban``, ``mute``, ``flood``, ``slow_mode``, ``max_length``,
``blocked_words``, then the rules other plugins add through ``plugbus_moderation_rules``. Each
is switched on or off and given an action (``refuse``, ``mask``, ``drop``) under the
``rules`` key of this plugin's settings; the built-ins' own parameters are top-level keys.
Sanctions (bans, mutes, kicks) and slow-mode delays are made at run time over REST
(``/moderation/...``); all state sits behind :class:`ModerationStore`, in memory by default.

The REST routes carry no authorization yet: anyone who reaches the REST port may ban, mute and
kick. Admin roles arrive with the authentication issue.

This is one module on purpose: ``pyproject.toml`` lists the installed packages one by one, so a
``plugins/moderation/`` sub-package would be left out of a regular (non-editable) install. Its
sections — settings, text, store, rules, pipeline, REST, plugin — are the module split waiting
for that list to grow.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import time
import unicodedata
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from plugbus import (
    Bus,
    ConfigError,
    Connection,
    ConnectionDenied,
    Event,
    EventContext,
    EventDropped,
    InvalidPayload,
    MessageRejected,
    ModerationRule,
    NotAllowed,
    NotFound,
    PlugbusError,
    Plugin,
    PluginSettings,
    RateLimited,
    Route,
    RouteRequest,
    Violation,
    hookimpl,
)

log = logging.getLogger("plugbus.moderation")

# == settings =================================================================================

Action = Literal["refuse", "mask", "drop"]
SanctionType = Literal["ban", "mute"]
TargetKind = Literal["connection", "identity", "address"]

DEFAULT_SUBSTITUTIONS: dict[str, str] = {
    "0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s",
}


class RuleSwitch(BaseModel):
    """Whether one rule runs, and what happens to an event that breaks it."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run this rule.")
    action: Action = Field(
        "refuse",
        description="refuse: the sender gets an error saying why; mask: the offending text is "
        "replaced with mask_char and the event goes on (a rule that cannot point at the text "
        "refuses instead); drop: the event vanishes silently, the sender's ack says ok.",
    )


class OffByDefault(RuleSwitch):
    """A :class:`RuleSwitch` that is off unless switched on."""

    enabled: bool = Field(False, description="Run this rule.")


class RuleSwitches(BaseModel):
    """``rules``: a switch per rule name — the built-ins below, and any rule another plugin
    adds (an unknown name stops start-up)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, RuleSwitch] = Field(init=False)

    ban: RuleSwitch = Field(default_factory=RuleSwitch, description="Refuse banned clients.")
    mute: RuleSwitch = Field(default_factory=RuleSwitch, description="Refuse text from muted clients.")
    flood: OffByDefault = Field(default_factory=OffByDefault, description="Token bucket per connection.")
    slow_mode: RuleSwitch = Field(default_factory=RuleSwitch, description="Delay between messages per room.")
    max_length: RuleSwitch = Field(default_factory=RuleSwitch, description="Longest text field.")
    blocked_words: RuleSwitch = Field(default_factory=RuleSwitch, description="Words refused.")

    def get(self, name: str) -> RuleSwitch:
        """The switch for rule ``name`` (a default one when the settings do not name it)."""
        found = getattr(self, name, None) if name in type(self).model_fields else None
        if found is None:
            found = (self.model_extra or {}).get(name)
        return found if isinstance(found, RuleSwitch) else RuleSwitch()

    def extra_names(self) -> list[str]:
        """Rule names the settings mention beyond the built-ins."""
        return list(self.model_extra or {})


class FloodSettings(BaseModel):
    """``flood``: a token bucket per connection, over every event it sends."""

    model_config = ConfigDict(extra="forbid")

    burst: int = Field(10, ge=1, description="Events a connection may send at once.")
    rate: float = Field(2.0, gt=0, description="Events per second it earns back, up to burst.")


class SlowModeSettings(BaseModel):
    """``slow_mode``: the least seconds between two messages of one connection in one room."""

    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(0, ge=0, description="Delay for rooms not listed; 0 = none.")
    rooms: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="Delay per room; PUT /moderation/slow-mode/{room} changes them."
    )


class ModerationSettings(PluginSettings):
    """Settings of the moderation plugin."""

    max_length: int = Field(2000, ge=0, description="Most characters in a text field; 0 = no limit.")
    blocked_words: list[str] = Field(
        default_factory=list,
        description="Words (or phrases) refused as whole words, after normalisation: any letter "
        "case, accents ignored, substitutions applied.",
    )
    substitutions: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_SUBSTITUTIONS),
        description="Characters read as letters when matching blocked words (4 -> a); map one "
        "to an empty string to ignore it.",
    )
    mask_char: str = Field("*", min_length=1, max_length=1, description="Replaces masked characters.")
    flood: FloodSettings = Field(default_factory=FloodSettings, description="Flood control parameters.")
    slow_mode: SlowModeSettings = Field(default_factory=SlowModeSettings, description="Slow mode delays.")
    log_size: int = Field(1000, ge=0, description="Moderation decisions kept for GET /moderation/log.")
    store: Literal["memory"] = Field(
        "memory", description="Where bans, mutes, delays, buckets and the log live (this process)."
    )
    rules: RuleSwitches = Field(default_factory=RuleSwitches, description="Each rule's switch and action.")

    @field_validator("substitutions")
    @classmethod
    def _single_characters(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if len(key) != 1:
                raise ValueError(f"substitution keys are single characters, got {key!r}")
        return value


# == text =====================================================================================


class Normaliser:
    """Folds text for matching (case, accents, substitutions) and remembers, for every folded
    character, the index of the original character it came from, so that a match in the
    folded text maps back to a span of the original."""

    def __init__(self, substitutions: dict[str, str]) -> None:
        self._subs = {k: v.casefold() for k, v in substitutions.items()}
        self._fold_char = functools.lru_cache(maxsize=4096)(self._fold_one)

    def _fold_one(self, ch: str) -> str:
        if ch in self._subs:
            return self._subs[ch]
        decomposed = unicodedata.normalize("NFKD", ch)
        folded = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
        return "".join(self._subs.get(c, c) for c in folded)

    def fold(self, text: str) -> str:
        """``text`` folded (for the configured words)."""
        return "".join(self._fold_char(ch) for ch in text)

    def fold_mapped(self, text: str) -> tuple[str, list[int]]:
        """``text`` folded, and the original index of every folded character."""
        out: list[str] = []
        index: list[int] = []
        for i, ch in enumerate(text):
            folded = self._fold_char(ch)
            out.append(folded)
            index.extend([i] * len(folded))
        return "".join(out), index


def mask_spans(text: str, spans: Iterable[tuple[int, int]], char: str) -> str:
    """``text`` with every character inside ``spans`` replaced by ``char``."""
    chars = list(text)
    for start, end in spans:
        for i in range(max(start, 0), min(end, len(chars))):
            chars[i] = char
    return "".join(chars)


# == state ====================================================================================


class Sanction(BaseModel):
    """A ban or a mute in force."""

    id: str = Field(description="Use it to lift the sanction.")
    type: SanctionType
    kind: TargetKind = Field(description="What value names: a connection id, a user id or an address.")
    value: str
    reason: str = ""
    created_at: datetime
    expires_at: datetime | None = Field(None, description="When it lapses; null = until lifted.")
    sid: str | None = Field(None, description="The connection it was made against, if made by connection.")

    def expired(self, now: datetime) -> bool:
        """True once ``expires_at`` has passed."""
        return self.expires_at is not None and self.expires_at <= now


class LogEntry(BaseModel):
    """One moderation decision, or one ban, mute or kick made."""

    time: datetime
    rule: str
    action: str = Field(description="refuse, mask, drop; ban, unban, mute, unmute, kick.")
    event: str | None = None
    sid: str | None = None
    user: str | None = None
    field: str | None = None
    reason: str = ""
    target: str | None = Field(None, description='For sanctions: "kind:value".')


class ModerationStore(Protocol):
    """Where moderation keeps its state. The rules and routes use only these methods, so a
    shared store (Redis) can replace :class:`MemoryStore` without them noticing."""

    async def add_sanction(self, sanction: Sanction) -> Sanction | None:
        """Store ``sanction``; return the one it replaced (same type, kind and value), if any."""
        ...

    async def lift_sanction(self, type: SanctionType, id: str) -> Sanction | None:
        """Remove a sanction by id; None when there is none (or it had lapsed)."""
        ...

    async def sanctions(self, type: SanctionType) -> list[Sanction]:
        """Every sanction of ``type`` in force, oldest first."""
        ...

    async def find_sanction(self, type: SanctionType, targets: Iterable[tuple[TargetKind, str]]) -> Sanction | None:
        """The first sanction of ``type`` in force on any of ``targets``."""
        ...

    async def take_token(self, sid: str, burst: int, rate: float) -> float:
        """Take one token from connection ``sid``'s bucket: 0 when taken, else seconds to wait."""
        ...

    async def slow_mode(self) -> dict[str, float]:
        """The per-room slow-mode delays."""
        ...

    async def slow_mode_delay(self, room: str) -> float | None:
        """The delay of ``room``, or None when it has none of its own."""
        ...

    async def set_slow_mode(self, room: str, seconds: float) -> None:
        """Set the delay of ``room``."""
        ...

    async def slow_mode_wait(self, sid: str, room: str, seconds: float) -> float:
        """Seconds ``sid`` must still wait before its next message in ``room`` (0 = none)."""
        ...

    async def message_sent(self, sid: str, room: str) -> None:
        """Record that ``sid`` just sent a message to ``room`` (for slow mode)."""
        ...

    async def forget_connection(self, sid: str) -> None:
        """Drop what is kept about a closed connection (bucket, slow-mode times, its mutes)."""
        ...

    async def append_log(self, entry: LogEntry) -> None:
        """Add a decision to the log (the oldest fall off past the configured size)."""
        ...

    async def log(self, limit: int) -> list[LogEntry]:
        """The newest ``limit`` log entries, oldest first."""
        ...


class MemoryStore:
    """:class:`ModerationStore` in this process's memory (lost on restart, not shared)."""

    def __init__(self, log_size: int, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._by_target: dict[tuple[str, str, str], Sanction] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # sid -> (tokens, at)
        self._delays: dict[str, float] = {}
        self._last_sent: dict[tuple[str, str], float] = {}
        self._log: deque[LogEntry] = deque(maxlen=log_size)

    async def add_sanction(self, sanction: Sanction) -> Sanction | None:
        key = (sanction.type, sanction.kind, sanction.value)
        old = self._by_target.get(key)
        self._by_target[key] = sanction
        return old

    async def lift_sanction(self, type: SanctionType, id: str) -> Sanction | None:
        now = datetime.now(UTC)
        for key, sanction in list(self._by_target.items()):
            if sanction.type == type and sanction.id == id:
                del self._by_target[key]
                return None if sanction.expired(now) else sanction
        return None

    async def sanctions(self, type: SanctionType) -> list[Sanction]:
        self._purge()
        found = [s for s in self._by_target.values() if s.type == type]
        return sorted(found, key=lambda s: s.created_at)

    async def find_sanction(self, type: SanctionType, targets: Iterable[tuple[TargetKind, str]]) -> Sanction | None:
        for kind, value in targets:
            sanction = self._by_target.get((type, kind, value))
            if sanction is None:
                continue
            if sanction.expired(datetime.now(UTC)):
                del self._by_target[(type, kind, value)]
                continue
            return sanction
        return None

    def _purge(self) -> None:
        now = datetime.now(UTC)
        for key in [k for k, s in self._by_target.items() if s.expired(now)]:
            del self._by_target[key]

    async def take_token(self, sid: str, burst: int, rate: float) -> float:
        now = self._clock()
        tokens, at = self._buckets.get(sid, (float(burst), now))
        tokens = min(float(burst), tokens + (now - at) * rate)
        if tokens >= 1:
            self._buckets[sid] = (tokens - 1, now)
            return 0.0
        self._buckets[sid] = (tokens, now)
        return (1 - tokens) / rate

    async def slow_mode(self) -> dict[str, float]:
        return dict(self._delays)

    async def slow_mode_delay(self, room: str) -> float | None:
        return self._delays.get(room)

    async def set_slow_mode(self, room: str, seconds: float) -> None:
        self._delays[room] = seconds

    async def slow_mode_wait(self, sid: str, room: str, seconds: float) -> float:
        last = self._last_sent.get((sid, room))
        if last is None:
            return 0.0
        return max(0.0, last + seconds - self._clock())

    async def message_sent(self, sid: str, room: str) -> None:
        self._last_sent[(sid, room)] = self._clock()

    async def forget_connection(self, sid: str) -> None:
        self._buckets.pop(sid, None)
        for key in [k for k in self._last_sent if k[0] == sid]:
            del self._last_sent[key]
        self._by_target.pop(("mute", "connection", sid), None)

    async def append_log(self, entry: LogEntry) -> None:
        self._log.append(entry)

    async def log(self, limit: int) -> list[LogEntry]:
        return list(self._log)[-limit:] if limit > 0 else []


# == rules ====================================================================================


def targets_of(connection: Connection) -> list[tuple[TargetKind, str]]:
    """What a sanction may name to reach ``connection``: its id, its user id, its address."""
    out: list[tuple[TargetKind, str]] = [("connection", connection.sid)]
    if connection.identity is not None:
        out.append(("identity", connection.identity.user_id))
    if connection.remote_addr:
        out.append(("address", connection.remote_addr))
    return out


def describe_sanction(sanction: Sanction, verb: str) -> str:
    """``"you are banned (reason: spam; until 2030-01-01T00:00:00+00:00)"``."""
    notes = []
    if sanction.reason:
        notes.append(f"reason: {sanction.reason}")
    if sanction.expires_at is not None:
        notes.append(f"until {sanction.expires_at:%Y-%m-%dT%H:%M:%SZ}")
    return f"you are {verb}" + (f" ({'; '.join(notes)})" if notes else "")


def sanction_details(sanction: Sanction) -> dict[str, Any]:
    """What a sanctioned client is told besides the message."""
    return sanction.model_dump(mode="json", include={"reason", "kind", "expires_at"})


class BanRule:
    """``ban``: events from a banned connection are refused (a ban also disconnects it and
    refuses its reconnects; this catches an event racing the disconnect)."""

    name = "ban"

    def __init__(self, store: ModerationStore) -> None:
        self.store = store

    async def check(self, event: Event, ctx: EventContext) -> Violation | None:
        """A violation when the sender is banned by identity or address."""
        if ctx.connection is None:
            return None
        ban = await self.store.find_sanction("ban", targets_of(ctx.connection))
        if ban is None:
            return None
        return Violation(describe_sanction(ban, "banned"), details=sanction_details(ban))


class MuteRule:
    """``mute``: a muted connection may read and join rooms, but events with text are refused."""

    name = "mute"

    def __init__(self, store: ModerationStore) -> None:
        self.store = store

    async def check(self, event: Event, ctx: EventContext) -> Violation | None:
        """A violation when the event carries text and its sender is muted."""
        if ctx.connection is None or not type(event).text_fields:
            return None
        mute = await self.store.find_sanction("mute", targets_of(ctx.connection))
        if mute is None:
            return None
        return Violation(describe_sanction(mute, "muted"), details=sanction_details(mute))


class FloodRule:
    """``flood``: a token bucket per connection over every event it sends."""

    name = "flood"
    refusal: ClassVar[type[PlugbusError]] = RateLimited

    def __init__(self, store: ModerationStore, settings: FloodSettings) -> None:
        self.store = store
        self.settings = settings

    async def check(self, event: Event, ctx: EventContext) -> Violation | None:
        """A violation (with ``retry_after``) when the sender's bucket is empty."""
        if ctx.connection is None:
            return None
        wait = await self.store.take_token(ctx.connection.sid, self.settings.burst, self.settings.rate)
        if wait <= 0:
            return None
        wait = round(wait + 0.0005, 3)
        return Violation(
            f"too many events: at most {self.settings.burst} at once and {self.settings.rate:g} per "
            f"second; retry in {wait:g} s",
            details={"retry_after": wait, "burst": self.settings.burst, "rate": self.settings.rate},
        )


class SlowModeRule:
    """``slow_mode``: one message per connection per room every N seconds (per-room N)."""

    name = "slow_mode"
    refusal: ClassVar[type[PlugbusError]] = RateLimited

    def __init__(self, store: ModerationStore, settings: SlowModeSettings) -> None:
        self.store = store
        self.default = settings.seconds

    def room_of(self, event: Event, ctx: EventContext) -> str | None:
        """The room a text event goes to, when it has a sender, text and a room field."""
        field = type(event).room_field
        if ctx.connection is None or not field or not type(event).text_fields:
            return None
        room = getattr(event, field, None)
        return room if isinstance(room, str) else None

    async def check(self, event: Event, ctx: EventContext) -> Violation | None:
        """A violation (with ``retry_after``) when the sender wrote to the room too recently."""
        room = self.room_of(event, ctx)
        if room is None or ctx.connection is None:
            return None
        seconds = await self.store.slow_mode_delay(room)
        if seconds is None:
            seconds = self.default
        if seconds <= 0:
            return None
        wait = await self.store.slow_mode_wait(ctx.connection.sid, room, seconds)
        if wait <= 0:
            return None
        wait = round(wait + 0.0005, 3)
        return Violation(
            f"slow mode in room {room!r}: one message every {seconds:g} s; retry in {wait:g} s",
            field=type(event).room_field,
            details={"room": room, "seconds": seconds, "retry_after": wait},
        )

    async def accepted(self, event: Event, ctx: EventContext) -> None:
        """The event passed every rule: start the room's clock for its sender."""
        room = self.room_of(event, ctx)
        if room is not None and ctx.connection is not None:
            await self.store.message_sent(ctx.connection.sid, room)


def text_fields(event: Event) -> Iterable[tuple[str, str]]:
    """``(field, text)`` for every text field of ``event`` that holds a string."""
    for field in type(event).text_fields:
        text = getattr(event, field, None)
        if isinstance(text, str):
            yield field, text


class MaxLengthRule:
    """``max_length``: a text field longer than the limit (cannot mask: nothing to point at)."""

    name = "max_length"

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def check(self, event: Event, ctx: EventContext) -> Violation | None:
        """A violation for the first text field over the limit."""
        if not self.limit:
            return None
        for field, text in text_fields(event):
            if len(text) > self.limit:
                return Violation(
                    f"{field} is {len(text)} characters long; the limit is {self.limit}",
                    field=field, details={"limit": self.limit, "length": len(text)},
                )
        return None


class BlockedWordsRule:
    """``blocked_words``: whole words matched after folding case, accents and substitutions;
    the spans point into the original text, so masking hits exactly the written word."""

    name = "blocked_words"

    def __init__(self, words: Sequence[str], substitutions: dict[str, str]) -> None:
        self.normaliser = Normaliser(substitutions)
        folded = sorted({self.normaliser.fold(w.strip()) for w in words if w.strip()} - {""},
                        key=len, reverse=True)
        # One pattern for all words: one scan per text, however many words there are.
        self.pattern = (re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, folded)) + r")(?!\w)")
                        if folded else None)

    def find(self, text: str) -> list[tuple[int, int]]:
        """Spans of blocked words in ``text`` (original indices)."""
        if self.pattern is None:
            return []
        folded, index = self.normaliser.fold_mapped(text)
        spans = []
        for m in self.pattern.finditer(folded):
            start = index[m.start()]
            end = max(index[m.end() - 1] + 1, index[m.end()] if m.end() < len(index) else len(text))
            spans.append((start, end))
        return spans

    def check(self, event: Event, ctx: EventContext) -> Violation | None:
        """A violation for the first text field holding a blocked word, with every span in it."""
        for field, text in text_fields(event):
            spans = self.find(text)
            if spans:
                start, end = spans[0]
                return Violation(f"{field} contains a blocked word", field=field,
                                 spans=tuple(spans), details={"word": text[start:end]})
        return None


# == pipeline =================================================================================


@dataclass(frozen=True, slots=True)
class Step:
    """One switched-on rule with its action."""

    rule: ModerationRule
    action: Action


def log_entry(rule: str, action: str, reason: str, *, event: Event | None = None,
              connection: Connection | None = None, field: str | None = None,
              target: tuple[str, str] | None = None) -> LogEntry:
    """A log entry stamped now; ``target`` is a sanction's ``(kind, value)``."""
    user = connection.identity.user_id if connection is not None and connection.identity else None
    if target is not None and target[0] == "identity":
        user = target[1]
    return LogEntry(
        time=datetime.now(UTC), rule=rule, action=action, reason=reason,
        event=event.event_name if event is not None else None,
        sid=connection.sid if connection is not None else None, user=user, field=field,
        target=f"{target[0]}:{target[1]}" if target is not None else None,
    )


#: Most times one rule may mask one event (it reports one field, or one span, at a time).
MAX_MASKS = 32


class Pipeline:
    """Runs the switched-on rules over one event and carries out their actions."""

    def __init__(self, steps: list[Step], store: ModerationStore, mask_char: str) -> None:
        self.steps = steps
        self.store = store
        self.mask_char = mask_char

    @property
    def names(self) -> list[str]:
        """The rules that run, in order."""
        return [s.rule.name for s in self.steps]

    async def run(self, event: Event, ctx: EventContext) -> Event | None:
        """:return: None when the event passes unchanged, the masked event when masked.
        :raises PlugbusError: a rule refused it. :raises EventDropped: a rule dropped it."""
        original = event
        for step in self.steps:
            event = await self._apply(step, event, ctx)
        for step in self.steps:
            accepted = getattr(step.rule, "accepted", None)
            if accepted is not None:
                await _maybe_await(accepted(event, ctx))
        return None if event is original else event

    async def _apply(self, step: Step, event: Event, ctx: EventContext) -> Event:
        rule = step.rule
        for _ in range(MAX_MASKS):
            violation = await _maybe_await(rule.check(event, ctx))
            if violation is None:
                return event
            masked = self._masked(event, violation) if step.action == "mask" else None
            if masked is not None:
                await self._log(rule.name, "mask", violation, event, ctx)
                event = masked
                continue
            if step.action == "drop":
                await self._log(rule.name, "drop", violation, event, ctx)
                raise EventDropped(f"{rule.name}: {violation.message}")
            break
        # Refuse (also when masking did not clear the violation: better than looping).
        await self._log(rule.name, "refuse", violation, event, ctx)
        refusal: type[PlugbusError] = getattr(rule, "refusal", MessageRejected)
        raise refusal(violation.message,
                      details={"rule": rule.name, "field": violation.field, **violation.details})

    def _masked(self, event: Event, violation: Violation) -> Event | None:
        field = violation.field
        text = getattr(event, field, None) if field else None
        if not violation.spans or not isinstance(text, str) or field not in type(event).text_fields:
            return None
        new = mask_spans(text, violation.spans, self.mask_char)
        return event.model_copy(update={field: new}) if new != text else None

    async def _log(self, rule: str, action: str, violation: Violation, event: Event,
                   ctx: EventContext) -> None:
        await self.store.append_log(log_entry(rule, action, violation.message, event=event,
                                              connection=ctx.connection, field=violation.field))


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


BUILTIN_RULES = ("ban", "mute", "flood", "slow_mode", "max_length", "blocked_words")


def builtin_rules(settings: ModerationSettings, store: ModerationStore) -> list[ModerationRule]:
    """The built-in rules, in pipeline order."""
    return [
        BanRule(store),
        MuteRule(store),
        FloodRule(store, settings.flood),
        SlowModeRule(store, settings.slow_mode),
        MaxLengthRule(settings.max_length),
        BlockedWordsRule(settings.blocked_words, settings.substitutions),
    ]


def build_pipeline(settings: ModerationSettings, store: ModerationStore,
                   added: Sequence[Any], *, complete: bool = True) -> Pipeline:
    """The pipeline of the built-ins then ``added`` (other plugins' rules), switched per settings.

    :param complete: ``added`` holds every rule, so a name under ``rules`` that no rule has
        is an error (False before start-up, when the other plugins' rules are not known).
    :raises ConfigError: a rule without a name or ``check``, two rules with one name, or a
        name under ``rules`` that no rule has.
    """
    prefix = "plugins.settings.moderation.rules"
    rules = builtin_rules(settings, store)
    names = set(BUILTIN_RULES)
    for rule in added:
        name = getattr(rule, "name", None)
        if not isinstance(name, str) or not name or not callable(getattr(rule, "check", None)):
            raise ConfigError(f"plugin 'moderation': a plugbus_moderation_rules hook returned "
                              f"{rule!r}, which is not a ModerationRule (a `name` and a `check`)")
        if name in names:
            raise ConfigError(f"plugin 'moderation': two moderation rules are named {name!r}; "
                              f"rule names must be unique")
        names.add(name)
        rules.append(rule)
    for name in settings.rules.extra_names() if complete else ():
        if name not in names:
            raise ConfigError(
                f"plugin 'moderation': {prefix}.{name}: no moderation rule named {name!r} "
                f"(rules: {', '.join(r.name for r in rules)}); is the plugin that adds it loaded?"
            )
    steps = [Step(r, settings.rules.get(r.name).action) for r in rules
             if settings.rules.get(r.name).enabled]
    return Pipeline(steps, store, settings.mask_char)


# == REST =====================================================================================


class SanctionRequest(BaseModel):
    """Body of ``POST /moderation/bans`` and ``POST /moderation/mutes``."""

    model_config = ConfigDict(extra="forbid")

    kind: TargetKind = Field(
        description="connection: a live connection id (a ban by connection bans its user id if "
        "it has one, else its address; a mute by connection lasts while that connection does); "
        "identity: a user id; address: a remote address."
    )
    value: str = Field(min_length=1, max_length=256, description="The connection id, user id or address.")
    reason: str = Field("", max_length=500, description="Told to the sanctioned client and logged.")
    duration: float | None = Field(None, gt=0, description="Seconds until it lapses; omitted = until lifted.")


class BanCreated(Sanction):
    """A ban just made, with the connections it closed."""

    disconnected: list[str] = Field(description="Connection ids closed because of it.")


class SanctionList(RootModel[list[Sanction]]):
    """Bans or mutes in force, oldest first."""


class KickRequest(BaseModel):
    """Body of ``POST /moderation/kick``."""

    model_config = ConfigDict(extra="forbid")

    sid: str = Field(min_length=1, description="The connection to close.")
    reason: str = Field("", max_length=500, description="Logged.")


class Kicked(BaseModel):
    """A connection closed by a kick."""

    sid: str
    reason: str = ""


class LogList(RootModel[list[LogEntry]]):
    """Moderation log entries, oldest first."""


class SlowModeState(BaseModel):
    """Slow-mode delays in seconds."""

    seconds: float = Field(description="Delay of rooms not listed (from settings).")
    rooms: dict[str, float] = Field(description="Delay per room.")


class SlowModeUpdate(BaseModel):
    """Body of ``PUT /moderation/slow-mode/{room}``."""

    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(ge=0, le=86400, description="Least seconds between two messages of one connection; 0 = off.")


class SlowModeRoom(BaseModel):
    """One room's slow-mode delay."""

    room: str
    seconds: float


LOG_LIMIT = 100


class ModerationRoutes:
    """The ``/moderation`` REST routes (no authorization yet: admin roles come later)."""

    def __init__(self, plugin: ModerationPlugin, bus: Bus) -> None:
        self.plugin = plugin
        self.bus = bus
        self.store = plugin.store

    def routes(self) -> list[Route]:
        """Every route, for ``plugbus_routes``."""
        R = Route
        return [
            R("POST", "/moderation/bans", self.ban, body=SanctionRequest, response=BanCreated,
              status_code=201, summary="Ban a connection, a user id or an address"),
            R("GET", "/moderation/bans", self.list_bans, response=SanctionList, summary="Bans in force"),
            R("DELETE", "/moderation/bans/{id}", self.unban, response=Sanction, summary="Lift a ban"),
            R("POST", "/moderation/mutes", self.mute, body=SanctionRequest, response=Sanction,
              status_code=201, summary="Mute a connection, a user id or an address"),
            R("GET", "/moderation/mutes", self.list_mutes, response=SanctionList, summary="Mutes in force"),
            R("DELETE", "/moderation/mutes/{id}", self.unmute, response=Sanction, summary="Lift a mute"),
            R("POST", "/moderation/kick", self.kick, body=KickRequest, response=Kicked,
              summary="Disconnect one connection"),
            R("DELETE", "/connections/{sid}", self.kick_by_path, response=Kicked,
              summary="Disconnect one connection"),
            R("GET", "/moderation/log", self.read_log, response=LogList,
              summary="Recent moderation decisions (?limit=N, default 100)"),
            R("GET", "/moderation/slow-mode", self.get_slow_mode, response=SlowModeState,
              summary="Slow-mode delays"),
            R("PUT", "/moderation/slow-mode/{room}", self.set_slow_mode, body=SlowModeUpdate,
              response=SlowModeRoom, summary="Set a room's slow-mode delay"),
        ]

    def _require_rule(self, name: str) -> None:
        if not self.plugin.settings.rules.get(name).enabled:
            raise NotAllowed(f"the {name} rule is switched off "
                             f"(plugins.settings.moderation.rules.{name}.enabled)", details={"rule": name})

    async def _sanction(self, type: SanctionType, body: SanctionRequest) -> tuple[Sanction, Connection | None]:
        self._require_rule(type)
        kind, value, connection = body.kind, body.value, None
        if kind == "connection":
            connection = self.bus.connection(value)
            if connection is None:
                raise NotFound(f"no connection with id {value!r}", details={"sid": value})
            if type == "ban":  # connection ids change on reconnect: ban who or where it is
                if connection.identity is not None:
                    kind, value = "identity", connection.identity.user_id
                elif connection.remote_addr:
                    kind, value = "address", connection.remote_addr
                else:
                    raise NotAllowed("this connection has neither a user id nor an address to ban; "
                                     "kick it instead", details={"sid": body.value})
        now = datetime.now(UTC)
        sanction = Sanction(
            id=uuid.uuid4().hex[:12], type=type, kind=kind, value=value, reason=body.reason,
            created_at=now, expires_at=now + timedelta(seconds=body.duration) if body.duration else None,
            sid=connection.sid if connection is not None else None,
        )
        await self.store.add_sanction(sanction)
        await self.store.append_log(log_entry(
            type, type, body.reason, connection=connection, target=(kind, value)))
        return sanction, connection

    async def ban(self, req: RouteRequest) -> BanCreated:
        """Ban, and disconnect every live connection the ban covers; reconnects are refused
        with a ``connect_error`` saying why. A ban by connection bans the connection's user id
        if it has one, else its address (every client from there). Not authorized yet."""
        assert isinstance(req.body, SanctionRequest)
        ban, _ = await self._sanction("ban", req.body)
        closed = [c.sid for c in self.bus.connections() if (ban.kind, ban.value) in targets_of(c)]
        for sid in closed:
            try:
                await self.bus.disconnect(sid)
            except NotFound:  # gone meanwhile
                pass
        return BanCreated(**ban.model_dump(), disconnected=closed)

    async def mute(self, req: RouteRequest) -> Sanction:
        """Mute: the client still receives and may join rooms, but events with text are
        refused. A mute by connection ends when that connection does. Not authorized yet."""
        assert isinstance(req.body, SanctionRequest)
        mute, _ = await self._sanction("mute", req.body)
        return mute

    async def list_bans(self, req: RouteRequest) -> list[Sanction]:
        """Bans in force."""
        return await self.store.sanctions("ban")

    async def list_mutes(self, req: RouteRequest) -> list[Sanction]:
        """Mutes in force."""
        return await self.store.sanctions("mute")

    async def _lift(self, type: SanctionType, id: str) -> Sanction:
        sanction = await self.store.lift_sanction(type, id)
        if sanction is None:
            raise NotFound(f"no {type} with id {id!r}", details={"id": id})
        await self.store.append_log(log_entry(type, "un" + type, sanction.reason,
                                              target=(sanction.kind, sanction.value)))
        return sanction

    async def unban(self, req: RouteRequest) -> Sanction:
        """Lift a ban by id. Not authorized yet."""
        return await self._lift("ban", req.path_params["id"])

    async def unmute(self, req: RouteRequest) -> Sanction:
        """Lift a mute by id. Not authorized yet."""
        return await self._lift("mute", req.path_params["id"])

    async def _kick(self, sid: str, reason: str) -> Kicked:
        connection = self.bus.connection(sid)
        await self.bus.disconnect(sid)  # NotFound (404) for an unknown id
        await self.store.append_log(log_entry("kick", "kick", reason, connection=connection,
                                              target=("connection", sid)))
        return Kicked(sid=sid, reason=reason)

    async def kick(self, req: RouteRequest) -> Kicked:
        """Disconnect one connection (it may reconnect; ban to keep it out). Not authorized yet."""
        assert isinstance(req.body, KickRequest)
        return await self._kick(req.body.sid, req.body.reason)

    async def kick_by_path(self, req: RouteRequest) -> Kicked:
        """Disconnect one connection, as ``POST /moderation/kick``. Not authorized yet."""
        return await self._kick(req.path_params["sid"], "")

    async def read_log(self, req: RouteRequest) -> list[LogEntry]:
        """The newest ``limit`` decisions (default 100), oldest first."""
        raw = req.query.get("limit", str(LOG_LIMIT))
        if not raw.isdigit() or int(raw) < 1:
            raise InvalidPayload(f"limit must be a whole number of at least 1, got {raw!r}", details={
                "errors": [{"loc": "query.limit", "message": "expected an integer >= 1", "type": "int_parsing"}]})
        return await self.store.log(int(raw))

    async def get_slow_mode(self, req: RouteRequest) -> SlowModeState:
        """The default delay and every room's."""
        return SlowModeState(seconds=self.plugin.settings.slow_mode.seconds,
                             rooms=await self.store.slow_mode())

    async def set_slow_mode(self, req: RouteRequest) -> SlowModeRoom:
        """Set one room's delay now (0 switches slow mode off there). Not authorized yet."""
        assert isinstance(req.body, SlowModeUpdate)
        self._require_rule("slow_mode")
        room = req.path_params["room"]
        await self.store.set_slow_mode(room, req.body.seconds)
        return SlowModeRoom(room=room, seconds=req.body.seconds)


# == plugin ===================================================================================


class ModerationPlugin(Plugin):
    """Runs the moderation pipeline on every event, refuses banned clients at the door, and
    serves the ``/moderation`` REST routes."""

    Settings = ModerationSettings
    settings: ModerationSettings

    def __init__(self, settings: ModerationSettings) -> None:
        super().__init__(settings)
        self.store: ModerationStore = MemoryStore(settings.log_size)
        # Built-ins only until start-up adds the other plugins' rules.
        self.pipeline = build_pipeline(settings, self.store, [], complete=False)

    @hookimpl
    async def plugbus_startup(self, bus: Bus) -> None:
        """Collect other plugins' rules into the pipeline and seed the slow-mode delays.

        :raises ConfigError: a rule name in settings that no rule has, or two rules with one name.
        """
        try:
            self.pipeline = build_pipeline(self.settings, self.store, bus.hooks.moderation_rules(bus))
        except ConfigError as exc:
            log.error("%s", exc)
            raise
        for room, seconds in self.settings.slow_mode.rooms.items():
            await self.store.set_slow_mode(room, seconds)
        log.info("moderation rules: %s", ", ".join(self.pipeline.names) or "none")

    @hookimpl(trylast=True)
    async def plugbus_connect(self, connection: Connection, bus: Bus) -> None:
        """Refuse a banned client (by user id or address) with a ``connect_error`` saying why.

        ``trylast``, so that an authentication plugin has set ``connection.identity`` first.
        """
        if not self.settings.rules.get("ban").enabled:
            return
        ban = await self.store.find_sanction("ban", targets_of(connection))
        if ban is not None:
            message = describe_sanction(ban, "banned")
            await self.store.append_log(log_entry("ban", "refuse", message, connection=connection,
                                                  target=(ban.kind, ban.value)))
            raise ConnectionDenied(message, details={"rule": "ban", **sanction_details(ban)})

    @hookimpl
    async def plugbus_disconnect(self, connection: Connection) -> None:
        """Forget the connection's bucket, slow-mode times and connection mutes."""
        await self.store.forget_connection(connection.sid)

    @hookimpl
    async def plugbus_moderate(self, event: Event, ctx: EventContext) -> Event | None:
        """Run the pipeline: None to let the event through, a masked copy, or a refusal
        (:class:`MessageRejected`, or :class:`RateLimited` for flood and slow mode) or
        :class:`EventDropped`, as each rule's action says."""
        return await self.pipeline.run(event, ctx)

    @hookimpl
    def plugbus_routes(self, bus: Bus) -> list[Route]:
        """Bans, mutes, kick, log and slow mode under ``/moderation`` (and
        ``DELETE /connections/{sid}``)."""
        return ModerationRoutes(self, bus).routes()
