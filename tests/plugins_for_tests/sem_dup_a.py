"""Registers an event named ``dup`` (clashes with sem_dup_b)."""

from __future__ import annotations

from typing import ClassVar

from plugbus import Event, Plugin, hookimpl


class DupA(Event):
    """The ``dup`` event, as this plugin defines it."""

    name: ClassVar[str] = "dup"
    a: int = 0


@hookimpl
def plugbus_register_events() -> list[type[Event]]:
    """``dup``."""
    return [DupA]


class DupAgain(Event):
    """A second, different class also named ``dup``."""

    name: ClassVar[str] = "dup"
    again: int = 0


class DupPluginOne(Plugin):
    """A plugin class registering ``dup`` (as :class:`DupA`)."""

    @hookimpl
    def plugbus_register_events(self) -> list[type[Event]]:
        """``dup``."""
        return [DupA]


class DupPluginTwo(Plugin):
    """Another plugin class of the same module registering ``dup`` (as :class:`DupAgain`)."""

    @hookimpl
    def plugbus_register_events(self) -> list[type[Event]]:
        """``dup``."""
        return [DupAgain]
