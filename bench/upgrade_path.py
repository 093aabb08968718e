"""A websocket upgrade's cost below the application, in process (issue #16, item 3).

    .venv/bin/python bench/upgrade_path.py [--connections 2000] [--pairs 4]

Accepts ``--connections`` sockets (one end of a ``socketpair`` each) on uvloop with uvicorn's
protocol classes as ``plugbus serve`` gives them, hands each the upgrade request
``bench/loadgen.py`` sends, and prints the thread CPU time per connection in µs from
``connect_accepted_socket`` to the end of that first ``data_received``: the HTTP protocol, the
websocket protocol, the handshake's parse, the ASGI scope and the connection's task (an
application that only accepts). Two classes alternate, ``--pairs`` times: plugbus's bounded
httptools protocol (``before``: uvicorn's HTTP request handling, then plugbus's reader parses
the head uvicorn writes out again) and the upgrade fast path built on it
(plugbus.api.wire.upgrade). Nothing is written to the peers: the 101 is sent by the task, which
runs after the timing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvicorn
import uvloop
from uvicorn.server import ServerState

from plugbus.api.wire.http_limits import limited_http_protocol
from plugbus.api.wire.reader import ReaderProtocol
from plugbus.api.wire.upgrade import UPGRADES, upgrade_protocol

#: what bench/loadgen.py's raw client sends
REQUEST = (
    b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "websocket.accept"})


async def _run(cls: type, n: int) -> float:
    loop = asyncio.get_running_loop()
    config = uvicorn.Config(
        app=_app, ws=ReaderProtocol, ws_ping_interval=None, log_config=None, lifespan="off"
    )
    config.load()
    state = ServerState()
    total = 0.0
    held = []
    for i in range(n):
        ours, peer = socket.socketpair()
        start = time.thread_time()
        transport, proto = await loop.connect_accepted_socket(
            lambda: cls(config=config, server_state=state, app_state={}), ours
        )
        proto.data_received(REQUEST)
        total += time.thread_time() - start
        held.append((transport, peer))
        if i % 50 == 49:
            await asyncio.sleep(0)  # the tasks run (and answer) between batches, untimed
    await asyncio.sleep(0.1)
    for transport, peer in held:
        transport.abort()
        peer.close()
    await asyncio.sleep(0.1)
    return total / n * 1e6


async def _main(args: argparse.Namespace) -> None:
    base = limited_http_protocol(16384, 100)  # server.limits' defaults
    fast = upgrade_protocol(base, 16384, 100)
    await _run(fast, 100)  # warm-up
    for _ in range(args.pairs):
        before = await _run(base, args.connections)
        taken = UPGRADES["taken"]
        after = await _run(fast, args.connections)
        assert UPGRADES["taken"] == taken + args.connections, "the fast path was not taken"
        print(f"before {before:.1f} µs   after {after:.1f} µs per connection", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--pairs", type=int, default=4)
    args = p.parse_args()
    gc.freeze()  # as plugbus serve does after start-up
    uvloop.run(_main(args))


if __name__ == "__main__":
    main()
