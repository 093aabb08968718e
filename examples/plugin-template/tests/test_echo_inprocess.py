# examples/plugin-template/tests/test_echo_inprocess.py
"""plugbus-echo in-process: the test kit's plugbus_app, through ASGI, no port."""

from plugbus.testing import PlugbusAppFactory


async def test_echo_in_process(plugbus_app: PlugbusAppFactory) -> None:
    app = await plugbus_app(plugins={"echo": "plugbus_echo:EchoPlugin"}, builtins=[])
    alice, bob = await app.client(), await app.client()
    assert await alice.call("echo", {"text": "hi"}) == {"ok": True, "data": {"echo": "hi"}}
    assert await bob.wait_for("echoed") == ["hi"]
    assert (await app.http.post("/events/echo", json={"text": "x"})).status_code == 200
