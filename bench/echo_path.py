"""The per-event cost of an echoed ``send-message``, in process (issue #16, item 2).

    .venv/bin/python bench/echo_path.py [--events 20000] [--repeat 3] [--profile N]

Builds the application ``plugbus serve`` runs (the embedded config, with bench/run.py's
changes: log level warning, no entry points, no per-connection event rate limit, no
connection cap), connects one Socket.IO client through ASGI long-polling, then swaps that
connection's writer for a websocket writer on a transport that only counts bytes, so that
every ack takes the direct websocket path (``encode_frame`` and one ``transport.write``) as
under the benchmark, without a socket. Then, per stage, it runs ``--events`` events and
reports the process CPU time (``time.process_time``) per event, in µs:

* ``door``: the whole server side of one echoed event short of the socket read —
  ``_handle_eio_message`` with the packet ``21["send-message",{...}]``: the door's
  decode, ``Bus.dispatch_args``, the ack's encoding and its websocket frame written;
* ``dispatch``: ``Bus.dispatch_args`` alone (validation, moderation, handling);
* ``parse``: ``EventRegistry.parse_args`` (validation: the lone-surrogate check, pydantic);
* ``moderate``: ``Hooks.moderate`` (the moderation plugin's rules);
* ``handle``: ``Hooks.handle_event`` (relay: the join rules for a room the sender is not in,
  the message id, ``bus.emit`` to a room nobody is in);
* ``moderate_plugin``, ``handle_plugin``: the moderation and relay plugins' implementations
  called directly (the difference to ``moderate`` and ``handle`` is the hook walk);
* ``join_rules``: ``Bus.authorize_join`` (``plugbus_authorize_join``: the auth plugin's room
  rules, which relay asks for a room the sender is not in);
* ``emit``: ``Bus.emit`` of the message to the room (history, then the delivery to nobody);
* ``context``: ``Bus.context`` (the per-event context object).

Stages run back to back, ``--repeat`` times, and the best of the repeats is reported (the
machine is shared: the least disturbed run is the closest to the cost). ``--profile N`` runs
the ``door`` stage N times under cProfile and prints the top functions by internal time.
The same message as bench/loadgen.py's echo: ``{"message": "ping", "roomID": "echo-nobody"}``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

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
from plugbus.api.wire.writers import DirectWriter
from plugbus.core import Origin, load_config
from plugbus.testing.inprocess import InProcessApp

ROOM = "echo-nobody"
# the Socket.IO packet inside the Engine.IO message: EVENT (2), ack id 1
PACKET = '21["send-message",{"message":"ping","roomID":"' + ROOM + '"}]'


class _CountingTransport:
    """What DirectWriter needs of an asyncio transport; keeps only a byte count."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


class _Conn:
    extensions: tuple[Any, ...] = ()  # none negotiated: DirectWriter frames by hand


class _Proto:
    close_sent = False

    def __init__(self) -> None:
        self.transport = _CountingTransport()
        self.conn = _Conn()


async def _run(count: int, step: Callable[[], Awaitable[Any]]) -> float:
    """µs of process CPU per call of ``step``."""
    started = time.process_time()
    for _ in range(count):
        await step()
    return (time.process_time() - started) / count * 1e6


async def main(args: argparse.Namespace) -> None:
    app = create_app(load_config())
    harness = InProcessApp(app, None)
    await harness._start()
    try:
        client = await harness.client()
        sio = app.sio
        bus = app.bus
        eio_sid = client._eio_sid
        session = sio.eio.session_of(eio_sid)
        assert session is not None
        # The client's poller would answer the writes; it is not needed any more.
        client._open = False
        proto = _Proto()
        counting = proto.transport  # proto.transport is the writer while it keeps frames
        writer = session.writer = DirectWriter(proto, 1 << 30, lambda: None)
        sid = client.sid
        connection = bus.connection(sid)
        assert connection is not None
        data = ["send-message", {"message": "ping", "roomID": ROOM}]
        ctx = bus.context(Origin.SOCKET, connection, wants_ack=True)
        event = bus.events.parse_args("send-message", data[1:], ctx.namespace)

        async def door() -> None:
            await sio._handle_eio_message(eio_sid, PACKET)
            # the ack's write, which a served connection makes at the loop turn's end (these
            # steps never give the loop a turn)
            writer.flush()

        async def dispatch() -> None:
            await bus.dispatch_args(
                "send-message", data[1:], bus.context(Origin.SOCKET, connection, wants_ack=True)
            )

        async def parse() -> None:
            bus.events.parse_args("send-message", data[1:], ctx.namespace)

        async def moderate() -> None:
            await bus.hooks.moderate(event, ctx)

        async def handle() -> None:
            await bus.hooks.handle_event(event, ctx)

        moderation = bus.pm.get_plugin("moderation")
        relay = bus.pm.get_plugin("relay")

        async def moderate_plugin() -> None:
            pending = moderation.plugbus_moderate(event, ctx)  # None when it did not suspend
            if pending is not None:
                await pending

        async def handle_plugin() -> None:
            await relay.plugbus_handle_event(event, ctx)

        async def join_rules() -> None:
            await bus.authorize_join(connection, ROOM)

        async def emit() -> None:
            await bus.emit("receive-message", "ping", room=ROOM)

        async def context() -> None:
            bus.context(Origin.SOCKET, connection, wants_ack=True)

        stages = {
            "door": door,
            "dispatch": dispatch,
            "parse": parse,
            "moderate": moderate,
            "handle": handle,
            "moderate_plugin": moderate_plugin,
            "handle_plugin": handle_plugin,
            "join_rules": join_rules,
            "emit": emit,
            "context": context,
        }
        # check that the door answers as the benchmark expects, once
        before = counting.written
        await door()
        assert counting.written > before, "no ack was written"
        await _run(2000, door)  # warm-up
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.profile):
                await door()
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats(args.sort).print_stats(args.top)
            print(out.getvalue())
            return
        if args.only:
            stages = {name: stages[name] for name in args.only.split(",")}
        best: dict[str, float] = {}
        for _ in range(args.repeat):
            for name, step in stages.items():
                us = await _run(args.events, step)
                best[name] = min(best.get(name, us), us)
        load = os.getloadavg()
        print(
            f"µs of process CPU per event, best of {args.repeat} × {args.events} events "
            f"(load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})"
        )
        for name, us in best.items():
            print(f"{name:16} {us:7.2f}")
    finally:
        await harness._lifespan.aclose()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=20000, help="events per stage and repeat")
    p.add_argument("--repeat", type=int, default=3, help="runs of every stage (best reported)")
    p.add_argument("--profile", type=int, default=0, help="profile N door events instead")
    p.add_argument("--sort", default="tottime", help="cProfile sort key for --profile")
    p.add_argument("--top", type=int, default=40, help="functions listed by --profile")
    p.add_argument("--only", default="", help="comma-separated stages to run (default: all)")
    import uvloop  # what `plugbus serve` runs on

    uvloop.run(main(p.parse_args()))
