"""plugbus's own work per Socket.IO CONNECT, in process (issue #16, item 3).

    .venv/bin/python bench/connect_path.py [--connections 5000] [--repeat 3] [--profile]

Builds the application ``plugbus serve`` runs (the embedded config, with bench/run.py's
changes: log level warning, no entry points, no event rate limit, no connection cap; so auth,
moderation's ban check, welcome and presence run on every connect), opens ``--connections``
Engine.IO sessions without a socket (long-polling sessions, so what the server sends waits in
their outbox: no write is counted), and hands each the Socket.IO CONNECT packet ``0`` through
the door (``_handle_eio_message``): the CONNECT handling from the packet to the CONNECT ack
and the greeting, with the hooks, the room tables, presence and the connection's records.
It prints the thread CPU time per CONNECT in µs, best of ``--repeat`` runs (each with fresh
sessions; the machine is shared: the least disturbed run is the closest to the cost), with
the collector set as ``plugbus serve`` sets it (start-up heap frozen, first threshold 20,000).
``--profile`` runs one more pass under cProfile and prints the top functions by internal time.

What it leaves out: the HTTP upgrade and websocket handshake, the Engine.IO OPEN, and the
socket writes (bench/conn_cost.py measures the whole connection against a real server).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# bench/run.py's plugbus_env, repeated here so this file stands alone
os.environ.update(
    {
        "PLUGBUS_SERVER__LOG_LEVEL": "warning",
        "PLUGBUS_PLUGINS__ENTRY_POINTS": "false",
        "PLUGBUS_SERVER__LIMITS__EVENTS_PER_SECOND": "0",
        "PLUGBUS_SERVER__LIMITS__MAX_CONNECTIONS": "0",
    }
)

from plugbus.api.app import create_app
from plugbus.api.cli import GC_YOUNG_THRESHOLD
from plugbus.api.wire import EngineSession
from plugbus.core.config import load_config

SCOPE = {
    "type": "http",
    "client": ("127.0.0.1", 50000),
    "query_string": b"EIO=4&transport=polling",
    "headers": [],
}


async def _run(connections: int, repeat: int, profile: bool) -> None:
    app = create_app(load_config(None))
    await app.bus.start()
    sio, eio = app.sio, app.sio.eio
    try:

        async def sessions(n: int) -> list[EngineSession]:
            out = []
            for _ in range(n):
                session = eio._new_session(dict(SCOPE), "polling", "127.0.0.1", {"host": "b"})
                await sio._handle_eio_connect(session.sid, session.environ)
                out.append(session)
            return out

        async def connect_all(batch: list[EngineSession]) -> float:
            started = time.thread_time()
            for session in batch:
                await sio._handle_eio_message(session.sid, "0")
            return time.thread_time() - started

        await connect_all(await sessions(200))  # warm-up: first-use costs are not a connect's
        gc.collect()
        gc.freeze()
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
        best = None
        for _ in range(repeat):
            batch = await sessions(connections)
            seconds = await connect_all(batch)
            acked = sum(1 for s in batch if s.outbox[:1] and s.outbox[0].startswith("40"))
            if acked != connections:
                raise SystemExit(f"only {acked} of {connections} CONNECTs were acknowledged")
            best = seconds if best is None else min(best, seconds)
        assert best is not None
        print(f"{best / connections * 1e6:.1f} µs of thread CPU per CONNECT")
        print(
            f"(best of {repeat} runs of {connections} connections; load average {tuple(round(x, 2) for x in os.getloadavg())})"
        )
        if profile:
            batch = await sessions(connections)
            prof = cProfile.Profile()
            prof.enable()
            await connect_all(batch)
            prof.disable()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
            print(text.getvalue())
    finally:
        await app.bus.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    asyncio.run(_run(args.connections, args.repeat, args.profile))


if __name__ == "__main__":
    main()
