"""The seed tutorial's chat, exactly as a client written from it behaves, over both transports."""

from __future__ import annotations

import re

import httpx
import pytest
from conftest import settle

TRANSPORTS = [["websocket"], ["polling"], ["polling", "websocket"]]


@pytest.mark.parametrize("transports", TRANSPORTS, ids=lambda t: "+".join(t))
async def test_welcome_arrives_on_connect(default_server, connect, transports):
    client = await connect(default_server, transports=transports)
    assert await client.wait_for("welcome") == ["Welcome to server"]


@pytest.mark.parametrize("transports", TRANSPORTS, ids=lambda t: "+".join(t))
async def test_room_message_reaches_members_and_not_others(default_server, connect, transports):
    alice = await connect(default_server, transports=transports, wait_welcome=True)
    bob = await connect(default_server, transports=transports, wait_welcome=True)
    outsider = await connect(default_server, transports=transports, wait_welcome=True)
    room = f"seed-{'-'.join(transports)}"
    # The seed client emits without acks and without waiting: join, then send.
    await alice.emit("join-room", {"room": room})
    await bob.emit("join-room", {"room": room})
    await outsider.emit("join-room", {"room": room + "-elsewhere"})
    # One connection's events are handled in order: once a later call is answered, its join
    # has been handled (the seed client itself just sends on, and the server keeps up).
    for client in (alice, bob, outsider):
        await client.call("my-rooms")
    await bob.emit("send-message", {"message": "hello from bob", "roomID": room})
    assert await alice.wait_for("receive-message") == ["hello from bob"]
    # io.to(room) includes the sender when it is in the room, as in the seed.
    assert await bob.wait_for("receive-message") == ["hello from bob"]
    await settle(default_server, outsider)
    assert outsider.received("receive-message") == []
    assert all(name != "error" for name, _ in alice.events + bob.events)


async def test_events_of_one_connection_are_handled_in_order(default_server, connect):
    """join-room then send-message sent back to back: the message must find the room joined."""
    client = await connect(default_server, wait_welcome=True)
    for i in range(20):
        await client.emit("join-room", {"room": f"order-{i}"})
        await client.emit("send-message", {"message": f"m{i}", "roomID": f"order-{i}"})
    got = await client.wait_for("receive-message", count=20)
    assert got == [f"m{i}" for i in range(20)]


async def test_join_room_ack_lists_rooms_and_leave_room_leaves(default_server, connect):
    client = await connect(default_server, wait_welcome=True)
    assert await client.call("join-room", {"room": "a"}) == {
        "ok": True,
        "data": {"room": "a", "joined": True, "rooms": ["a"]},
    }
    ack = await client.call("join-room", {"room": "b"})
    assert sorted(ack["data"]["rooms"]) == ["a", "b"]
    assert (await client.call("leave-room", {"room": "a"}))["data"]["rooms"] == ["b"]
    await client.call("send-message", {"message": "to a", "roomID": "a"})
    await client.call("send-message", {"message": "to b", "roomID": "b"})
    assert await client.wait_for("receive-message") == ["to b"]
    await settle(default_server, client)
    assert client.received("receive-message") == ["to b"]


async def test_send_message_ack_reports_recipients(default_server, connect):
    a = await connect(default_server, wait_welcome=True)
    b = await connect(default_server, wait_welcome=True)
    await a.call("join-room", {"room": "count"})
    await b.call("join-room", {"room": "count"})
    ack = await a.call("send-message", {"message": "hi", "roomID": "count"})
    assert ack == {"ok": True, "data": {"id": ack["data"]["id"], "room": "count", "recipients": 2}}
    assert re.fullmatch(r"[0-9a-f]{32}", ack["data"]["id"])


async def test_rest_post_reaches_room_members_only(default_server, connect):
    member = await connect(default_server, wait_welcome=True)
    other = await connect(default_server, transports=["polling"], wait_welcome=True)
    await member.call("join-room", {"room": "news"})
    await other.call("join-room", {"room": "sports"})
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        resp = await http.post("/rooms/news/messages", json={"message": "extra!"})
    assert resp.status_code == 200
    body = resp.json()
    assert body == {"id": body["id"], "room": "news", "recipients": 1}
    assert re.fullmatch(r"[0-9a-f]{32}", body["id"])
    assert await member.wait_for("receive-message") == ["extra!"]
    await settle(default_server, other)
    assert other.received("receive-message") == []


async def test_room_named_like_another_connection_is_refused(default_server, connect):
    a = await connect(default_server, wait_welcome=True)
    b = await connect(default_server, wait_welcome=True)
    ack = await a.call("join-room", {"room": b.sio.get_sid()})
    assert ack["ok"] is False
    assert ack["error"]["code"] == "not_allowed"
    assert "id of a connection" in ack["error"]["message"]
    # b is unaffected and a keeps working.
    assert (await a.call("join-room", {"room": "fine"}))["ok"] is True
    assert b.sio.connected
