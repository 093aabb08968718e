"""The in-process test kit (``plugbus_app``): the real application through ASGI, no port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from plugbus import Connection, ConnectionDenied, Plugin, hookimpl
from plugbus.testing import ClientRefused, PlugbusAppFactory

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))


class Doorman(Plugin):
    """Lets in only connections whose handshake says ``{"ok": true}``."""

    @hookimpl
    def plugbus_connect(self, connection: Connection) -> None:
        if not (connection.auth or {}).get("ok"):
            raise ConnectionDenied("not on the list", code="not_on_list", details={"who": "you"})


async def test_rest_and_socket_events_reach_the_real_doors_without_a_port(
    plugbus_app: PlugbusAppFactory,
) -> None:
    app = await plugbus_app()
    assert (await app.http.get("/health")).json()["status"] == "ok"
    ann, bob = await app.client(), await app.client()
    assert await ann.wait_for("welcome") == ["Welcome to server"]
    assert (await ann.call("join-room", {"room": "lobby"}))["data"]["joined"] is True
    await bob.call("join-room", {"room": "lobby"})
    ack = await ann.call("send-message", {"message": "hi", "roomID": "lobby"})
    assert ack["ok"] is True and ack["data"]["recipients"] == 2  # the sender hears it too
    assert await bob.wait_for("receive-message") == ["hi"]
    # REST publishing reaches the socket clients too: one pipeline, two doors
    response = await app.http.post("/rooms/lobby/messages", json={"message": "from REST"})
    assert response.status_code == 200
    assert await ann.wait_for("receive-message", count=2) == ["hi", "from REST"]
    refused = await ann.call("send-message", {"roomID": "lobby"})
    assert refused["error"]["code"] == "invalid_payload"
    await ann.emit("no-such-event", {})
    error = (await ann.wait_for("error"))[0]
    assert error["code"] == "unknown_event" and error["details"]["event"] == "no-such-event"

    sid = bob.sid
    await bob.disconnect()
    call = await app.hooks.wait_for("plugbus_disconnect", sid=sid)
    assert call.connection.sid == sid
    assert app.bus.connection(sid) is None


async def test_a_refused_connection_raises_client_refused_with_the_error(
    plugbus_app: PlugbusAppFactory,
) -> None:
    app = await plugbus_app(plugins={"doorman": Doorman}, builtins=[])
    with pytest.raises(ClientRefused) as info:
        await app.client(auth={"ok": False})
    assert info.value.error == {
        "code": "not_on_list",
        "message": "not on the list",
        "details": {"who": "you"},
    }
    client = await app.client(auth={"ok": True})
    assert client.sid in {c.sid for c in app.bus.connections()}


async def test_start_up_and_shutdown_run_through_the_lifespan(
    plugbus_app: PlugbusAppFactory,
) -> None:
    app = await plugbus_app(builtins=["rooms"])
    assert app.hooks.names()[: app.hooks.names().index("plugbus_startup") + 1][-1] == (
        "plugbus_startup"
    )
    await app.stop()
    assert app.hooks.names()[-1] == "plugbus_shutdown"
    await app.stop()  # harmless


async def test_namespaces_and_plain_acks(plugbus_app: PlugbusAppFactory) -> None:
    config: dict[str, Any] = {"server": {"namespaces": ["/", "/chat", "/admin"]}}
    app = await plugbus_app(
        plugins={"two": "fixture_plugins.two_namespaces:TwoNamespaces"}, config=config
    )
    chat = await app.client(namespace="/chat")
    other = await app.client(namespace="/chat")
    assert await chat.wait_for("arrived") == [other.sid]
    ack = await chat.call("chat", "ann", "hi")
    assert ack[0] is None and ack[2] == 1  # plain ack: (null, id, recipients)
    assert await other.wait_for("chat") == [["ann", "hi"]]
    assert chat.received("chat") == []
