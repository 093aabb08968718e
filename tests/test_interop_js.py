"""The official JavaScript socket.io-client (npm, 4.x) against a real plugbus server.

Each flow is the one a client written from the seed tutorial performs, with its exact event
names and payloads, over every transport.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from conftest import restart_server

TRANSPORTS = {
    "websocket": {"transports": ["websocket"]},
    "polling": {"transports": ["polling"]},
    "polling-upgrade": {"transports": ["polling", "websocket"]},
}


@pytest.mark.parametrize("opts", TRANSPORTS.values(), ids=TRANSPORTS.keys())
async def test_seed_flow_welcome_join_send_receive(default_server, js, opts):
    alice, bob, outsider = (
        await js(default_server),
        await js(default_server),
        await js(default_server),
    )
    sids = []
    for client in (alice, bob, outsider):
        connected = await client.connect(**opts)
        assert connected["type"] == "connect"
        sids.append(connected["sid"])
        assert await client.wait_event("welcome") == [["Welcome to server"]]
    room = "js-" + "-".join(opts["transports"])
    await alice.emit("join-room", {"room": room})
    await bob.emit("join-room", {"room": room})
    await outsider.emit("join-room", {"room": room + "-other"})
    # One connection's events are handled in order: a later call answered means joined.
    for client in (alice, bob, outsider):
        await client.call("my-rooms")
    await alice.emit("send-message", {"message": "hello from alice", "roomID": room})
    assert await bob.wait_event("receive-message") == [["hello from alice"]]
    assert await alice.wait_event("receive-message") == [["hello from alice"]]
    # A sentinel sent to the outsider after alice's message was delivered: once it is there,
    # alice's message would have been too (one connection's packets keep their order).
    await alice.call("my-rooms")  # alice's send was handled
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        sent = await http.post(f"/connections/{sids[2]}/messages", json={"message": "sentinel"})
        assert sent.status_code == 200, sent.text
    assert await outsider.wait_event("receive-message") == [["sentinel"]]


async def test_polling_upgrades_to_websocket(default_server, js):
    client = await js(default_server)
    await client.connect(transports=["polling", "websocket"])
    [opened] = await client.wait(lambda m: m["type"] == "open")
    assert opened["transport"] == "polling"
    await client.wait(lambda m: m["type"] == "upgrade" and m["name"] == "websocket")
    await client.send(cmd="transport")
    await client.wait(lambda m: m["type"] == "transport" and m["name"] == "websocket")
    ack = await client.call("join-room", {"room": "upgraded"})
    assert ack["ok"] is True


async def test_acks_carry_results_and_errors(plugbus_server, js):
    server = await plugbus_server(settings={"moderation": {"max_length": 10}})
    client = await js(server)
    await client.connect()
    ok = await client.call("join-room", {"room": "acks"})
    assert ok["ok"] is True and ok["data"]["room"] == "acks"
    invalid = await client.call("send-message", {"message": "hi"})
    assert invalid["ok"] is False
    assert invalid["error"]["code"] == "invalid_payload"
    assert invalid["error"]["details"]["errors"][0]["loc"] == "roomID"
    unknown = await client.call("no-such-event", {})
    assert unknown["error"]["code"] == "unknown_event"
    moderated = await client.call(
        "send-message", {"message": "far too long for ten", "roomID": "acks"}
    )
    assert moderated["error"]["code"] == "message_rejected"
    assert "limit is 10" in moderated["error"]["message"]
    # Without an ack the refusal arrives as an `error` event.
    await client.emit("send-message", "not an object")
    [[error]] = await client.wait_event("error")
    assert error["code"] == "invalid_payload"


async def test_rest_post_arrives_at_the_js_client(default_server, js):
    client = await js(default_server)
    await client.connect()
    await client.call("join-room", {"room": "from-rest"})
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        resp = await http.post("/rooms/from-rest/messages", json={"message": "posted"})
    assert resp.status_code == 200
    assert await client.wait_event("receive-message") == [["posted"]]


@pytest.mark.parametrize(
    "opts", [TRANSPORTS["websocket"], TRANSPORTS["polling"]], ids=["websocket", "polling"]
)
async def test_reconnects_after_server_restart(serve, js, opts):
    server = serve()
    client = await js(server)
    first = await client.connect(**opts)
    await client.wait_event("welcome")
    await asyncio.to_thread(restart_server, server)
    await client.wait(lambda m: m["type"] == "disconnect")
    await client.wait(lambda m: m["type"] == "reconnect", timeout=20)
    second = (await client.wait(lambda m: m["type"] == "connect", count=2))[-1]
    assert second["sid"] != first["sid"]
    # Greeted again by the new server process, and able to chat.
    await client.wait_event("welcome", count=2)
    await client.call("join-room", {"room": "after-restart"})
    ack = await client.call("send-message", {"message": "back", "roomID": "after-restart"})
    assert ack["ok"] is True
    assert await client.wait_event("receive-message") == [["back"]]


async def test_connect_to_an_unserved_namespace_is_refused(default_server, js):
    client = await js(default_server)
    refused = await client.connect(namespace="/elsewhere")
    assert refused["type"] == "connect_error"
    # the Socket.IO v5 reference server's words: {"message": "Invalid namespace"}, no data
    assert refused["message"] == "Invalid namespace"
    assert refused["data"] is None
    # The refusal touched nobody else: the same server still serves its namespace.
    other = await js(default_server)
    assert (await other.connect())["type"] == "connect"


async def test_binary_payloads_buffer_in_buffer_out(default_server, js, connect):
    sender, receiver = await js(default_server), await js(default_server)
    await sender.connect()
    await receiver.connect(transports=["polling"])
    py = await connect(default_server, wait_welcome=True)
    for client in (sender, receiver):
        await client.call("join-room", {"room": "binary"})
    await py.call("join-room", {"room": "binary"})
    blob = bytes(range(256)) * 4
    ack = await sender.call("send-message", {"message": blob, "roomID": "binary"})
    assert ack["ok"] is True and ack["data"]["recipients"] == 3
    [[got]] = await receiver.wait_event("receive-message")
    assert got == blob  # arrived as a Buffer (binary attachment), not as text
    assert await py.wait_for("receive-message") == [blob]


async def test_binary_payloads_can_be_switched_off(plugbus_server, js):
    server = await plugbus_server(settings={"relay": {"binary": False}})
    client = await js(server)
    await client.connect()
    ack = await client.call("send-message", {"message": b"\x00\x01", "roomID": "r"})
    assert ack["error"]["code"] == "invalid_payload"
    assert "binary messages are switched off" in ack["error"]["message"]
