"""Plugins for tests/test_hook_calls.py: how plugbus calls hooks, compared with pluggy's own.

``RECORD`` collects what the plugins saw; ``SCENARIO`` picks how the wrappers misbehave.
Every implementation is a plain function (no coroutine), so that pluggy itself can call the
same hooks and the two call loops can be compared step by step.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, ClassVar

from plugbus import Event, NotAllowed, Plugin, ServerEvent, hookimpl

RECORD: list[Any] = []
REGISTER_CALLS: list[str] = []
SCENARIO = {"name": "plain"}


class Alpha(Event):
    """Declared by the ``one`` plugin."""

    name: ClassVar[str] = "alpha"


class Beta(Event):
    """Declared by the ``two`` plugin (the same module as ``one``)."""

    name: ClassVar[str] = "beta"


class Gamma(Event):
    """Added by the ``adder`` plugin's wrapper, not by an implementation."""

    name: ClassVar[str] = "gamma"


class One(Plugin):
    """Declares ``alpha``; an outer wrapper of ``plugbus_authorize_join``."""

    @hookimpl
    def plugbus_register_events(self) -> list[type[Event]]:
        REGISTER_CALLS.append("one")
        return [Alpha]

    @hookimpl(wrapper=True, tryfirst=True)
    def plugbus_authorize_join(self, room: str) -> Generator[None, Any, Any]:
        RECORD.append(("outer setup", room))
        try:
            result = yield
        except BaseException as exc:
            RECORD.append(("outer saw error", type(exc).__name__, str(exc)))
            if SCENARIO["name"] == "outer-swallows":
                return "swallowed"
            raise
        RECORD.append(("outer saw result", result))
        return result


class Two(Plugin):
    """Declares ``beta`` and a server event; the inner wrapper and the implementations."""

    @hookimpl
    def plugbus_register_events(self) -> list[type[Event] | ServerEvent]:
        REGISTER_CALLS.append("two")
        return [Beta, ServerEvent("beta-done", str, "Beta was handled.")]

    @hookimpl(wrapper=True)
    def plugbus_authorize_join(self, room: str) -> Generator[None, Any, Any]:
        RECORD.append(("inner setup", room))
        if SCENARIO["name"] == "inner-setup-raises":
            raise ValueError("inner setup failed")
        if SCENARIO["name"] == "inner-no-yield":
            return None
        result = yield
        RECORD.append(("inner saw result", result))
        if SCENARIO["name"] == "inner-second-yield":
            yield
        return result

    @hookimpl(specname="plugbus_authorize_join")
    def check_room(self, room: str) -> None:
        RECORD.append(("impl", room))
        if SCENARIO["name"] == "impl-refuses":
            raise NotAllowed("no entry")


class Adder(Plugin):
    """A wrapper around ``plugbus_register_events`` that adds ``gamma``."""

    @hookimpl(wrapper=True)
    def plugbus_register_events(self) -> Generator[None, Any, Any]:
        REGISTER_CALLS.append("adder")
        result = yield
        return [*result, [Gamma]]
