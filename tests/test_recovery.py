"""Connection state recovery with the official socket.io-client: real servers, real clients,
connections cut at the TCP level (tests/tcp_proxy.py) while messages keep flowing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import restart_server
from jsclient import JsClient
from tcp_proxy import TcpProxy

PROBE = {"probe": "fixture_plugins.recovery_probe"}
PYPATH = {"PYTHONPATH": str(Path(__file__).resolve().parent)}
#: Node's behaviour: every client is offered recovery (the JS client needs no option).
RECOVER_ALL = {"server": {"recovery": {"clients": "all"}}, "plugins": {"modules": PROBE}}


@pytest.fixture
async def proxy() -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await proxy(server)`` -> a :class:`TcpProxy` in front of it."""
    proxies: list[TcpProxy] = []

    async def _start(server: Any) -> TcpProxy:
        p = await TcpProxy.start(server.port)
        proxies.append(p)
        return p

    yield _start
    for p in proxies:
        await p.close()


@pytest.fixture
async def js_at() -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await js_at(url)`` -> an official socket.io-client driven from the test."""
    clients: list[JsClient] = []

    async def _start(url: str) -> JsClient:
        client = await JsClient.start(url)
        clients.append(client)
        return client

    yield _start
    for client in clients:
        await client.close()


def connects(client: JsClient) -> list[dict[str, Any]]:
    return [line for line in client.lines if line["type"] == "connect"]


def is_message(line: dict[str, Any]) -> bool:
    return line["type"] == "event" and line["event"] == "receive-message"


async def publish(urls: list[str], room: str, texts: list[str], rate: float = 50.0) -> None:
    """POST each text to ``room`` over REST (round-robin over ``urls``), ``rate`` per second,
    each acknowledged before the next."""
    async with httpx.AsyncClient(timeout=5) as http:
        for i, text in enumerate(texts):
            url = urls[i % len(urls)]
            resp = await http.post(f"{url}/rooms/{room}/messages", json={"message": text})
            assert resp.status_code == 200, resp.text
            await asyncio.sleep(1 / rate)


def assert_exactly_once_in_order(client: JsClient, texts: list[str]) -> None:
    got = client.events("receive-message")
    bodies = [args[0] for args in got]
    assert bodies == texts, f"missing {sorted(set(texts) - set(bodies))}; got {bodies}"
    offsets = [args[-1] for args in got]
    keys = [tuple(int(p) for p in o.split("-")) for o in offsets]
    assert keys == sorted(keys) and len(set(keys)) == len(keys), offsets


async def probe(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url) as http:
        return (await http.get("/probe")).json()  # type: ignore[no-any-return]


async def outage(
    client: JsClient, gate: TcpProxy, seconds: float, switch_to: int | None = None
) -> None:
    """Cut the client off, keep it off for ``seconds`` (reconnection attempts fail), then let
    it back — to ``switch_to`` (another node's port) when given."""
    gate.accepting = False
    assert gate.cut() >= 1
    await client.wait(lambda m: m["type"] == "disconnect")
    await asyncio.sleep(seconds)
    if switch_to is not None:
        gate.upstream = switch_to
    gate.accepting = True


async def run_outage_scenario(
    client: JsClient,
    gate: TcpProxy,
    publish_to: list[str],
    *,
    count: int = 80,
    off_s: float = 0.6,
    switch_to: int | None = None,
    during: Callable[[], Any] | None = None,
) -> tuple[list[str], int]:
    """Publish ``count`` numbered messages while the client is cut off once; wait for the
    reconnection and for every message; return (the texts, how many arrived before the cut)."""
    texts = [f"m{i:03d}" for i in range(count)]
    publisher = asyncio.create_task(publish(publish_to, "r", texts))
    await client.wait(is_message, count=10)
    await outage(client, gate, off_s, switch_to)
    before = len(client.events("receive-message"))
    if during is not None:
        await during()
    await client.wait(lambda m: m["type"] == "connect", count=2, timeout=15)
    await publisher
    await client.wait(is_message, count=count, timeout=10)
    await asyncio.sleep(0.3)  # nothing more may follow
    return texts, before


async def test_a_dropped_transport_recovers_sid_rooms_data_and_every_missed_message(
    serve, proxy, js_at
):
    server = serve(RECOVER_ALL, env=PYPATH)
    gate = await proxy(server)
    client = await js_at(gate.url)
    first = await client.connect(transports=["websocket"])  # the seed's io(url): no options
    assert first["type"] == "connect" and first["recovered"] is False
    assert (await client.call("join-room", {"room": "r"}))["ok"] is True
    assert (await client.call("remember", {"value": "kept"}))["ok"] is True

    texts, before = await run_outage_scenario(client, gate, [server.url])

    again = connects(client)[1]
    assert again["recovered"] is True
    assert again["sid"] == first["sid"]
    assert 10 <= before < len(texts)  # messages were missed, and were replayed
    assert_exactly_once_in_order(client, texts)
    assert (await client.call("my-rooms"))["data"]["rooms"] == ["r"]
    probed = await client.call("probe")
    assert probed["data"] == {"data": {"probe": "kept"}, "recovered": True}
    seen = await probe(server.url)
    [drop] = seen["disconnects"]
    assert drop["sid"] == first["sid"] and drop["suspended"] is True
    [recovery] = seen["recoveries"]
    assert recovery["sid"] == first["sid"] and recovery["rooms"] == ["r"]
    assert recovery["replayed"] >= 1 and recovery["moved"] is False
    assert seen["connected"] == [first["sid"]]  # plugbus_connected ran once, not on recovery


async def test_events_a_plugin_keeps_out_of_history_are_not_replayed(serve, proxy, js_at):
    server = serve(RECOVER_ALL, env=PYPATH)
    gate = await proxy(server)
    client = await js_at(gate.url)
    await client.connect(transports=["websocket"])
    await client.call("join-room", {"room": "r"})
    # the three are published while the client is cut off (not after the gate reopens, when a
    # quick reconnect could receive the ephemeral one live, as it should)
    gate.accepting = False
    assert gate.cut() >= 1
    await client.wait(lambda m: m["type"] == "disconnect")
    async with httpx.AsyncClient(base_url=server.url) as http:
        for text in ("kept-1", "eph:typing", "kept-2"):
            assert (await http.post("/rooms/r/messages", json={"message": text})).status_code == 200
        page = (await http.get("/rooms/r/messages")).json()
    gate.accepting = True
    await client.wait(lambda m: m["type"] == "connect", count=2, timeout=15)
    await client.wait(is_message, count=2)
    await asyncio.sleep(0.3)
    assert connects(client)[1]["recovered"] is True
    assert [a[0] for a in client.events("receive-message")] == ["kept-1", "kept-2"]
    assert [m["args"] for m in page["messages"]] == [["kept-1"], ["kept-2"]]


async def test_the_shipped_config_offers_recovery_to_clients_that_ask(serve, proxy, js_at):
    server = serve({"plugins": {"modules": PROBE}}, env=PYPATH)  # opted-in, as shipped
    gate = await proxy(server)
    asking = await js_at(gate.url)
    plain = await js_at(gate.url)
    await asking.connect(transports=["websocket"], auth={"recovery": True})
    await plain.connect(transports=["websocket"])
    for client in (asking, plain):
        await client.call("join-room", {"room": "r"})
    async with httpx.AsyncClient(base_url=server.url) as http:
        await http.post("/rooms/r/messages", json={"message": "hello"})
    [[_text, offset]] = await asking.wait_event("receive-message")
    assert offset.count("-") == 1
    assert await plain.wait_event("receive-message") == [["hello"]]  # no offset argument
    gate.cut()
    await asking.wait(lambda m: m["type"] == "connect", count=2, timeout=15)
    await plain.wait(lambda m: m["type"] == "connect", count=2, timeout=15)
    assert connects(asking)[1]["recovered"] is True
    assert not connects(plain)[1].get("recovered")  # undefined: it was never offered recovery
    assert connects(plain)[1]["sid"] != connects(plain)[0]["sid"]


async def test_python_socketio_clients_see_no_extra_argument_in_the_shipped_config(
    default_server, connect
):
    client = await connect(default_server)  # records (event, data): a 2nd argument would fail
    await client.call("join-room", {"room": "py"})
    await client.call("send-message", {"message": "hi", "roomID": "py"})
    assert await client.wait_for("receive-message") == ["hi"]


async def test_a_client_back_after_the_window_gets_a_fresh_session_and_its_notices(
    serve, proxy, js_at, connect
):
    server = serve(
        {
            "server": {"recovery": {"clients": "all", "max_disconnection_s": 1}},
            "plugins": {"modules": PROBE, "settings": {"rooms": {"notify_membership": True}}},
        },
        env=PYPATH,
    )
    gate = await proxy(server)
    client = await js_at(gate.url)
    first = await client.connect(transports=["websocket"])
    await client.call("join-room", {"room": "r"})
    observer = await connect(server, auth={"recovery": False})
    await observer.call("join-room", {"room": "r"})
    gate.accepting = False
    gate.cut()
    await client.wait(lambda m: m["type"] == "disconnect")
    await asyncio.sleep(0.4)
    assert observer.received("user-left") == []  # still within the window: no notice yet
    left = await observer.wait_for("user-left", timeout=3)  # the window is over
    assert left[0]["sid"] == first["sid"] and left[0]["room"] == "r"
    seen = await probe(server.url)
    assert seen["expired"] == [{"sid": first["sid"], "rooms": ["r"]}]
    gate.accepting = True
    await client.wait(lambda m: m["type"] == "connect", count=2, timeout=15)
    again = connects(client)
    assert len(again) == 2 and again[1]["recovered"] is False
    assert again[1]["sid"] != first["sid"]


async def test_a_recovered_session_causes_no_left_and_joined_notices(serve, proxy, js_at, connect):
    server = serve(
        {
            "server": {"recovery": {"clients": "all"}},
            "plugins": {"settings": {"rooms": {"notify_membership": True}}},
        }
    )
    gate = await proxy(server)
    client = await js_at(gate.url)
    await client.connect(transports=["websocket"])
    observer = await connect(server, auth={"recovery": False})
    await observer.call("join-room", {"room": "r"})
    await client.call("join-room", {"room": "r"})
    await observer.wait_for("user-joined")
    await outage(client, gate, 0.3)
    await client.wait(lambda m: m["type"] == "connect", count=2, timeout=15)
    assert connects(client)[1]["recovered"] is True
    await asyncio.sleep(0.5)
    assert observer.received("user-left") == []
    assert len(observer.received("user-joined")) == 1


def cluster(redis: Any, **recovery: Any) -> dict[str, Any]:
    return {
        "server": {
            "backend": redis.url,
            "presence_ttl": 3,
            "recovery": {"clients": "all", **recovery},
        },
        "plugins": {"modules": PROBE},
    }


async def test_a_client_recovers_on_the_other_node_with_nothing_lost(
    serve, redis_server, proxy, js_at
):
    a = serve(cluster(redis_server), env=PYPATH)
    b = serve(cluster(redis_server), env=PYPATH)
    gate = await proxy(a)
    client = await js_at(gate.url)
    first = await client.connect(transports=["websocket"])
    await client.call("join-room", {"room": "r"})
    await client.call("remember", {"value": "from A"})

    # published on both nodes; the client comes back through the "load balancer" to B
    texts, before = await run_outage_scenario(client, gate, [a.url, b.url], switch_to=b.port)

    again = connects(client)[1]
    assert again["recovered"] is True and again["sid"] == first["sid"]
    assert 10 <= before < len(texts)
    assert_exactly_once_in_order(client, texts)
    [recovery] = (await probe(b.url))["recoveries"]
    assert recovery["moved"] is True and recovery["rooms"] == ["r"]
    assert recovery["data"] == {"probe": "from A"} and recovery["replayed"] >= 1
    assert (await probe(a.url))["recoveries"] == []
    # B holds it now: a message published on A reaches it through the cluster
    async with httpx.AsyncClient(base_url=a.url) as http:
        await http.post("/rooms/r/messages", json={"message": "after"})
    await client.wait(is_message, count=len(texts) + 1)


async def test_a_client_recovers_after_its_node_restarts(serve, redis_server, proxy, js_at):
    a = serve(cluster(redis_server), env=PYPATH)
    b = serve(cluster(redis_server), env=PYPATH)
    gate = await proxy(a)
    client = await js_at(gate.url)
    first = await client.connect(transports=["websocket"])
    await client.call("join-room", {"room": "r"})
    texts = [f"m{i:03d}" for i in range(120)]
    publisher = asyncio.create_task(publish([b.url], "r", texts))
    await client.wait(is_message, count=10)
    # A stops while the client is connected (its session goes to Redis as A shuts down) and
    # comes back on the same port; the client keeps trying through the proxy meanwhile
    await asyncio.to_thread(restart_server, a, PYPATH)
    before = len(client.events("receive-message"))
    await client.wait(lambda m: m["type"] == "connect", count=2, timeout=20)
    await publisher
    await client.wait(is_message, count=len(texts), timeout=10)
    await asyncio.sleep(0.3)

    [drop] = [m for m in client.lines if m["type"] == "disconnect"]
    assert drop["reason"] == "transport close"  # not "io server disconnect": it reconnects
    again = connects(client)[1]
    assert again["recovered"] is True and again["sid"] == first["sid"]
    assert before < len(texts)
    assert_exactly_once_in_order(client, texts)
    [recovery] = (await probe(a.url))["recoveries"]  # the new process on A's port
    assert recovery["sid"] == first["sid"] and recovery["replayed"] >= 1


async def test_a_client_whose_missed_messages_were_trimmed_gets_a_fresh_session(
    serve, proxy, js_at
):
    server = serve(
        {
            "server": {
                "recovery": {"clients": "all"},
                "history": {"rooms": {"r": {"max_messages": 5}}},
            },
            "plugins": {"modules": PROBE},
        },
        env=PYPATH,
    )
    gate = await proxy(server)
    client = await js_at(gate.url)
    first = await client.connect(transports=["websocket"])
    await client.call("join-room", {"room": "r"})
    gate.accepting = False
    gate.cut()
    await client.wait(lambda m: m["type"] == "disconnect")
    await publish([server.url], "r", [f"m{i}" for i in range(8)], rate=200)  # 8 > 5 kept
    gate.accepting = True
    await client.wait(lambda m: m["type"] == "connect", count=2, timeout=15)
    again = connects(client)[1]
    # rather than a recovery with a hole in it: a fresh session the client knows to resync
    assert again["recovered"] is False and again["sid"] != first["sid"]
    assert client.events("receive-message") == []
    seen = await probe(server.url)
    assert seen["recoveries"] == []
    # the old session ends now (its "left" notices are due), not at the end of its window
    assert seen["expired"] == [{"sid": first["sid"], "rooms": ["r"]}]
