"""The seam between the bus and the socket server that owns the wire.

core/ never talks to python-socketio directly: it asks a :class:`Transport`. The socket door in
api/ implements it on python-socketio's server and client manager, which is also where fan-out
across nodes (a Redis manager) plugs in without the plugins noticing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .history import FeedEvent


class Transport(Protocol):
    """What the bus needs from the socket server. Every operation names its Socket.IO
    namespace: rooms and connection ids belong to one namespace (the bus always passes it)."""

    async def emit(
        self,
        event: str,
        data: Any,
        *,
        room: str | None = None,
        skip_sid: str | None = None,
        namespace: str = "/",
    ) -> None:
        """Send ``event`` with ``data`` to ``room`` (a room name or a connection id), or to
        every connection of ``namespace`` when ``room`` is None; ``skip_sid`` is left out. A
        tuple ``data`` is several arguments, None none."""

    def deliver(
        self,
        event: str,
        args: tuple[Any, ...],
        *,
        room: str | None = None,
        skip_sid: str | None = None,
        namespace: str = "/",
        offset: str | None = None,
    ) -> None:
        """Deliver a stored event to its recipients on this node only (history hands every
        node each stored event, in offset order). Connections offered recovery receive
        ``offset`` as the event's last argument."""

    def deliver_stored(
        self,
        namespace: str,
        event: str,
        args: tuple[Any, ...],
        target: str | None,
        kind: str,
        skip_sid: str | None,
        offset: str | None,
    ) -> None:
        """:meth:`deliver` with the arguments history hands each stored event to (its
        ``deliver``, which the bus sets to this method once the transport is attached: the
        per-event path without a call in between)."""

    def deliver_many(self, events: list[FeedEvent]) -> None:
        """Deliver events read from the history feed, in their (offset) order, to their
        recipients on this node only: :meth:`deliver` for each, with the publisher's encoding
        (:attr:`FeedEvent.text`) sent as it is and, where several go to one recipient, one
        write for all of them. Each event's :attr:`FeedEvent.mark` is the offset a recovering
        connection is told it has after that event."""

    async def enter_room(self, sid: str, room: str, *, namespace: str = "/") -> None:
        """Put connection ``sid`` into ``room``."""

    async def leave_room(self, sid: str, room: str, *, namespace: str = "/") -> None:
        """Take connection ``sid`` out of ``room``."""

    def rooms_of(self, sid: str, *, namespace: str = "/") -> list[str]:
        """The rooms ``sid`` is in, not counting its own id room."""

    def is_member(self, sid: str, room: str, *, namespace: str = "/") -> bool:
        """True when ``sid`` is in ``room`` on this node."""

    def rooms(self, *, namespace: str = "/") -> dict[str, int]:
        """Every named room on this node with its member count (connection id rooms left out)."""

    def members(self, room: str, *, namespace: str = "/") -> list[str]:
        """The connection ids in ``room`` on this node."""

    def room_size(self, room: str, *, namespace: str = "/") -> int:
        """How many connections on this node are in ``room``."""

    def connection_count(self, *, namespace: str = "/") -> int:
        """How many connections this node holds in ``namespace``."""

    async def disconnect(self, sid: str, *, namespace: str = "/") -> None:
        """Close connection ``sid``."""
