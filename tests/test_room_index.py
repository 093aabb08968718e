"""The room index beside python-socketio's room table (api/room_index.py): the same answers as
python-socketio's own scans, after any sequence of joins, leaves, closes and disconnects."""

from __future__ import annotations

import itertools
import random

import socketio
from socketio.base_manager import BaseManager

from plugbus.api.room_index import IndexedManager, SidRoom


def _managers() -> tuple[socketio.AsyncManager, IndexedManager]:
    plain, indexed = socketio.AsyncManager(), IndexedManager()
    for manager in (plain, indexed):
        server = socketio.AsyncServer()
        ids = itertools.count()
        server.eio.generate_id = lambda ids=ids: f"sid{next(ids)}"  # the same sids in both
        manager.set_server(server)
        manager.initialize()
    return plain, indexed


def _state(manager: socketio.AsyncManager) -> tuple[object, ...]:
    rooms = {
        ns: {room: dict(members) for room, members in table.items()}
        for ns, table in manager.rooms.items()
    }
    return rooms, manager.pending_connect, manager.pending_disconnect, set(manager.callbacks)


async def test_a_random_history_leaves_the_index_and_python_socketios_table_in_agreement() -> None:
    plain, indexed = _managers()
    rng = random.Random(7)
    sids: dict[str, list[str]] = {"/": [], "/chat": []}
    for step in range(3000):
        ns = rng.choice(["/", "/chat"])
        op = rng.random()
        if op < 0.3 or not sids[ns]:
            eio = f"e{step}"
            sid = await plain.connect(eio, ns)
            assert await indexed.connect(eio, ns) == sid
            sids[ns].append(sid)
        elif op < 0.6:
            sid, room = rng.choice(sids[ns]), f"room{rng.randrange(12)}"
            for manager in (plain, indexed):
                await manager.enter_room(sid, ns, room)
        elif op < 0.75:
            sid, room = rng.choice(sids[ns]), f"room{rng.randrange(12)}"
            for manager in (plain, indexed):
                await manager.leave_room(sid, ns, room)
        elif op < 0.8:
            room = f"room{rng.randrange(12)}"
            for manager in (plain, indexed):
                await manager.close_room(room, ns)
        elif op < 0.85:
            # a sid room: no one else may enter it, it cannot be closed, and its members are
            # read as python-socketio reads them (alone, and with other rooms)
            sid, other = rng.choice(sids[ns]), rng.choice(sids[ns])
            for what in ("enter", "close"):
                outcomes = []
                for manager in (plain, indexed):
                    try:
                        if what == "enter":
                            await manager.enter_room(sid, ns, other)
                        else:
                            await manager.close_room(sid, ns)
                        outcomes.append(None)
                    except ValueError as exc:
                        outcomes.append(str(exc))
                assert outcomes[0] == outcomes[1], (what, outcomes)
            rooms = [sid, other, f"room{rng.randrange(12)}"]
            for query in (sid, rooms):
                assert sorted(indexed.get_participants(ns, query)) == sorted(
                    plain.get_participants(ns, query)
                )
            assert indexed.sid_from_eio_sid(
                plain.eio_sid_from_sid(sid, ns), ns
            ) == plain.sid_from_eio_sid(plain.eio_sid_from_sid(sid, ns), ns)
        else:
            sid = sids[ns].pop(rng.randrange(len(sids[ns])))
            for manager in (plain, indexed):
                manager.pre_disconnect(sid, ns)
                await manager.disconnect(sid, ns)
        assert _state(indexed) == _state(plain), f"after step {step}"
        # every connection's own room is the light one (api/room_index.SidRoom)
        assert all(type(indexed.rooms[ns][sid]) is SidRoom for sid in sids[ns])
        for sid in rng.sample(sids[ns], min(3, len(sids[ns]))):
            assert sorted(indexed.get_rooms(sid, ns)) == sorted(
                BaseManager.get_rooms(plain, sid, ns)
            )
    assert indexed.get_rooms("never-connected", "/") == []
    for ns, members in sids.items():
        for sid in members:
            for manager in (plain, indexed):
                manager.pre_disconnect(sid, ns)
                await manager.disconnect(sid, ns)
    assert _state(indexed) == _state(plain)
    assert indexed._rooms_of == {}  # nothing left behind for connections that are gone
