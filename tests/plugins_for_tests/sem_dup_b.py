"""Registers an event named ``dup`` (clashes with sem_dup_a)."""

from __future__ import annotations

from typing import ClassVar

from plugbus import Event, hookimpl


class DupB(Event):
    """The ``dup`` event, as this other plugin defines it."""

    name: ClassVar[str] = "dup"
    b: int = 0


@hookimpl
def plugbus_register_events() -> list[type[Event]]:
    """``dup``."""
    return [DupB]
