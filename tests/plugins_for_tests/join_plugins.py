"""Plugins for tests/test_per_event_path.py: ``plugbus_authorize_join`` implementations without
wrappers, of every kind the per-event walk meets (plain, one that returns an awaitable, one
that takes the bus too), each recording its call in ``RECORD``."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from plugbus import Bus, Connection, NotAllowed, Plugin, hookimpl

RECORD: list[Any] = []


class First(Plugin):
    """Plain; refuses the room ``no-first``."""

    @hookimpl
    def plugbus_authorize_join(self, connection: Connection, room: str) -> None:
        """Record, then refuse ``no-first``."""
        RECORD.append(("first", room))
        if room == "no-first":
            raise NotAllowed("first says no")


class Deferred(Plugin):
    """Returns a coroutine (to be awaited by the walk); refuses ``no-deferred`` from it."""

    @hookimpl
    def plugbus_authorize_join(self, connection: Connection, room: str) -> Awaitable[None]:
        """Record at the call, and again when awaited."""
        RECORD.append(("deferred called", room))

        async def check() -> None:
            RECORD.append(("deferred awaited", room))
            if room == "no-deferred":
                raise NotAllowed("deferred says no")

        return check()


class Last(Plugin):
    """Takes the bus as well (the arguments by name); refuses ``no-last``."""

    @hookimpl
    def plugbus_authorize_join(self, room: str, bus: Bus, connection: Connection) -> None:
        """Record, then refuse ``no-last``."""
        RECORD.append(("last", room, bus.server_name))
        if room == "no-last":
            raise NotAllowed("last says no")
