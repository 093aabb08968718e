"""A reverse index for python-socketio's room table: the rooms each connection is in.

python-socketio 5.18 finds a connection's rooms by scanning every room of the namespace —
``get_rooms`` walks them, and ``basic_disconnect`` copies the whole table and walks it. Every
connection has a room of its own (named by its sid), so with N connections each disconnect
costs O(N) and N clients leaving cost O(N²): seconds of a blocked event loop when thousands
drop at once. :class:`RoomIndexMixin` keeps, beside python-socketio's ``rooms`` table, the
rooms of each (namespace, sid), so both become O(the connection's own rooms).

A connection's own room holds one member for its life and nobody else may enter it, so it is
a :class:`SidRoom` (a dict with the two-way map's read interface python-socketio uses) rather
than a ``bidict``: python-socketio makes one per connection, ~1.3 µs and ~470 bytes each,
against ~0.3 µs and ~200 bytes.
"""

from __future__ import annotations

from typing import Any

import socketio
from bidict import ValueDuplicationError


class SidRoom(dict[Any, Any]):
    """A connection's own room: ``{sid: eio_sid}``, the one member it ever has.

    python-socketio reads a room's forward map as ``room._fwdm`` (``get_participants``) and
    otherwise uses a room as a mapping; its ``basic_enter_room`` refuses anyone but the sid
    itself into a sid room, so the value can never be duplicated, which is all a ``bidict``
    would add here. ``_invm`` is read from the everyone room only.
    """

    __slots__ = ()

    @property
    def _fwdm(self) -> dict[Any, Any]:
        return self


class RoomIndexMixin:
    """Mix into a python-socketio client manager (before it in the bases).

    Every change to membership goes through ``basic_enter_room`` / ``basic_leave_room`` (the
    async ``enter_room``, ``leave_room``, ``close_room``, ``connect`` and pub/sub managers all
    call them), so the index is kept there. ``get_rooms`` and ``basic_disconnect`` read it and
    otherwise behave as python-socketio's.
    """

    rooms: dict[str, dict[Any, Any]]
    callbacks: dict[str, Any]
    pending_connect: dict[str, list[str]]
    pending_disconnect: dict[str, list[str]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (namespace, sid) -> its rooms in the order entered (a dict used as an ordered set);
        # the None room (everyone) and the sid's own room included, as in ``rooms``
        self._rooms_of: dict[tuple[str, str], dict[Any, None]] = {}

    def basic_enter_room(
        self, sid: str, namespace: str, room: Any, eio_sid: str | None = None
    ) -> None:
        table = self.rooms.get(namespace)
        if room == sid and eio_sid is not None and table is not None and room not in table:
            # the sid room python-socketio's pre_connect makes, right after the everyone room:
            # its basic_enter_room would make a bidict for it
            members = table[room] = SidRoom()
            members[sid] = eio_sid
        else:
            super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        self._rooms_of.setdefault((namespace, sid), {})[room] = None

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        rooms = self._rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.pop(room, None)
            if not rooms:
                del self._rooms_of[(namespace, sid)]

    def pre_connect_as(self, eio_sid: str, namespace: str, sid: str) -> str | None:
        """python-socketio's ``pre_connect`` with a given sid instead of a new one: a
        recovered session keeps its sid. None when the Engine.IO session is already in the
        namespace or the sid is taken."""
        if sid in self.rooms.get(namespace, {}).get(None, {}):
            return None
        try:
            self.basic_enter_room(sid, namespace, None, eio_sid=eio_sid)
        except ValueDuplicationError:
            return None
        self.basic_enter_room(sid, namespace, sid, eio_sid=eio_sid)
        self.pending_connect.setdefault(namespace, []).append(sid)
        return sid

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        """The rooms ``sid`` is in (its own sid room included, the everyone room not)."""
        return [room for room in self._rooms_of.get((namespace, sid), ()) if room is not None]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        if namespace not in self.rooms:
            return
        for room in list(self._rooms_of.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        # the rest as python-socketio's basic_disconnect
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            waiting = pending.get(namespace)
            if waiting is not None and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del pending[namespace]


class IndexedManager(RoomIndexMixin, socketio.AsyncManager):  # type: ignore[misc]
    """python-socketio's in-memory ``AsyncManager`` with the room index."""
