"""plugbus calls hooks as pluggy calls them, and pluggy's monitoring sees every call.

The awaited hooks run through plugbus's async port of pluggy's call loop; these tests call the
same plugins through pluggy itself (``pm.hook``) and through plugbus, and compare what the
wrappers saw and what came out. ``PLUGBUS_TRACE_HOOKS=1`` is checked on a real server, over a
connection's whole life: every one of the hooks appears in the log with its plugins and
durations.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pluggy
import pytest
import yaml

from plugbus.core import hookspecs
from plugbus.core.bus import Bus
from plugbus.core.config import load_config
from plugbus.core.context import Connection, Origin
from plugbus.core.loader import LoadedPlugins, load_plugins

TESTS_DIR = Path(__file__).resolve().parent
MOD = "plugins_for_tests.call_plugins"


@pytest.fixture(autouse=True)
def plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    for name in list(__import__("os").environ):
        if name.upper().startswith("PLUGBUS_"):
            monkeypatch.delenv(name)
    from plugins_for_tests import call_plugins

    call_plugins.RECORD.clear()
    call_plugins.REGISTER_CALLS.clear()
    call_plugins.SCENARIO["name"] = "plain"
    yield call_plugins


def load(tmp_path: Path, modules: dict[str, str]) -> tuple[Any, LoadedPlugins]:
    cfg = {"plugins": {"builtins": [], "entry_points": False, "modules": modules}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    loaded = load_config(path)
    return loaded, load_plugins(loaded)


def all_hooks() -> set[str]:
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return {
        n for n, f in vars(hookspecs).items() if n.startswith("plugbus_") and hasattr(f, marker)
    }


SCENARIOS = [
    "plain",
    "impl-refuses",
    "inner-setup-raises",
    "inner-no-yield",
    "inner-second-yield",
    "outer-swallows",
]


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_an_awaited_hook_runs_its_wrappers_exactly_as_pluggy_does(
    tmp_path: Path, plugins: Any, scenario: str
) -> None:
    loaded, loaded_plugins = load(tmp_path, {"one": f"{MOD}:One", "two": f"{MOD}:Two"})
    bus = Bus(loaded.config, loaded_plugins)
    plugins.SCENARIO["name"] = scenario
    connection = Connection("sid-1", "/")

    def outcome(run: Any) -> tuple[list[Any], tuple[Any, ...]]:
        plugins.RECORD.clear()
        try:
            result: tuple[Any, ...] = ("returned", run())
        except Exception as exc:
            result = ("raised", type(exc).__name__, str(exc))
        return list(plugins.RECORD), result

    by_pluggy = outcome(
        lambda: bus.pm.hook.plugbus_authorize_join(connection=connection, room="r", bus=bus)
    )

    async def plugbus_call() -> tuple[list[Any], tuple[Any, ...]]:
        plugins.RECORD.clear()
        try:
            await bus.hooks.authorize_join(connection, "r", bus)
            result: tuple[Any, ...] = ("returned",)
        except Exception as exc:
            result = ("raised", type(exc).__name__, str(exc))
        return list(plugins.RECORD), result

    seen, result = await plugbus_call()
    assert seen == by_pluggy[0]
    # authorize_join's typed method returns nothing; an error is pluggy's, word for word
    if result[0] == "returned":
        assert by_pluggy[1][0] == "returned"
    else:
        assert result == by_pluggy[1]
    if scenario == "inner-second-yield":
        assert "has second yield" in result[2]
    if scenario == "inner-setup-raises":
        assert ("outer saw error", "ValueError", "inner setup failed") in seen


def test_register_events_is_called_once_and_each_event_is_credited_to_its_plugin(
    tmp_path: Path, plugins: Any
) -> None:
    loaded, loaded_plugins = load(
        tmp_path, {"one": f"{MOD}:One", "two": f"{MOD}:Two", "adder": f"{MOD}:Adder"}
    )
    bus = Bus(loaded.config, loaded_plugins)
    assert sorted(plugins.REGISTER_CALLS) == ["adder", "one", "two"]
    assert bus.events.owner("alpha") == "one"
    assert bus.events.owner("beta") == "two"  # two plugins of one module, told apart
    assert bus.events.owner("gamma") == "adder"  # added by a wrapper: the wrapper's plugin
    owners = {event.name: owner for owner, event in bus.events.server_events()}
    assert owners["beta-done"] == "two"


async def test_monitoring_and_pluggy_tracing_see_awaited_and_collected_hooks(
    tmp_path: Path, plugins: Any
) -> None:
    loaded, loaded_plugins = load(tmp_path, {"one": f"{MOD}:One", "two": f"{MOD}:Two"})
    pm = loaded_plugins.pm
    seen: list[tuple[str, str, list[str]]] = []
    undo = pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: seen.append(("before", name, sorted(kwargs))),
        lambda outcome, name, impls, kwargs: seen.append(
            ("after", name, [i.plugin_name for i in impls])
        ),
    )
    lines: list[str] = []
    pm.trace.root.setwriter(lines.append)
    undo_tracing = pm.enable_tracing()
    bus = Bus(loaded.config, loaded_plugins)
    connection = Connection("sid-1", "/")
    await bus.hooks.authorize_join(connection, "lobby", bus)
    ctx = bus.context(Origin.SERVER)
    assert await bus.publish(bus.events.parse("alpha", {}), ctx) is None

    names = [name for kind, name, _ in seen if kind == "before"]
    assert names == [
        "plugbus_register_events",
        "plugbus_authorize_join",
        "plugbus_moderate",
        "plugbus_handle_event",
    ]
    assert ("before", "plugbus_authorize_join", ["bus", "connection", "room"]) in seen
    assert ("after", "plugbus_authorize_join", ["two", "two", "one"]) in seen
    traced = "".join(lines)
    for name in names:
        assert name in traced
    undo_tracing()
    undo()
    seen.clear()
    await bus.hooks.authorize_join(connection, "lobby", bus)
    assert seen == []


async def test_monitors_get_the_result_or_the_exception_as_a_pluggy_result(
    tmp_path: Path, plugins: Any
) -> None:
    loaded, loaded_plugins = load(tmp_path, {"one": f"{MOD}:One", "two": f"{MOD}:Two"})
    outcomes: list[pluggy.Result[Any]] = []
    loaded_plugins.pm.add_hookcall_monitoring(
        lambda *a: None, lambda outcome, *a: outcomes.append(outcome)
    )
    bus = Bus(loaded.config, loaded_plugins)
    outcomes.clear()
    plugins.SCENARIO["name"] = "impl-refuses"
    with pytest.raises(Exception, match="no entry"):
        await bus.hooks.authorize_join(Connection("s", "/"), "r", bus)
    assert type(outcomes[-1].exception).__name__ == "NotAllowed"


async def test_trace_hooks_logs_every_hook_of_a_full_run_with_plugins_and_durations(
    serve: Any, connect: Any
) -> None:
    server = serve(
        {"server": {"recovery": {"max_disconnection_s": 1}}}, env={"PLUGBUS_TRACE_HOOKS": "1"}
    )
    client = await connect(server, transports=["websocket"], wait_welcome=True)
    assert (await client.call("join-room", {"room": "lobby"}))["ok"] is True
    assert (await client.call("leave-room", {"room": "lobby"}))["ok"] is True
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/plugins")).status_code == 200
    await client.sio.disconnect()
    # recovery's two hooks: a session that comes back, and one that never does
    for comes_back in (True, False):
        lost = await connect(server, transports=["websocket"], auth={"recovery": True})
        assert lost.pid is not None
        sid = lost.sid
        await lost.sio.eio.disconnect(abort=True)  # the transport is lost, not closed
        if comes_back:
            back = await connect(
                server, transports=["websocket"], auth={"recovery": True, "pid": lost.pid}
            )
            assert back.sio.get_sid("/") == sid
            await back.sio.disconnect()
    deadline = asyncio.get_running_loop().time() + 5
    while "plugbus_session_expired [" not in server.log():
        assert asyncio.get_running_loop().time() < deadline, "no session expired"
        await asyncio.sleep(0.1)
    await asyncio.to_thread(server.stop)
    log = server.log()
    called = set(re.findall(r"plugbus\.trace: (plugbus_\w+) \[", log))
    assert called == all_hooks(), sorted(all_hooks() - called)
    # one line per implementation, with its plugin and duration
    assert re.search(
        r"plugbus\.trace: plugbus_handle_event: rooms\.plugbus_handle_event took \d+\.\d{3} ms", log
    )
    assert re.search(
        r"plugbus\.trace: plugbus_connected \[[^\]]*welcome[^\]]*\] returned in \d+\.\d{3} ms", log
    )
