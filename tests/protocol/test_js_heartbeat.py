"""The official JavaScript socket.io-client against a server with sub-second pings.

The client's own rule: "if the client does not receive a `ping` packet within
`pingInterval + pingTimeout`, then it SHOULD consider that the connection is closed" — it times
that from the ``pingInterval`` the server advertised, so the advertised value must be the one
the server runs with (socketio/engine.io-protocol README, 4th version, "Heartbeat").
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from eio_raw import FAST, shared_server


@pytest.fixture
def fast_js_server(request: pytest.FixtureRequest) -> Any:
    return shared_server(request, "fast", FAST)


async def test_js_client_stays_connected_with_subsecond_ping_interval(
    fast_js_server: Any, js: Any
) -> None:
    """ "Conversely, if the client does not receive a `ping` packet within `pingInterval +
    pingTimeout`, then it SHOULD consider that the connection is closed." With
    ``ping_interval: 0.3`` the client (upgrading to websocket as it does by default) stays
    connected for 5 s: no "ping timeout" disconnect, no reconnect, and it still gets acks."""
    client = await js(fast_js_server)
    line = await client.connect(reconnection=False)
    assert line["type"] == "connect", line
    await asyncio.sleep(5)
    dropped = [m for m in client.lines if m["type"] in ("disconnect", "reconnect", "connect_error")]
    assert not dropped, dropped
    reply = await client.call("my-rooms")
    assert reply["ok"] is True, reply
