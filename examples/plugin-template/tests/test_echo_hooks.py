# examples/plugin-template/tests/test_echo_hooks.py
"""What the test kit's hook recorder sees of one connection's life with plugbus-echo."""

from plugbus.testing import PlugbusServerFactory


async def test_one_connections_life(plugbus_server: PlugbusServerFactory) -> None:
    server = await plugbus_server(entry_points=True, builtins=[])  # echo alone
    client = await server.client(transports=["websocket"])
    sid = client.sid
    await client.call("echo", {"text": "hi"})
    await client.disconnect()
    await server.hooks.wait_for("plugbus_disconnect", sid=sid)  # the server runs it on its own time

    assert server.hooks.for_connection(sid).names() == [
        "plugbus_authenticate",
        "plugbus_connect",
        "plugbus_connected",
        "plugbus_moderate",
        "plugbus_handle_event",
        "plugbus_disconnect",
    ]
    handled = server.hooks.getcall("plugbus_handle_event")
    assert handled.event.text == "hi"
    assert handled.result == {"echo": "hi"}
    assert server.hooks.impl_order("plugbus_handle_event") == ["echo:plugbus_handle_event"]
