"""A plain-module plugin that registers the events the hook-semantics tests dispatch."""

from __future__ import annotations

from typing import ClassVar

from plugbus import Event, hookimpl


class Say(Event):
    """Say something; ``text`` is user-written text that moderators may change."""

    name: ClassVar[str] = "say"
    text_fields = ("text",)
    text: str
    loud: bool = False


class Shout(Event):
    """Another event, used as a wrong-type replacement for ``Say``."""

    name: ClassVar[str] = "shout"
    text: str


@hookimpl
def plugbus_register_events() -> list[type[Event]]:
    """``say`` and ``shout``."""
    return [Say, Shout]
