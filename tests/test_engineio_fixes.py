"""The seam that fixes python-engineio's per-packet encode cache for binary broadcasts."""

from __future__ import annotations

import asyncio

from engineio import packet as eio_packet
from engineio import payload as eio_payload

from plugbus.api import engineio_fixes


def test_one_binary_packet_encodes_for_websocket_and_polling_alike():
    engineio_fixes.apply()
    pkt = eio_packet.Packet(eio_packet.MESSAGE, b"\x00\x01binary")
    assert pkt.encode(b64=False) == b"\x00\x01binary"  # websocket first fills the cache...
    assert pkt.encode(b64=True) == "bAAFiaW5hcnk="  # ...and polling still gets base64 text
    assert eio_payload.Payload(packets=[pkt]).encode() == "bAAFiaW5hcnk="


def test_text_packets_are_untouched():
    engineio_fixes.apply()
    pkt = eio_packet.Packet(eio_packet.MESSAGE, '2["x"]')
    assert pkt.encode() == pkt.encode(b64=True) == '42["x"]'


async def test_a_binary_broadcast_reaches_websocket_and_polling_members(default_server, connect):
    ws = await connect(default_server, transports=["websocket"], wait_welcome=True)
    poll = await connect(default_server, transports=["polling"], wait_welcome=True)
    for client in (ws, poll):
        await client.call("join-room", {"room": "mixed-binary"})
    ack = await ws.call("send-message", {"message": b"\xff\x00bytes", "roomID": "mixed-binary"})
    assert ack["data"]["recipients"] == 2
    assert await poll.wait_for("receive-message") == [b"\xff\x00bytes"]
    assert await ws.wait_for("receive-message") == [b"\xff\x00bytes"]
    await asyncio.sleep(0.1)
    assert poll.sio.connected
