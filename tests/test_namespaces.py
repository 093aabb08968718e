"""Socket.IO features for plugins: several namespaces, positional arguments, plain acks, the
CONNECT payload as sent — through a real server, real python-socketio clients, raw
websocket frames and the official JavaScript client.

The plugin under test (tests/fixture_plugins/two_namespaces.py) imports only ``plugbus``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio
import websockets
from conftest import Server, retire, serve_together, start_server
from test_event_contract import assert_valid_asyncapi

from plugbus.core import ConfigError, load_config
from plugbus.core.bus import Bus
from plugbus.core.loader import load_plugins

TESTS = Path(__file__).resolve().parent
PYPATH = {"PYTHONPATH": str(TESTS)}
NAMESPACES = ["/", "/chat", "/admin"]
CONFIG = {
    "server": {"namespaces": NAMESPACES},
    "plugins": {"modules": {"two_ns": "fixture_plugins.two_namespaces:TwoNamespaces"}},
}
ADMIN = {"token": "letmein"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("namespaces"), CONFIG, env=PYPATH)
    yield srv
    retire(srv)


class Recorder:
    """What one python-socketio client received, per namespace."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, tuple[Any, ...]]] = []
        self.changed = asyncio.Event()

    def handler(self, namespace: str) -> Any:
        async def record(event: str, *args: Any) -> None:
            self.events.append((namespace, event, args))
            self.changed.set()

        return record

    def got(self, namespace: str, event: str) -> list[tuple[Any, ...]]:
        return [args for ns, name, args in self.events if ns == namespace and name == event]

    async def wait(
        self, namespace: str, event: str, count: int = 1, timeout: float = 5
    ) -> list[tuple[Any, ...]]:
        async with asyncio.timeout(timeout):
            while len(self.got(namespace, event)) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.got(namespace, event)


@pytest.fixture
async def clients() -> AsyncIterator[Any]:
    made: list[socketio.AsyncClient] = []

    async def _client(
        srv: Server, namespaces: list[str], auth: Any = None, transports: list[str] | None = None
    ) -> tuple[socketio.AsyncClient, Recorder]:
        sio = socketio.AsyncClient(reconnection=False)
        rec = Recorder()
        for ns in namespaces:
            sio.on("*", rec.handler(ns), namespace=ns)
        made.append(sio)
        await sio.connect(
            srv.url,
            namespaces=namespaces,
            auth=auth,
            wait_timeout=5,
            transports=transports or ["websocket"],
        )
        return sio, rec

    yield _client
    for sio in made:
        if sio.connected:
            await sio.disconnect()


async def test_one_client_in_two_namespaces_is_two_connections(server, clients):
    sio, rec = await clients(server, ["/chat", "/admin"], auth=ADMIN)
    chat_sid, admin_sid = sio.get_sid("/chat"), sio.get_sid("/admin")
    assert chat_sid and admin_sid and chat_sid != admin_sid
    chat = await sio.call("hello", namespace="/chat", timeout=5)
    admin = await sio.call("hello", namespace="/admin", timeout=5)
    # Handlers see the namespace through ctx and the connection; plugbus_connected saw it too.
    assert chat["data"] == {
        "namespace": "/chat",
        "sid": chat_sid,
        "connection_namespace": "/chat",
        "connected_in": "/chat",
        "auth": ADMIN,
    }
    assert admin["data"]["namespace"] == "/admin" and admin["data"]["sid"] == admin_sid
    assert admin["data"]["connected_in"] == "/admin"
    # The same event name in two namespaces reaches two different classes.
    chat_status = await sio.call("status", namespace="/chat", timeout=5)
    admin_status = await sio.call("status", {"detail": True}, namespace="/admin", timeout=5)
    assert chat_status["data"]["namespace"] == "/chat"
    assert admin_status["data"]["namespace"] == "/admin"
    assert admin_status["data"]["per_namespace"]["/chat"] >= 1
    assert admin_status["data"]["per_namespace"]["/admin"] >= 1
    # /chat's status takes no fields: the /admin schema did not leak into it.
    refused = await sio.call("status", {"detail": True}, namespace="/chat", timeout=5)
    assert refused["ok"] is False and refused["error"]["code"] == "invalid_payload"
    # No welcome on /chat or /admin: the greeting belongs to the default namespace. The acks
    # above are the sentinel: a connection's CONNECT is handled, plugbus_connected (where
    # greetings are sent) included, before its next packet is read, and one Engine.IO
    # connection's packets arrive in order, so a greeting would have come before them.
    assert rec.got("/chat", "welcome") == [] and rec.got("/admin", "welcome") == []


async def test_events_are_looked_up_in_the_senders_namespace(server, clients):
    sio, _ = await clients(server, ["/", "/chat"])
    on_default = await sio.call("chat", ("ann", "hi"), namespace="/", timeout=5)
    assert on_default["ok"] is False and on_default["error"]["code"] == "unknown_event"
    on_chat_join = await sio.call("join-room", {"room": "x"}, namespace="/chat", timeout=5)
    assert on_chat_join["error"]["code"] == "unknown_event"
    assert on_chat_join["error"]["details"]["namespace"] == "/chat"
    assert "join-room" not in on_chat_join["error"]["details"]["known"]


async def test_connect_hook_sees_the_namespace_and_may_refuse_it(server, clients):
    sio = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    sio.on("connect_error", lambda data=None: errors.append(data), namespace="/admin")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(
            server.url, namespaces=["/admin"], transports=["websocket"], wait_timeout=5
        )
    await sio.disconnect()
    assert errors and errors[0]["data"]["code"] == "admin_only"
    # A client without a token may use /chat (python-socketio's client sends `{}` for no auth,
    # and `{}` is what the plugin sees).
    ok, _ = await clients(server, ["/chat"])
    assert (await ok.call("hello", namespace="/chat", timeout=5))["data"]["auth"] == {}


async def test_positional_arguments_and_a_plain_ack(server, clients):
    alice, _ = await clients(server, ["/chat"])
    _bob, bob_rec = await clients(server, ["/chat"], transports=["polling"])
    ack = await alice.call("chat", ("ann", "hello there"), namespace="/chat", timeout=5)
    # error-first plain ack: null, then the handler's tuple as two more arguments
    assert isinstance(ack, tuple) and len(ack) == 3
    err, message_id, recipients = ack
    assert err is None and isinstance(message_id, str) and recipients >= 1
    # the broadcast carries two arguments too
    assert (await bob_rec.wait("/chat", "chat")) == [("ann", "hello there")]


async def test_positional_errors_name_the_argument(server, clients):
    sio, _ = await clients(server, ["/chat"])
    # a plain-ack refusal is the error alone (one argument)
    missing = await sio.call("chat", "ann", namespace="/chat", timeout=5)
    assert missing["code"] == "invalid_payload"
    assert missing["details"]["errors"][0]["argument"] == 2
    assert "argument 2 (text)" in missing["message"]
    extra = await sio.call("chat", ("ann", "hi", "again"), namespace="/chat", timeout=5)
    assert extra["code"] == "invalid_payload"
    assert [e["argument"] for e in extra["details"]["errors"]] == [3]
    assert "at most 2 arguments (user, text), got 3" in extra["message"]
    wrong_type = await sio.call("chat", ("ann", ["not", "text"]), namespace="/chat", timeout=5)
    assert wrong_type["details"]["errors"][0]["argument"] == 2


async def test_a_single_non_object_payload(server, clients):
    sio, _ = await clients(server, ["/chat"])
    assert await sio.call("shout", "hi", namespace="/chat", timeout=5) == {
        "ok": True,
        "data": {"text": "HI"},
    }
    refused = await sio.call("shout", 5, namespace="/chat", timeout=5)
    assert refused["ok"] is False
    assert refused["error"]["details"]["errors"][0]["argument"] == 1
    # an event without `positional` still takes exactly one object
    one_object = await sio.call("status", ({}, {}), namespace="/chat", timeout=5)
    assert one_object["error"]["code"] == "invalid_payload"
    assert "must carry one payload argument, got 2" in one_object["error"]["message"]


async def test_refusal_without_an_ack_arrives_as_an_error_event_in_its_namespace(server, clients):
    sio, rec = await clients(server, ["/", "/chat"])
    await sio.emit("chat", "ann", namespace="/chat")
    [(error,)] = await rec.wait("/chat", "error")
    assert error["code"] == "invalid_payload" and error["details"]["event"] == "chat"
    assert rec.got("/", "error") == []


async def test_rooms_are_per_namespace(server, clients):
    sio, rec = await clients(server, ["/", "/chat"])
    other, _ = await clients(server, ["/"])
    assert (await sio.call("join-room", {"room": "lobby"}, namespace="/", timeout=5))["ok"]
    assert (await sio.call("enter", "lobby", namespace="/chat", timeout=5))["data"] == {
        "rooms": ["lobby"]
    }
    assert (await other.call("join-room", {"room": "lobby"}, namespace="/", timeout=5))["ok"]
    ack = await other.call(
        "send-message", {"message": "only on /", "roomID": "lobby"}, namespace="/", timeout=5
    )
    # "lobby" of / holds two connections; "lobby" of /chat is another room
    assert ack["data"]["recipients"] == 2
    assert (await rec.wait("/", "receive-message")) == [("only on /",)]
    # A sentinel on the same Engine.IO connection (its / namespace), sent after the message:
    # once it is there, a stray delivery to /chat would have been too.
    async with httpx.AsyncClient(base_url=server.url) as http:
        sent = await http.post(f"/connections/{sio.get_sid('/')}/messages", json={"message": "s"})
        assert sent.status_code == 200, sent.text
    assert (await rec.wait("/", "receive-message", count=2))[-1] == ("s",)
    assert rec.got("/chat", "receive-message") == []
    async with httpx.AsyncClient(base_url=server.url) as http:
        members = (await http.get("/rooms/lobby")).json()
    assert members["count"] == 2  # the REST room routes are the default namespace's


async def test_connected_hook_emits_into_its_namespace(server, clients):
    _first, first_rec = await clients(server, ["/chat"])
    second, _ = await clients(server, ["/chat"])
    arrivals = await first_rec.wait("/chat", "arrived")
    assert (second.get_sid("/chat"),) in arrivals


async def test_rest_takes_a_namespace(server, clients):
    _listener, rec = await clients(server, ["/chat"])
    async with httpx.AsyncClient(base_url=server.url) as http:
        sent = await http.post(
            "/events/chat",
            params={"namespace": "/chat"},
            json={"user": "ops", "text": "from the back end"},
        )
        assert sent.status_code == 200, sent.text
        message_id, recipients = sent.json()["data"]
        assert isinstance(message_id, str) and recipients >= 1
        # without ?namespace= the default namespace is meant, which has no chat event
        default = await http.post("/events/chat", json={"user": "ops", "text": "x"})
        assert default.status_code == 404 and default.json()["code"] == "unknown_event"
        unserved = await http.post("/events/hello", params={"namespace": "/nope"}, json={})
        assert unserved.status_code == 404 and unserved.json()["details"]["namespace"] == "/nope"
        schema = (await http.get("/events/chat/schema", params={"namespace": "/chat"})).json()
    assert schema["namespace"] == "/chat" and schema["ack_style"] == "plain"
    assert [item["title"] for item in schema["arguments"]["prefixItems"]] == ["user", "text"]
    assert (await rec.wait("/chat", "chat")) == [("ops", "from the back end")]


async def test_asyncapi_has_a_channel_per_namespace(server):
    async with httpx.AsyncClient(base_url=server.url) as http:
        doc = (await http.get("/asyncapi.json")).json()
    assert_valid_asyncapi(doc)
    assert {c["address"] for c in doc["channels"].values()} == set(NAMESPACES)
    assert doc["channels"]["socketio"]["address"] == "/"
    chat = doc["channels"]["socketio-chat"]
    assert "socketio-chat.chat" in chat["messages"]
    payload = doc["components"]["messages"]["socketio-chat.chat"]["payload"]
    assert payload["type"] == "array" and payload["x-plugbus-positional"] == ["user", "text"]
    assert payload["minItems"] == 2 and payload["maxItems"] == 2
    ack = doc["components"]["messages"]["socketio-chat.chat.ack"]["payload"]
    assert ack["x-plugbus-ack-style"] == "plain"
    # the same name on two channels: two operations
    assert {"receive.socketio-chat.status", "receive.socketio-admin.status"} <= set(
        doc["operations"]
    )
    assert "receive.send-message" in doc["operations"]  # the default namespace keeps bare names
    assert "send.socketio-admin.error" in doc["operations"]


# -- raw frames: what the wire says, to the byte ----------------------------------------------


async def _raw(server: Server) -> websockets.ClientConnection:
    ws = await websockets.connect(
        f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket"
    )
    opening = await asyncio.wait_for(ws.recv(), 5)
    assert isinstance(opening, str) and opening.startswith("0{")
    return ws


async def _recv_skipping_pings(ws: websockets.ClientConnection) -> str:
    while True:
        frame = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(frame, str)
        if frame == "2":
            await ws.send("3")
            continue
        return frame


async def test_unserved_namespace_gets_the_specs_connect_error(server):
    ws = await _raw(server)
    try:
        await ws.send("40/random,")
        assert await _recv_skipping_pings(ws) == '44/random,{"message":"Invalid namespace"}'
        # the Engine.IO session stays open and may connect to a served namespace
        await ws.send("40")
        reply = await _recv_skipping_pings(ws)
        assert reply.startswith('40{"sid":"')
    finally:
        await ws.close()


@pytest.mark.parametrize(
    ("connect", "expected"),
    [
        ("40/chat,{}", {}),
        ("40/chat,", None),
        ('40/chat,{"token":"t","n":0}', {"token": "t", "n": 0}),
    ],
)
async def test_connect_payload_reaches_the_connection_exactly_as_sent(server, connect, expected):
    ws = await _raw(server)
    try:
        await ws.send(connect)
        assert (await _recv_skipping_pings(ws)).startswith('40/chat,{"sid":"')
        await ws.send('42/chat,7["hello"]')
        reply = await _recv_skipping_pings(ws)
        while not reply.startswith("43/chat,7"):
            reply = await _recv_skipping_pings(ws)  # "arrived" notices of other tests' clients
        [ack] = json.loads(reply[len("43/chat,7") :])
        assert ack["ok"] is True and ack["data"]["auth"] == expected
    finally:
        await ws.close()


async def test_default_namespace_connect_payload_too(server):
    ws = await _raw(server)
    try:
        await ws.send("40{}")
        assert (await _recv_skipping_pings(ws)).startswith('40{"sid":"')
    finally:
        await ws.close()


# -- the official JavaScript client -----------------------------------------------------------


async def test_js_client_multi_argument_event_with_a_plain_ack(server, js, clients):
    listener, rec = await clients(server, ["/chat"])
    client = await js(server)
    connected = await client.connect(namespace="/chat", transports=["websocket"])
    assert connected["type"] == "connect"
    reply = await client.call("chat", "ann", "hi from node")
    assert reply[0] is None and isinstance(reply[1], str) and reply[2] >= 1
    assert ("ann", "hi from node") in await rec.wait("/chat", "chat")
    refused = await client.call("chat", "ann")  # (err) alone
    assert refused["code"] == "invalid_payload" and refused["details"]["errors"][0]["argument"] == 2
    # and the JS client receives a two-argument broadcast as two arguments
    await listener.call("chat", ("bob", "back at you"), namespace="/chat", timeout=5)
    assert ["bob", "back at you"] in await client.wait_event("chat")


async def test_js_client_is_refused_an_unserved_namespace_in_the_specs_words(server, js):
    client = await js(server)
    refused = await client.connect(namespace="/elsewhere")
    assert refused == {"type": "connect_error", "message": "Invalid namespace", "data": None}


# -- configuration and start-up ---------------------------------------------------------------


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_the_old_single_namespace_key_still_works(tmp_path: Path) -> None:
    loaded = load_config(_config(tmp_path, "server:\n  namespace: /chat\n"))
    assert loaded.config.server.namespaces == ["/chat"]
    assert loaded.config.server.default_namespace == "/chat"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("server:\n  namespace: /a\n  namespaces: [/b]\n", "keep only `namespaces`"),
        ("server:\n  namespaces: [/a, /a]\n", "namespace '/a' is listed twice"),
        ("server:\n  namespaces: [chat]\n", "namespace 'chat' must start with '/'"),
        ("server:\n  namespaces: ['/a,b']\n", "no ','"),
        ("server:\n  namespaces: []\n", "at least 1 item"),
    ],
)
def test_bad_namespaces_are_config_errors(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, text))
    assert says in str(info.value)
    assert "server" in str(info.value)


def test_an_event_for_an_unserved_namespace_stops_start_up(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    path = _config(
        tmp_path, "plugins:\n  modules:\n    two_ns: fixture_plugins.two_namespaces:TwoNamespaces\n"
    )
    loaded = load_config(path)
    with pytest.raises(ConfigError) as info:
        Bus(loaded.config, load_plugins(loaded))
    message = str(info.value)
    assert "plugin 'two_ns'" in message and "'/chat'" in message and "server.namespaces" in message
    assert "event 'chat'" in message or "event 'shout'" in message or "event 'enter'" in message


def test_a_positional_name_that_is_no_field_stops_start_up() -> None:
    from typing import ClassVar

    from plugbus import Event
    from plugbus.core import EventRegistry

    class Bad(Event):
        name: ClassVar[str] = "bad"
        positional: ClassVar[tuple[str, ...]] = ("nope",)
        text: str

    with pytest.raises(ValueError, match="positional names 'nope', which is not a field"):
        EventRegistry().register(Bad, owner="mine")


# -- the writing guide's example is a working plugin -------------------------------------------


def _guide_example() -> str:
    text = (TESTS.parent / "docs" / "plugins" / "writing.md").read_text(encoding="utf-8")
    section = text.split("## Namespaces, positional arguments and plain acks", 1)[1].split(
        "\n## ", 1
    )[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_writing_guides_namespace_example_runs(plugbus_server) -> None:
    import sys
    import types

    from plugbus.testing import ClientRefused

    module = types.ModuleType("writing_md_namespaces_example")
    exec(compile(_guide_example(), "writing.md namespaces example", "exec"), module.__dict__)
    sys.modules[module.__name__] = module
    try:
        server = await plugbus_server(
            plugins={"guide": module.__name__},
            builtins=[],
            config={"server": {"namespaces": NAMESPACES}},
        )
        ann = await server.client(namespace="/chat", transports=["websocket"])
        bob = await server.client(namespace="/chat", transports=["websocket"])
        err, message_id = await ann.call("chat", "ann", "hi")
        assert err is None and isinstance(message_id, str)
        assert await bob.wait_for("chat") == [["ann", "hi"]]
        with pytest.raises(ClientRefused) as refused:
            await server.client(namespace="/admin", transports=["websocket"])
        assert refused.value.error["code"] == "admin_only"
        admin = await server.client(
            namespace="/admin", auth={"token": "letmein"}, transports=["websocket"]
        )
        assert await admin.call("status") == {"ok": True, "data": {"chatting": 2}}
    finally:
        sys.modules.pop(module.__name__, None)


async def test_rooms_of_two_namespaces_stay_apart_across_nodes(serve, redis_server, clients):
    """With a shared backend, presence keeps /chat's rooms apart from /'s rooms of the same
    name, and a broadcast to /chat from one node reaches /chat on the other."""
    config = {
        **CONFIG,
        "server": {**CONFIG["server"], "backend": redis_server.url, "presence_ttl": 3},
    }
    a, b = serve_together(serve, config, config, env=PYPATH)
    on_a, rec_a = await clients(a, ["/", "/chat"])
    on_b, _rec_b = await clients(b, ["/chat"])
    assert (await on_a.call("join-room", {"room": "lobby"}, namespace="/", timeout=5))["ok"]
    assert (await on_a.call("enter", "lobby", namespace="/chat", timeout=5))["ok"]
    assert (await on_b.call("enter", "lobby", namespace="/chat", timeout=5))["ok"]
    async with httpx.AsyncClient(base_url=b.url) as http:
        members = (await http.get("/rooms/lobby")).json()  # presence, read from Redis on b
    assert [m["sid"] for m in members["members"]] == [on_a.get_sid("/")]
    await on_b.call("chat", ("bea", "across nodes"), namespace="/chat", timeout=5)
    assert ("bea", "across nodes") in await rec_a.wait("/chat", "chat")
    assert rec_a.got("/", "chat") == []
