"""Plugins for tests/test_per_event_path.py: ``plugbus_moderate`` implementations without
wrappers, of every kind the per-event walk meets (plain, one that returns an awaitable, one
that takes its arguments in another order), each recording its call in ``RECORD``; and a
handler for the two events they moderate."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, ClassVar

from plugbus import Event, EventContext, EventDropped, NotAllowed, Plugin, hookimpl

RECORD: list[Any] = []
#: texts the last plugin leaves to the others' ``plugbus_handle_event``
HANDLED_LATER = ("pass-on", "first-handle", "defer-handle")


class Say(Event):
    """An event with text, kept in history."""

    name: ClassVar[str] = "say"
    text: str


class Whisper(Say):
    """The same, kept out of history."""

    name: ClassVar[str] = "whisper"
    history: ClassVar[bool] = False


class First(Plugin):
    """Plain: masks ``mask``, drops ``drop-first``, answers ``wrong-first`` with another type."""

    @hookimpl
    def plugbus_moderate(self, event: Event, ctx: EventContext) -> Event | None:
        """Record, then act on the text."""
        text = getattr(event, "text", None)
        RECORD.append(("first", text))
        if text == "mask":
            return event.model_copy(update={"text": "****"})
        if text == "drop-first":
            raise EventDropped("first drops")
        if text == "wrong-first":
            return Whisper(text="x") if type(event) is Say else Say(text="x")
        return None

    @hookimpl
    def plugbus_handle_event(self, ctx: EventContext, event: Event) -> Any:
        """Answers ``first-handle`` (its arguments the other way round)."""
        text = getattr(event, "text", None)
        RECORD.append(("first handles", text))
        return {"first": text} if text == "first-handle" else None


class Deferred(Plugin):
    """Returns a coroutine: masks ``defer-mask`` and refuses ``no-deferred`` from it."""

    @hookimpl
    def plugbus_moderate(self, event: Event, ctx: EventContext) -> Awaitable[Event | None]:
        """Record at the call, and again when awaited."""
        text = getattr(event, "text", None)
        RECORD.append(("deferred called", text))

        async def check() -> Event | None:
            RECORD.append(("deferred awaited", text))
            if text == "no-deferred":
                raise NotAllowed("deferred says no")
            if text == "defer-mask":
                return event.model_copy(update={"text": "deferred ****"})
            return None

        return check()

    @hookimpl
    async def plugbus_handle_event(self, event: Event, ctx: EventContext) -> Any:
        """Answers ``defer-handle`` (``async def``)."""
        text = getattr(event, "text", None)
        RECORD.append(("deferred handles", text))
        return {"deferred": text, "history": ctx.history} if text == "defer-handle" else None


class Last(Plugin):
    """Takes its arguments the other way round; drops ``drop-last``; handles both events."""

    @hookimpl
    def plugbus_moderate(self, ctx: EventContext, event: Event) -> None:
        """Record, then drop ``drop-last``."""
        RECORD.append(("last", getattr(event, "text", None)))
        if getattr(event, "text", None) == "drop-last":
            raise EventDropped("last drops")

    @hookimpl
    def plugbus_register_events(self) -> list[type[Event]]:
        """``say`` and ``whisper``."""
        return [Say, Whisper]

    @hookimpl
    def plugbus_handle_event(self, event: Event, ctx: EventContext) -> Any:
        """What arrived, and whether it is kept in history."""
        if isinstance(event, Say) and event.text not in HANDLED_LATER:
            RECORD.append(("handled", event.text))
            return {"text": event.text, "history": ctx.history}
        return None
