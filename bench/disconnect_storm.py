"""How long the event loop is blocked while N connections leave, with python-socketio's room
table alone and with plugbus's room index (api/room_index.py).

    python bench/disconnect_storm.py [N ...]        (default: 1000 10000)

Each connection is in its own sid room and one shared room, as a chat client is. Prints a
markdown table; the figures are CPU time of the disconnect bookkeeping only (no sockets).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import socketio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from plugbus.api.room_index import IndexedManager


async def storm(cls: type[socketio.AsyncManager], n: int) -> float:
    manager = cls()
    manager.set_server(socketio.AsyncServer())
    manager.initialize()
    sids = []
    for i in range(n):
        sid = await manager.connect(f"eio{i}", "/")
        await manager.enter_room(sid, "/", "lobby")
        sids.append(sid)
    start = time.perf_counter()
    for sid in sids:
        manager.pre_disconnect(sid, "/")
        await manager.disconnect(sid, "/")
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    sizes = [int(a) for a in argv] or [1000, 10000]
    print("| connections leaving | python-socketio ms | plugbus room index ms | ratio |")
    print("|---|---|---|---|")
    for n in sizes:
        plain = asyncio.run(storm(socketio.AsyncManager, n))
        indexed = asyncio.run(storm(IndexedManager, n))
        print(
            f"| {n:,} | {plain * 1000:.3f} | {indexed * 1000:.3f} | {plain / max(indexed, 1e-9):.0f}× |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
