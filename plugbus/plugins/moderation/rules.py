"""The built-in moderation rules (``ban``, ``mute``, ``flood``, ``slow_mode``, ``max_length``,
``blocked_words``) and the helpers that tell a sanctioned client why."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Sequence
from typing import Any, ClassVar

from plugbus import (
    Connection,
    Event,
    EventContext,
    PlugbusError,
    RateLimited,
    Violation,
)

from .settings import FloodSettings, SanctionType, SlowModeSettings, TargetKind
from .store import ModerationStore, Sanction
from .text import Normaliser, strings_in


def targets_of(connection: Connection) -> list[tuple[TargetKind, str]]:
    """What a sanction may name to reach ``connection``: its id, its user id, its address."""
    out: list[tuple[TargetKind, str]] = [("connection", connection.sid)]
    if connection.identity is not None:
        out.append(("identity", connection.identity.user_id))
    if connection.remote_addr:
        out.append(("address", connection.remote_addr))
    return out


def sender_of(connection: Connection) -> str:
    """Who flood control and slow mode count a connection's events against:
    ``identity:<user id>`` when it has an identity (a user's connections, on any node, share
    one bucket and one slow-mode clock), else ``connection:<sid>``."""
    if connection.identity is not None:
        return f"identity:{connection.identity.user_id}"
    return f"connection:{connection.sid}"


def sanction_keys(store: ModerationStore, type: SanctionType, connection: Connection) -> list[str]:
    """The store keys of ``type`` sanctions that reach ``connection``, kept in its state (its
    id, identity and address do not change while it lives; read on every event)."""
    cache = connection.state.get("moderation.sanction_keys")
    if cache is None:
        cache = connection.state["moderation.sanction_keys"] = {}
    keys: list[str] | None = cache.get(type)
    if keys is None:
        keys = cache[type] = store.sanction_keys(type, targets_of(connection))
    return keys


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


def _violation(sanction: Sanction | None, verb: str) -> Violation | None:
    """The violation a sanction in force makes (``verb``: "banned", "muted"), or None."""
    if sanction is None:
        return None
    return Violation(describe_sanction(sanction, verb), details=sanction_details(sanction))


class BanRule:
    """``ban``: events from a banned connection are refused (a ban also disconnects it and
    refuses its reconnects; this catches an event racing the disconnect)."""

    name = "ban"

    def __init__(self, store: ModerationStore) -> None:
        self.store = store

    def check(
        self, event: Event, ctx: EventContext
    ) -> Violation | Awaitable[Violation | None] | None:
        """A violation when the sender is banned by identity or address. (Answered at once
        when the store has the sanctions at hand; else the read's coroutine, to await.)"""
        if ctx.connection is None:
            return None
        keys = sanction_keys(self.store, "ban", ctx.connection)
        found = self.store.find_sanctioned_now(keys)
        if found is None:
            return self._check_later(keys)
        return _violation(found[0], "banned")

    async def _check_later(self, keys: list[str]) -> Violation | None:
        return _violation(await self.store.find_sanctioned(keys), "banned")


class MuteRule:
    """``mute``: a muted connection may read and join rooms, but events with text are refused."""

    name = "mute"

    def __init__(self, store: ModerationStore) -> None:
        self.store = store

    def check(
        self, event: Event, ctx: EventContext
    ) -> Violation | Awaitable[Violation | None] | None:
        """A violation when the event carries text and its sender is muted. (Answered at
        once when the store has the sanctions at hand; else the read's coroutine.)"""
        if ctx.connection is None or not type(event).text_fields:
            return None
        keys = sanction_keys(self.store, "mute", ctx.connection)
        found = self.store.find_sanctioned_now(keys)
        if found is None:
            return self._check_later(keys)
        return _violation(found[0], "muted")

    async def _check_later(self, keys: list[str]) -> Violation | None:
        return _violation(await self.store.find_sanctioned(keys), "muted")


class FloodRule:
    """``flood``: a token bucket per sender (its user id, else its connection) over every
    event it sends."""

    name = "flood"
    refusal: ClassVar[type[PlugbusError]] = RateLimited

    def __init__(self, store: ModerationStore, settings: FloodSettings) -> None:
        self.store = store
        self.settings = settings

    async def check(self, event: Event, ctx: EventContext) -> Violation | None:
        """A violation (with ``retry_after``) when the sender's bucket is empty."""
        if ctx.connection is None:
            return None
        wait = await self.store.take_token(
            sender_of(ctx.connection), self.settings.burst, self.settings.rate
        )
        if wait <= 0:
            return None
        wait = round(wait + 0.0005, 3)
        return Violation(
            f"too many events: at most {self.settings.burst} at once and {self.settings.rate:g} per "
            f"second; retry in {wait:g} s",
            details={"retry_after": wait, "burst": self.settings.burst, "rate": self.settings.rate},
        )


class SlowModeRule:
    """``slow_mode``: one message per sender (its user id, else its connection) per room every
    N seconds (per-room N)."""

    name = "slow_mode"
    refusal: ClassVar[type[PlugbusError]] = RateLimited

    def __init__(self, store: ModerationStore, settings: SlowModeSettings) -> None:
        self.store = store
        self.default = settings.seconds
        #: (sender, room) -> the delay, for messages that passed this rule in a slow room
        self._timed: dict[tuple[str, str], float] = {}

    def room_of(self, event: Event, ctx: EventContext) -> str | None:
        """The room a text event goes to, when it has a sender, text and a room field."""
        field = type(event).room_field
        if ctx.connection is None or not field or not type(event).text_fields:
            return None
        room = getattr(event, field, None)
        return room if isinstance(room, str) else None

    def check(
        self, event: Event, ctx: EventContext
    ) -> Violation | Awaitable[Violation | None] | None:
        """A violation (with ``retry_after``) when the sender wrote to the room too recently.
        (Answered at once for a room without a delay when the store has the delays at hand;
        else the coroutine of the rest, to await.)"""
        # room_of, inline (every event)
        cls = type(event)
        field = cls.room_field
        connection = ctx.connection
        if connection is None or not field or not cls.text_fields:
            return None
        room = getattr(event, field, None)
        if not isinstance(room, str):
            return None
        found = self.store.slow_mode_delay_now(room)
        if found is None:
            return self._check_later(event, connection, room)
        seconds = found[0]
        if seconds is None:
            seconds = self.default
        if seconds <= 0:
            return None
        return self._wait(event, connection, room, seconds)

    async def _check_later(
        self, event: Event, connection: Connection, room: str
    ) -> Violation | None:
        seconds = await self.store.slow_mode_delay(room)
        if seconds is None:
            seconds = self.default
        if seconds <= 0:
            return None
        return await self._wait(event, connection, room, seconds)

    async def _wait(
        self, event: Event, connection: Connection, room: str, seconds: float
    ) -> Violation | None:
        sender = sender_of(connection)
        wait = await self.store.slow_mode_wait(sender, room, seconds)
        if wait <= 0:
            # remembered for ``accepted``, so that it need not read the delay again; an entry
            # left by an event a later rule refused is replaced by the sender's next message
            if len(self._timed) >= 10_000:
                self._timed.clear()
            self._timed[(sender, room)] = seconds
            return None
        wait = round(wait + 0.0005, 3)
        return Violation(
            f"slow mode in room {room!r}: one message every {seconds:g} s; retry in {wait:g} s",
            field=type(event).room_field,
            details={"room": room, "seconds": seconds, "retry_after": wait},
        )

    def accepted(self, event: Event, ctx: EventContext) -> Awaitable[None] | None:
        """The event passed every rule: start the room's clock for its sender — in rooms with
        a delay only (a message sent while a room had none does not hold back the next).

        :return: the store write to await, or None when there is none (no slow room was
            written to: the common case costs no coroutine).
        """
        if not self._timed:
            return None
        room = self.room_of(event, ctx)
        if room is None or ctx.connection is None:
            return None
        sender = sender_of(ctx.connection)
        if self._timed.pop((sender, room), None) is not None:
            return self.store.message_sent(sender, room)
        return None


def text_fields(event: Event) -> list[tuple[str, str]]:
    """``(path, text)`` for every string inside the text fields of ``event``: a string field
    is its own path (``message``); strings inside lists, dicts and nested models are found
    too (``options.1``, ``answer.text``). A list, not a generator: two rules read it on every
    event, and a generator costs more than the one or two strings it usually yields."""
    out: list[tuple[str, str]] = []
    for field in type(event).text_fields:
        value = getattr(event, field, None)
        if isinstance(value, str):  # the common case, without the walk
            out.append((field, value))
        elif value is not None:
            out.extend(strings_in(value, field))
    return out


class MaxLengthRule:
    """``max_length``: a text field longer than the limit (cannot mask: nothing to point at)."""

    name = "max_length"

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def check(self, event: Event, ctx: EventContext) -> Violation | None:
        """A violation for the first text field over the limit."""
        limit = self.limit
        if not limit:
            return None
        # text_fields' walk without its list: a string field (the common case) is measured
        # where it is found
        for field in type(event).text_fields:
            value = getattr(event, field, None)
            if isinstance(value, str):
                if len(value) > limit:
                    return self._violation(field, value)
            elif value is not None:
                for path, text in strings_in(value, field):
                    if len(text) > limit:
                        return self._violation(path, text)
        return None

    def _violation(self, field: str, text: str) -> Violation:
        return Violation(
            f"{field} is {len(text)} characters long; the limit is {self.limit}",
            field=field,
            details={"limit": self.limit, "length": len(text)},
        )


class BlockedWordsRule:
    """``blocked_words``: whole words matched after folding case, accents and substitutions;
    the spans point into the original text, so masking hits exactly the written word."""

    name = "blocked_words"

    def __init__(self, words: Sequence[str], substitutions: dict[str, str]) -> None:
        self.normaliser = Normaliser(substitutions)
        folded = sorted(
            {self.normaliser.fold(w.strip()) for w in words if w.strip()} - {""},
            key=len,
            reverse=True,
        )
        # One pattern for all words: one scan per text, however many words there are.
        self.pattern = (
            re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, folded)) + r")(?!\w)")
            if folded
            else None
        )

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
        if self.pattern is None:  # no words are blocked: no text to look at
            return None
        for field, text in text_fields(event):
            spans = self.find(text)
            if spans:
                start, end = spans[0]
                return Violation(
                    f"{field} contains a blocked word",
                    field=field,
                    spans=tuple(spans),
                    details={"word": text[start:end]},
                )
        return None
