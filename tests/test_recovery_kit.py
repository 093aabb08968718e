"""Recovery in plugin tests: the test kit's recovering client, ``drop`` and ``reconnect``, used
as a plugin author would (the ``plugbus_server`` fixture, a plugin class of this module)."""

from __future__ import annotations

from typing import Any

from plugbus import Bus, Connection, Plugin, Recovery, hookimpl

SEEN: list[dict[str, Any]] = []


class Tracker(Plugin):
    """Keeps a counter in ``connection.data`` and records each recovery."""

    @hookimpl
    def plugbus_connect(self, connection: Connection) -> None:
        if not connection.recovered:
            connection.data["visits"] = 0
        connection.data["visits"] += 1

    @hookimpl
    def plugbus_session_recovered(self, connection: Connection, recovery: Recovery, bus: Bus):
        SEEN.append({"sid": connection.sid, "replayed": recovery.replayed, "data": connection.data})


async def test_a_plugin_sees_its_session_recovered_with_its_data(plugbus_server):
    server = await plugbus_server(plugins={"tracker": f"{__name__}:Tracker"})
    alice = await server.client(recovery=True)
    bob = await server.client()  # not offered recovery: sees plain events
    assert alice.pid is not None and bob.pid is None
    for c in (alice, bob):
        await c.call("join-room", {"room": "kit"})
    await bob.call("send-message", {"message": "one", "roomID": "kit"})
    assert await alice.wait_for("receive-message") == ["one"]  # the offset taken off
    assert alice.offset is not None

    sid = alice.sid
    await server.drop(alice)
    await bob.call("send-message", {"message": "two", "roomID": "kit"})
    await bob.call("send-message", {"message": "three", "roomID": "kit"})
    back = await server.reconnect(alice)

    assert back.recovered and back.sid == sid
    assert await back.wait_for("receive-message", 2) == ["two", "three"]
    assert back.received("welcome") == []  # plugbus_connected did not run again
    assert [{"sid": sid, "replayed": 2, "data": {"visits": 2}}] == SEEN
    server.hooks.for_connection(sid).assert_order(
        [
            "plugbus_disconnect",
            "plugbus_authenticate",
            "plugbus_connect",
            "plugbus_session_recovered",
        ]
    )


async def test_a_session_is_not_handed_to_another_identity(plugbus_server):
    server = await plugbus_server(plugins={"tracker": f"{__name__}:Tracker"})
    ann = await server.client(recovery=True, auth={"user": "ann"})
    await ann.call("join-room", {"room": "ann-only"})
    sid = ann.sid
    await server.drop(ann)
    ann.auth = {"user": "mallory", "recovery": True}  # the pid leaked to someone else
    other = await server.reconnect(ann)
    assert not other.recovered and other.sid != sid
    assert (await other.call("my-rooms"))["data"]["rooms"] == []
    assert other.received("welcome")  # a fresh session: greeted as new


async def test_with_recovery_off_the_ack_has_no_pid_and_events_no_offset(plugbus_server):
    server = await plugbus_server(config={"server": {"recovery": {"enabled": False}}})
    client = await server.client(recovery=True)  # asks, but it is not offered
    assert client.pid is None
    await client.call("join-room", {"room": "plain"})
    await client.call("send-message", {"message": "hi", "roomID": "plain"})
    assert await client.wait_for("receive-message") == ["hi"]
    assert client.offset is None
    await server.drop(client)
    back = await server.reconnect(client)
    assert not back.recovered
