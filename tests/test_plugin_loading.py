"""Plugins switched on and off from config.yaml, loaded by dotted path, and from an installed
package's entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, settle

ALL = ["auth", "welcome", "rooms", "relay", "moderation"]


def without(name: str) -> dict:
    return {"plugins": {"builtins": [b for b in ALL if b != name]}}


async def test_without_welcome_no_greeting_but_chat_works(plugbus_server, connect):
    server = await plugbus_server(config=without("welcome"))
    a = await connect(server)
    await a.call("join-room", {"room": "r"})
    assert (await a.call("send-message", {"message": "hi", "roomID": "r"}))["ok"]
    assert await a.wait_for("receive-message") == ["hi"]
    assert a.received("welcome") == []


async def test_without_rooms_join_room_is_unknown_and_relay_still_serves(plugbus_server, connect):
    server = await plugbus_server(config=without("rooms"))
    a = await connect(server, wait_welcome=True)
    ack = await a.call("join-room", {"room": "r"})
    assert ack["error"]["code"] == "unknown_event"
    assert "join-room" not in ack["error"]["details"]["known"]
    # A connection's own id is still a room: relay can reach it.
    ack = await a.call("send-message", {"message": "to me", "roomID": a.sio.get_sid()})
    assert ack["ok"] is True
    assert await a.wait_for("receive-message") == ["to me"]


async def test_without_relay_send_message_is_unknown_and_its_route_is_gone(plugbus_server, connect):
    server = await plugbus_server(config=without("relay"), record_hooks=False)
    a = await connect(server, wait_welcome=True)
    assert (await a.call("join-room", {"room": "r"}))["ok"] is True
    ack = await a.call("send-message", {"message": "hi", "roomID": "r"})
    assert ack["error"]["code"] == "unknown_event"
    async with httpx.AsyncClient(base_url=server.url) as http:
        resp = await http.post("/rooms/r/messages", json={"message": "hi"})
        # the path stays for reading the room's history (rooms plugin): no POST on it
        assert resp.status_code == 405
        assert resp.headers["allow"] == "GET"
        assert [p["name"] for p in (await http.get("/plugins")).json()] == [
            "auth",
            "welcome",
            "rooms",
            "moderation",
        ]


async def test_without_moderation_long_messages_pass(plugbus_server, connect):
    server = await plugbus_server(
        config={
            **without("moderation"),
            "plugins": {
                "builtins": ["auth", "welcome", "rooms", "relay"],
                "settings": {"moderation": {"max_length": 5}},
            },
        }
    )
    a = await connect(server, wait_welcome=True)
    await a.call("join-room", {"room": "r"})
    assert (await a.call("send-message", {"message": "longer than five", "roomID": "r"}))["ok"]
    assert await a.wait_for("receive-message") == ["longer than five"]


async def test_no_plugins_at_all_still_serves_health_and_refuses_events(plugbus_server, connect):
    server = await plugbus_server(builtins=[], record_hooks=False)
    a = await connect(server)
    ack = await a.call("send-message", {"message": "x", "roomID": "r"})
    assert ack["error"]["code"] == "unknown_event"
    assert ack["error"]["details"]["known"] == []
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/health")).json()["plugins"] == []


async def test_module_plugin_by_dotted_path_registers_an_event_and_transforms(
    plugbus_server, connect
):
    server = await plugbus_server(plugins={"shout": "fixture_plugins.shout"})
    a = await connect(server, wait_welcome=True)
    assert await a.call("shout", {"word": "hey"}) == {
        "ok": True,
        "data": {"shouted": "HEY", "origin": "socket"},
    }
    await a.call("join-room", {"room": "r"})
    await a.call("send-message", {"message": "quiet", "roomID": "r"})
    assert await a.wait_for("receive-message") == ["QUIET"]
    async with httpx.AsyncClient(base_url=server.url) as http:
        resp = await http.post("/events/shout", json={"word": "rest"})
        assert resp.json() == {"ok": True, "data": {"shouted": "REST", "origin": "rest"}}
        plugins = {p["name"]: p for p in (await http.get("/plugins")).json()}
    assert plugins["shout"]["source"] == "module"
    assert plugins["shout"]["version"] == "0.0.1"
    assert plugins["shout"]["hooks"] == [
        "plugbus_handle_event",
        "plugbus_moderate",
        "plugbus_register_events",
    ]


@pytest.fixture(scope="module")
def greeter_site(tmp_path_factory) -> Path:
    """The example plugin package, really built and installed (into its own directory)."""
    target = tmp_path_factory.mktemp("greeter-site")
    # built from a copy: pip builds a local project in place, which left build/ and
    # *.egg-info in the checkout
    source = shutil.copytree(
        ROOT / "examples" / "plugbus-greeter",
        tmp_path_factory.mktemp("greeter-src") / "plugbus-greeter",
        ignore=shutil.ignore_patterns("build", "*.egg-info"),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
    )
    assert list(target.glob("plugbus_greeter-1.0.0.dist-info"))
    return target


async def test_example_entry_point_plugin_is_loaded_and_its_hooks_run(
    plugbus_server, connect, greeter_site
):
    # The package is installed for the child process only: the kit's spawn, not in-process.
    server = await plugbus_server.spawn(entry_points=True, env={"PYTHONPATH": str(greeter_site)})
    async with httpx.AsyncClient(base_url=server.url) as http:
        plugins = {p["name"]: p for p in (await http.get("/plugins")).json()}
        assert plugins["greeter"]["source"] == "entry point"
        assert plugins["greeter"]["version"] == "1.0.0"
        assert plugins["greeter"]["target"] == "plugbus_greeter:GreeterPlugin"
        assert (await http.post("/events/greet", json={"who": "REST"})).json() == {
            "ok": True,
            "data": {"greeting": "Hello, REST!"},
        }
    client = await connect(server)
    assert await client.call("greet", {"who": "Ada"}) == {
        "ok": True,
        "data": {"greeting": "Hello, Ada!"},
    }
    # Both greetings arrive: the built-in's and the plugin's.
    greetings = await client.wait_for("welcome", count=2)
    assert sorted(greetings) == sorted(
        ["Welcome to server", f"Hello from plugbus-greeter, {client.sio.get_sid()}!"]
    )


async def test_example_plugin_replaces_the_disabled_welcome(plugbus_server, connect, greeter_site):
    server = await plugbus_server.spawn(
        entry_points=True,
        builtins=["rooms", "relay", "moderation"],
        settings={"greeter": {"greeting": "Hi {sid}"}},
        env={"PYTHONPATH": str(greeter_site)},
    )
    client = await connect(server)
    assert await client.wait_for("welcome") == [f"Hi {client.sio.get_sid()}"]
    await settle(server, client)
    assert len(client.received("welcome")) == 1


async def test_moderation_applies_to_a_plugin_event(plugbus_server, connect, greeter_site):
    server = await plugbus_server.spawn(
        entry_points=True,
        settings={"moderation": {"blocked_words": ["badword"]}},
        env={"PYTHONPATH": str(greeter_site)},
    )
    client = await connect(server)
    ack = await client.call("greet", {"who": "badword"})
    assert ack["error"]["code"] == "message_rejected"
    assert ack["error"]["details"]["field"] == "who"


async def test_disabled_entry_point_is_not_loaded(plugbus_server, greeter_site):
    server = await plugbus_server.spawn(
        entry_points=True, disabled=["greeter"], env={"PYTHONPATH": str(greeter_site)}
    )
    async with httpx.AsyncClient(base_url=server.url) as http:
        names = [p["name"] for p in (await http.get("/plugins")).json()]
        assert names == ALL
        assert (await http.post("/events/greet", json={"who": "x"})).status_code == 404
