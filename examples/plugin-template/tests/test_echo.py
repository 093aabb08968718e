# examples/plugin-template/tests/test_echo.py
"""plugbus-echo on a real plugbus server, through plugbus's test kit.

The ``plugbus_server`` fixture comes with plugbus (a pytest plugin): no conftest needed.
"""

from plugbus.testing import PlugbusServerFactory


async def test_echo_answers_the_sender_and_relays_to_the_others(
    plugbus_server: PlugbusServerFactory,
) -> None:
    # Load the plugin as users will: from its installed entry point, next to the built-ins.
    server = await plugbus_server(entry_points=True, settings={"echo": {"prefix": "echo: "}})
    alice, bob = await server.client(), await server.client()

    assert await alice.call("echo", {"text": "hi"}) == {"ok": True, "data": {"echo": "echo: hi"}}
    assert await bob.wait_for("echoed") == ["echo: hi"]
    assert alice.received("echoed") == []

    refused = await alice.call("echo", {"text": ""})
    assert refused["ok"] is False
    assert refused["error"]["code"] == "invalid_payload"

    # One pipeline, two doors: the same event over REST.
    response = await server.http.post("/events/echo", json={"text": "from REST"})
    assert response.json() == {"ok": True, "data": {"echo": "echo: from REST"}}

    plugins = {p["name"]: p for p in (await server.http.get("/plugins")).json()}
    assert plugins["echo"]["source"] == "entry point"
    # Every hook call is recorded: moderation ran before the handler.
    server.hooks.for_connection(alice.sid).assert_order(
        ["plugbus_moderate", "plugbus_handle_event"]
    )
