"""The test kit for plugin authors (``plugbus.testing``), used exactly as an author would.

Nothing here comes from conftest.py: ``plugbus_server`` is the fixture of the ``plugbus``
pytest plugin (the ``pytest11`` entry point). The plugin under test is a class of this module,
loaded by dotted path (``plugins.modules``), as a plugin author's would be.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, ClassVar

import httpx
import pytest
from pydantic import Field

import plugbus.testing
from plugbus import (
    Bus,
    ConfigError,
    Connection,
    ConnectionDenied,
    Event,
    EventContext,
    Plugin,
    PluginSettings,
    Route,
    hookimpl,
)
from plugbus.testing import (
    ClientRefused,
    HookCalls,
    PlugbusExited,
    PlugbusProcess,
    PlugbusServerFactory,
    fork_server,
    fork_servers,
)

LIFE = [
    "plugbus_authenticate",
    "plugbus_connect",
    "plugbus_connected",
    "plugbus_moderate",
    "plugbus_handle_event",
    "plugbus_disconnect",
]


class Note(Event):
    """``note`` ``{text}``: a note for everyone else."""

    name: ClassVar[str] = "note"
    text_fields = ("text",)
    text: str = Field(min_length=1)


class NotesPlugin(Plugin):
    """Greets, refuses a bad token, tidies notes (tryfirst) and prefixes them (trylast),
    relays them to everyone else, and counts them at ``GET /notes``."""

    class Settings(PluginSettings):
        """``prefix``: put before every note, last of all moderation."""

        prefix: str = ""

    settings: Settings
    count = 0

    @hookimpl
    def plugbus_register_events(self) -> list[type[Event]]:
        """The ``note`` event."""
        return [Note]

    @hookimpl
    def plugbus_connect(self, connection: Connection) -> None:
        """Refuse the token ``"bad"``."""
        if (connection.auth or {}).get("token") == "bad":
            raise ConnectionDenied("bad token")

    @hookimpl
    async def plugbus_connected(self, connection: Connection, bus: Bus) -> None:
        """Say hello with the connection's id."""
        await bus.emit("hello", connection.sid, to=connection.sid)

    @hookimpl(specname="plugbus_moderate", tryfirst=True)
    def tidy(self, event: Event) -> Event | None:
        """Strip the text, before any other moderation."""
        return (
            event.model_copy(update={"text": event.text.strip()})
            if isinstance(event, Note)
            else None
        )

    @hookimpl(specname="plugbus_moderate", trylast=True)
    def prefix(self, event: Event) -> Event | None:
        """Prefix the text, after all other moderation."""
        if isinstance(event, Note):
            return event.model_copy(update={"text": self.settings.prefix + event.text})
        return None

    @hookimpl
    async def plugbus_handle_event(self, event: Event, ctx: EventContext) -> dict[str, Any] | None:
        """Relay a note to everyone but its sender; the ack says what was sent."""
        if not isinstance(event, Note):
            return None
        NotesPlugin.count += 1
        await ctx.bus.emit("note", event.text, skip_sid=ctx.sid)
        return {"text": event.text, "from": ctx.sid}

    @hookimpl
    def plugbus_routes(self) -> list[Route]:
        """``GET /notes``: how many notes were relayed."""
        return [Route("GET", "/notes", lambda req: {"count": NotesPlugin.count})]


class BrokenStartup(Plugin):
    """A plugin whose start-up fails."""

    @hookimpl
    def plugbus_startup(self) -> None:
        """Fail."""
        raise RuntimeError("no database")


@pytest.fixture
def reset_count() -> None:
    NotesPlugin.count = 0


async def test_two_clients_exchange_notes_and_acks_say_what_was_sent(
    plugbus_server: PlugbusServerFactory, reset_count: None
) -> None:
    # By dotted path, as in config.yaml's plugins.modules (the class itself works too).
    server = await plugbus_server(
        plugins={"notes": f"{__name__}:NotesPlugin"},
        builtins=[],
        settings={"notes": {"prefix": "> "}},
    )
    alice, bob = await server.client(), await server.client()
    assert await alice.wait_for("hello") == [alice.sid]
    assert await bob.wait_for("hello") == [bob.sid]

    assert await alice.call("note", {"text": "  hi  "}) == {
        "ok": True,
        "data": {"text": "> hi", "from": alice.sid},
    }
    assert await bob.wait_for("note") == ["> hi"]
    assert alice.received("note") == []

    refused = await bob.call("note", {"text": ""})
    assert refused["ok"] is False
    assert refused["error"]["code"] == "invalid_payload"
    await bob.emit("note", {})  # no ack asked: the refusal arrives as an `error` event
    assert (await bob.wait_for("error"))[0]["code"] == "invalid_payload"

    resp = await server.http.post("/events/note", json={"text": "from REST"})
    assert resp.json() == {"ok": True, "data": {"text": "> from REST", "from": None}}
    assert await alice.wait_for("note") == ["> from REST"]
    assert await bob.wait_for("note", count=2) == ["> hi", "> from REST"]
    assert (await server.http.get("/notes")).json() == {"count": 2}


async def test_hook_order_of_one_connections_life_with_tryfirst_and_trylast(
    plugbus_server: PlugbusServerFactory, reset_count: None
) -> None:
    server = await plugbus_server(
        plugins={"notes": NotesPlugin},
        builtins=["moderation"],
        settings={"notes": {"prefix": "> "}},
    )
    # Start-up: collected hooks while the app is built, then the awaited start-up.
    server.hooks.assert_order(["plugbus_register_events", "plugbus_routes", "plugbus_startup"])
    assert server.hooks.getcall("plugbus_startup").done

    alice = await server.client(transports=["websocket"])
    sid = alice.sid
    await alice.call("note", {"text": "  hi  "})
    await alice.disconnect()
    await server.hooks.wait_for("plugbus_disconnect", sid=sid)

    life = server.hooks.for_connection(sid)
    assert life.names() == LIFE
    assert life.getcall("plugbus_disconnect").reason in ("client disconnect", "transport close")

    # tryfirst runs before the built-in moderation, trylast after it ...
    assert server.hooks.impl_order("plugbus_moderate") == [
        "notes:tidy",
        "moderation:plugbus_moderate",
        "notes:prefix",
    ]
    # ... and the recorder, a tryfirst wrapper around all of them, sees the event before
    # and after the whole walk; the handler got what moderation left.
    moderate = life.getcall("plugbus_moderate")
    assert (moderate.event.text, moderate.result.text) == ("  hi  ", "> hi")
    handled = life.getcall("plugbus_handle_event")
    assert handled.event.text == "> hi"
    assert handled.result == {"text": "> hi", "from": sid}
    assert handled.ctx.connection.sid == sid


async def test_every_call_is_recorded_in_order_including_nested_and_refused_ones(
    plugbus_server: PlugbusServerFactory,
) -> None:
    server = await plugbus_server(plugins={"notes": NotesPlugin}, builtins=["rooms"])
    server.hooks.clear()
    alice = await server.client()
    assert (await alice.call("join-room", {"room": "r"}))["ok"] is True
    # plugbus_room_joined runs inside the handler of join-room, so it starts after it.
    server.hooks.for_connection(alice.sid).assert_order(
        ["plugbus_connect", "plugbus_moderate", "plugbus_handle_event", "plugbus_room_joined"]
    )
    assert server.hooks.getcall("plugbus_room_joined").room == "r"

    with pytest.raises(ClientRefused) as refused:
        await server.client(auth={"token": "bad"})
    assert refused.value.error["code"] == "connection_denied"
    assert refused.value.error["message"] == "bad token"
    connects = server.hooks.getcalls("plugbus_connect")
    assert len(connects) == 2
    assert isinstance(connects[1].error, ConnectionDenied)
    # A refused connection is never connected, so it never disconnects either.
    assert len(server.hooks.getcalls(["plugbus_connected", "plugbus_disconnect"])) == 1
    assert isinstance(server.hooks.getcalls("plugbus_connect"), HookCalls)


@pytest.mark.parametrize("transport", ["polling", "websocket"])
async def test_clients_on_each_transport(
    plugbus_server: PlugbusServerFactory, transport: str
) -> None:
    server = await plugbus_server(plugins={"notes": NotesPlugin}, builtins=[])
    alice = await server.client(transports=[transport])
    assert alice.sio.transport() == transport
    assert (await alice.call("note", {"text": "x"}))["ok"] is True


async def test_a_bad_plugin_setting_stops_start_up_with_the_loaders_message(
    plugbus_server: PlugbusServerFactory,
) -> None:
    with pytest.raises(ConfigError, match=r"plugin 'notes'.*plugins\.settings\.notes\.prefix"):
        await plugbus_server(plugins={"notes": NotesPlugin}, settings={"notes": {"prefix": 3}})


async def test_a_failing_start_up_hook_raises_in_the_test(
    plugbus_server: PlugbusServerFactory,
) -> None:
    with pytest.raises(RuntimeError, match="no database"):
        await plugbus_server(plugins={"broken": BrokenStartup}, builtins=[])


async def test_the_recorder_is_an_ordinary_plugin_and_can_be_left_out(
    plugbus_server: PlugbusServerFactory,
) -> None:
    recorded = await plugbus_server(builtins=["welcome"])
    names = [p["name"] for p in (await recorded.http.get("/plugins")).json()]
    assert names == ["welcome", "hook-recorder"]

    plain = await plugbus_server(builtins=["welcome"], record_hooks=False)
    assert [p["name"] for p in (await plain.http.get("/plugins")).json()] == ["welcome"]
    with pytest.raises(RuntimeError, match="record_hooks=False"):
        plain.hooks  # noqa: B018
    client = await plain.client()
    assert await client.wait_for("welcome") == ["Welcome to server"]


async def test_the_shells_plugbus_variables_are_hidden_and_env_is_applied(
    plugbus_server: PlugbusServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLUGBUS_PLUGINS__BUILTINS", '["welcome"]')
    server = await plugbus_server(builtins=[], env={"PLUGBUS_SERVER__NAME": "from-env"})
    health = (await server.http.get("/health")).json()
    assert (health["server"], health["plugins"]) == ("from-env", ["hook-recorder"])


async def test_servers_stop_at_teardown_and_stop_is_idempotent(
    plugbus_server: PlugbusServerFactory,
) -> None:
    server = await plugbus_server(builtins=[])
    await server.client()
    await server.stop()
    await server.stop()
    assert server.hooks.names()[-1] == "plugbus_shutdown"
    assert server.clients == []


def test_the_kit_is_the_pytest11_plugin_with_no_autouse_and_prefixed_fixtures(
    request: pytest.FixtureRequest,
) -> None:
    assert request.config.pluginmanager.get_plugin("plugbus") is plugbus.testing
    fixtures = {
        name: obj
        for name, obj in vars(plugbus.testing).items()
        if hasattr(obj, "_fixture_function_marker")
    }
    assert sorted(fixtures) == ["plugbus_app", "plugbus_server"]
    for name, obj in fixtures.items():
        marker = obj._fixture_function_marker
        assert (marker.name or name).startswith("plugbus_")
        assert marker.autouse is False
    for name in plugbus.testing.__all__:
        assert getattr(plugbus.testing, name).__doc__, f"{name} has no docstring"


async def test_the_in_process_server_redacts_credentials_in_the_query_as_serve_does(
    plugbus_server: PlugbusServerFactory,
) -> None:
    """A token in a query string must not reach a plugin author's test log either."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    access = logging.getLogger("uvicorn.access")
    keep = Keep()
    access.addHandler(keep)
    try:
        server = await plugbus_server(builtins=[], config={"server": {"log_level": "info"}})
        secret = "kit-query-token-51be"
        assert (await server.http.get(f"/health?token={secret}&x=1")).status_code == 200
    finally:
        access.removeHandler(keep)
    assert any("/health?token=[redacted]&x=1" in line for line in lines), lines
    assert not any(secret in line for line in lines)


def test_importing_plugbus_leaves_the_host_processs_logging_alone() -> None:
    """The wire's seam check builds uvicorn Config objects at import; uvicorn applies its own
    logging config by default, which would take over a plugin author's test logging."""
    import subprocess
    import sys

    probe = (
        "import logging, plugbus.api.app, plugbus.testing\n"
        "for name in ('uvicorn', 'uvicorn.access', 'uvicorn.error'):\n"
        "    logger = logging.getLogger(name)\n"
        "    assert logger.handlers == [] and logger.propagate, (name, logger.handlers)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


async def test_settle_shows_what_did_not_arrive_without_sleeping(
    plugbus_server: PlugbusServerFactory,
) -> None:
    server = await plugbus_server(builtins=["rooms", "relay", "moderation"])
    alice, bob, carol = await server.client(), await server.client(), await server.client()
    for client in (alice, bob):
        assert (await client.call("join-room", {"room": "r"}))["ok"] is True
    await alice.call("send-message", {"message": "hi", "roomID": "r"})
    await server.settle(bob, carol)
    # what was sent before the sentinel is there without waiting for it; the sentinel is not
    assert bob.received("receive-message") == ["hi"]
    assert carol.received("receive-message") == []
    assert [name for name, _ in carol.events] == []
    # a client the server closes: wait for exactly that
    assert (await server.http.delete(f"/connections/{carol.sid}")).status_code == 200
    await carol.wait_disconnected()
    assert not carol.sio.connected and bob.sio.connected


@pytest.fixture(params=["forked", "python -m plugbus serve"])
def launch(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each child-process test twice: forked from the kit's fork server (as this suite's
    conftest sets it up) and as a fresh ``python -m plugbus serve`` (the kit's default)."""
    was_forking = fork_server.forking()
    fork_servers(request.param == "forked")
    yield request.param
    fork_servers(was_forking)


async def test_a_plugin_under_plugbus_serve_in_a_child_process(
    plugbus_server: PlugbusServerFactory, reset_count: None, launch: str
) -> None:
    server = await plugbus_server.spawn(
        plugins={"notes": NotesPlugin}, builtins=[], settings={"notes": {"prefix": "> "}}
    )
    assert isinstance(server, PlugbusProcess) and server.proc.poll() is None
    forked = isinstance(server.proc, fork_server.ForkedServe)
    assert forked == (launch == "forked")
    alice, bob = await server.client(), await server.client(transports=["websocket"])
    assert await alice.wait_for("hello") == [alice.sid]
    assert await alice.call("note", {"text": " hi "}) == {
        "ok": True,
        "data": {"text": "> hi", "from": alice.sid},
    }
    assert await bob.wait_for("note") == ["> hi"]
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/notes")).json() == {"count": 1}
    assert NotesPlugin.count == 0  # the plugin ran in the child, not here
    assert "Traceback" not in server.log()
    server.kill()
    await bob.wait_disconnected()
    assert server.proc.returncode is not None


async def test_a_child_process_that_cannot_start_says_why(
    plugbus_server: PlugbusServerFactory, launch: str
) -> None:
    with pytest.raises(PlugbusExited) as exited:
        await plugbus_server.spawn(
            plugins={"notes": NotesPlugin}, settings={"notes": {"prefix": 3}}
        )
    assert exited.value.returncode == 2
    assert "plugins.settings.notes.prefix" in exited.value.output
    assert plugbus_server.processes == []
