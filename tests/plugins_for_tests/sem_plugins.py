"""Plugin classes for the hook-semantics tests; every call is recorded in :data:`CALLS`.

Each class takes a ``label`` setting (from ``plugins.settings.<name>``) so that one class can be
loaded several times under different names and the tests can tell the instances apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from plugbus import (
    Bus,
    Event,
    EventContext,
    EventDropped,
    MessageRejected,
    NotAllowed,
    Plugin,
    PluginSettings,
    Route,
    RouteRequest,
    hookimpl,
)

#: Every hook call, in the order it happened: ``(label, what, ...)`` tuples.
CALLS: list[tuple[Any, ...]] = []


class Labelled(PluginSettings):
    """Settings shared by the recording plugins."""

    label: str
    #: Text appended to ``event.text`` by moderators (None: let the event through unchanged).
    suffix: str | None = None
    #: Handlers: answer with a result (True) or return None (False).
    answer: bool = True


class _Recording(Plugin):
    """Base: keeps its settings typed."""

    Settings = Labelled
    settings: Labelled

    def _changed(self, event: Event) -> Event | None:
        if self.settings.suffix is None:
            return None
        return event.model_copy(update={"text": event.text + self.settings.suffix})


# -- plugbus_moderate --------------------------------------------------------------------------


class SyncModerator(_Recording):
    """A plain (sync) moderator."""

    @hookimpl
    def plugbus_moderate(self, event: Event) -> Event | None:
        """Record the text seen; append the suffix."""
        CALLS.append((self.settings.label, "moderate", getattr(event, "text", None)))
        return self._changed(event)


class AsyncModerator(_Recording):
    """An ``async def`` moderator that yields to the loop before answering."""

    @hookimpl
    async def plugbus_moderate(self, event: Event, ctx: EventContext) -> Event | None:
        """Record the text seen; append the suffix."""
        CALLS.append((self.settings.label, "moderate", getattr(event, "text", None)))
        await asyncio.sleep(0)
        return self._changed(event)


class FirstModerator(_Recording):
    """A ``tryfirst`` sync moderator."""

    @hookimpl(tryfirst=True)
    def plugbus_moderate(self, event: Event) -> Event | None:
        """Record the text seen; append the suffix."""
        CALLS.append((self.settings.label, "moderate", getattr(event, "text", None)))
        return self._changed(event)


class LastModerator(_Recording):
    """A ``trylast`` async moderator."""

    @hookimpl(trylast=True)
    async def plugbus_moderate(self, event: Event) -> Event | None:
        """Record the text seen; append the suffix."""
        CALLS.append((self.settings.label, "moderate", getattr(event, "text", None)))
        await asyncio.sleep(0)
        return self._changed(event)


class AsyncVeto(_Recording):
    """An ``async def`` moderator that vetoes every event after yielding to the loop."""

    @hookimpl
    async def plugbus_moderate(self, event: Event) -> None:
        """Always raise :class:`MessageRejected`."""
        CALLS.append((self.settings.label, "moderate", getattr(event, "text", None)))
        await asyncio.sleep(0)
        raise MessageRejected("vetoed by the test", details={"rule": self.settings.label})


class Other(Event):
    """An event class of this plugin's own (never registered): a wrong-type replacement."""

    name: ClassVar[str] = "other"
    text: str


class AsyncDrop(_Recording):
    """An ``async def`` moderator that drops every event silently after yielding to the loop."""

    @hookimpl
    async def plugbus_moderate(self, event: Event) -> None:
        """Always raise :class:`EventDropped`."""
        CALLS.append((self.settings.label, "moderate", getattr(event, "text", None)))
        await asyncio.sleep(0)
        raise EventDropped(f"dropped by {self.settings.label}")


class WrongTypeSettings(PluginSettings):
    """Settings of :class:`WrongTypeModerator`."""

    returns: Literal["dict", "other-event"] = "dict"


class WrongTypeModerator(Plugin):
    """Returns something that is not an event of the same type."""

    Settings = WrongTypeSettings
    settings: WrongTypeSettings

    @hookimpl
    async def plugbus_moderate(self, event: Event) -> Any:
        """Return a dict, or an event of another class."""
        CALLS.append(("wrong", "moderate"))
        if self.settings.returns == "dict":
            return {"text": "not an event"}
        return Other(text="another event class")


# -- plugbus_handle_event ----------------------------------------------------------------------


class SyncHandler(_Recording):
    """A plain (sync) handler."""

    @hookimpl
    def plugbus_handle_event(self, event: Event) -> dict[str, Any] | None:
        """Record the call; answer when ``answer`` is set."""
        CALLS.append((self.settings.label, "handle", getattr(event, "text", None)))
        if not self.settings.answer:
            return None
        return {"by": self.settings.label, "text": getattr(event, "text", None)}


class AsyncHandler(_Recording):
    """An ``async def`` handler that yields to the loop before answering."""

    @hookimpl
    async def plugbus_handle_event(self, event: Event, ctx: EventContext) -> dict[str, Any] | None:
        """Record the call; answer when ``answer`` is set."""
        CALLS.append((self.settings.label, "handle", getattr(event, "text", None)))
        await asyncio.sleep(0)
        if not self.settings.answer:
            return None
        return {"by": self.settings.label, "text": getattr(event, "text", None)}


class RaisingHandler(_Recording):
    """An ``async def`` handler that refuses every event."""

    @hookimpl
    async def plugbus_handle_event(self, event: Event) -> None:
        """Raise :class:`NotAllowed`."""
        CALLS.append((self.settings.label, "handle", getattr(event, "text", None)))
        await asyncio.sleep(0)
        raise NotAllowed("refused by the test handler")


class WrapperSettings(PluginSettings):
    """Settings of :class:`HandleWrapper`."""

    label: str = "wrapper"
    #: observe: pass the outcome on; replace: wrap the result; recover: turn an error into a result.
    mode: Literal["observe", "replace", "recover"] = "observe"


class HandleWrapper(Plugin):
    """A new-style wrapper (``hookimpl(wrapper=True)``) around ``plugbus_handle_event``."""

    Settings = WrapperSettings
    settings: WrapperSettings

    @hookimpl(wrapper=True)
    def plugbus_handle_event(self, event: Event) -> Generator[None, Any, Any]:
        """Record before/after and what the inner implementations produced."""
        label, mode = self.settings.label, self.settings.mode
        CALLS.append((label, "before", getattr(event, "text", None)))
        try:
            result = yield
        except Exception as exc:
            CALLS.append((label, "saw-error", type(exc).__name__, str(exc)))
            if mode == "recover":
                return {"recovered": type(exc).__name__}
            raise
        CALLS.append((label, "after", result))
        if mode == "replace":
            return {"wrapped": result}
        return result


class ModerateWrapper(Plugin):
    """A new-style wrapper around ``plugbus_moderate`` that records the final event."""

    Settings = WrapperSettings
    settings: WrapperSettings

    @hookimpl(wrapper=True)
    def plugbus_moderate(self, event: Event) -> Generator[None, Any, Any]:
        """Record the event before and after the chain."""
        CALLS.append((self.settings.label, "before", getattr(event, "text", None)))
        result = yield
        CALLS.append((self.settings.label, "after", getattr(result, "text", None)))
        return result


class OldStyleModerateWrapper(Plugin):
    """An old-style ``hookwrapper`` on an awaited hook: plugbus must refuse it."""

    Settings = PluginSettings

    @hookimpl(hookwrapper=True)
    def plugbus_moderate(self, event: Event) -> Generator[None, Any, None]:
        """Would see pluggy's outcome, which for an async hook is a coroutine."""
        CALLS.append(("old-style", "moderate"))
        yield


class OldStyleHandleWrapper(Plugin):
    """An old-style ``hookwrapper`` on ``plugbus_handle_event``: plugbus must refuse it."""

    Settings = PluginSettings

    @hookimpl(hookwrapper=True)
    def plugbus_handle_event(self, event: Event) -> Generator[None, Any, None]:
        """Would see pluggy's outcome, which for an async hook is a coroutine."""
        CALLS.append(("old-style", "handle"))
        yield


class TypoPlugin(Plugin):
    """Implements a misspelt hook name: ``check_pending`` must catch it."""

    Settings = PluginSettings

    @hookimpl
    def plugbus_handel_event(self, event: Event) -> None:
        """Misspelt ``plugbus_handle_event``; never called."""
        CALLS.append(("typo", "called"))


# -- life cycle --------------------------------------------------------------------------------


class LifeSettings(PluginSettings):
    """Settings of the life-cycle plugins."""

    label: str
    fail_startup: bool = False
    fail_shutdown: bool = False


class AsyncLife(Plugin):
    """``async def`` start-up and shut-down hooks that yield to the loop in the middle."""

    Settings = LifeSettings
    settings: LifeSettings

    @hookimpl
    async def plugbus_startup(self, bus: Bus) -> None:
        """Record begin/end around a real suspension."""
        CALLS.append((self.settings.label, "startup:begin"))
        await asyncio.sleep(0.01)
        CALLS.append((self.settings.label, "startup:end"))
        if self.settings.fail_startup:
            raise RuntimeError(f"{self.settings.label} cannot start")

    @hookimpl
    async def plugbus_shutdown(self, bus: Bus) -> None:
        """Record begin/end around a real suspension; fail if told to."""
        CALLS.append((self.settings.label, "shutdown:begin"))
        await asyncio.sleep(0.01)
        CALLS.append((self.settings.label, "shutdown:end"))
        if self.settings.fail_shutdown:
            raise RuntimeError(f"{self.settings.label} cannot stop cleanly")


class SyncLife(Plugin):
    """Plain start-up and shut-down hooks."""

    Settings = LifeSettings
    settings: LifeSettings

    @hookimpl
    def plugbus_startup(self, bus: Bus) -> None:
        """Record the call."""
        CALLS.append((self.settings.label, "startup"))
        if self.settings.fail_startup:
            raise RuntimeError(f"{self.settings.label} cannot start")

    @hookimpl
    def plugbus_shutdown(self) -> None:
        """Record the call; fail if told to."""
        CALLS.append((self.settings.label, "shutdown"))
        if self.settings.fail_shutdown:
            raise RuntimeError(f"{self.settings.label} cannot stop cleanly")


# -- collected hooks ---------------------------------------------------------------------------


class Ping(BaseModel):
    """Response of ``GET /ping``."""

    pong: bool


class RoutesPlugin(Plugin):
    """Contributes ``GET /ping``."""

    Settings = PluginSettings

    @hookimpl
    def plugbus_routes(self, bus: Bus) -> list[Route]:
        """``GET /ping``."""

        def ping(req: RouteRequest) -> dict[str, bool]:
            """Answer."""
            return {"pong": True}

        return [Route("GET", "/ping", ping, response=Ping, summary="Ping")]


class RoutesWrapper(Plugin):
    """A new-style wrapper around the collected ``plugbus_routes`` hook."""

    Settings = PluginSettings

    @hookimpl(wrapper=True)
    def plugbus_routes(self, bus: Bus) -> Generator[None, Any, Any]:
        """Record what the implementations returned."""
        CALLS.append(("routes-wrapper", "before"))
        result = yield
        CALLS.append(("routes-wrapper", "after", [[r.path for r in rs] for rs in result]))
        return result


class RegisterEventsHookwrapper(Plugin):
    """An old-style ``hookwrapper`` on the collected ``plugbus_register_events`` hook."""

    Settings = PluginSettings

    @hookimpl(hookwrapper=True)
    def plugbus_register_events(self) -> Generator[None, Any, None]:
        """Record what the implementations returned."""
        outcome = yield
        CALLS.append(("events-hookwrapper", [[c.name for c in r] for r in outcome.get_result()]))
