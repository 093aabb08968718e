"""The documented call semantics of every hook, in-process, through the real loader and bus.

Each test writes a config.yaml that loads no built-ins and no entry points, only the small
plugins under ``tests/plugins_for_tests`` (by dotted path, in ``plugins.modules``), builds the
pluggy plugin manager with ``load_plugins`` and a :class:`Bus` on it, and dispatches events
directly. Plugins record their calls in ``sem_plugins.CALLS``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from plugbus.core.bus import Bus
from plugbus.core.config import LoadedConfig, load_config
from plugbus.core.context import EventContext, Origin
from plugbus.core.errors import (
    ConfigError,
    InvalidPayload,
    MessageRejected,
    NotAllowed,
    UnknownEvent,
)
from plugbus.core.loader import LoadedPlugins, load_plugins

TESTS_DIR = Path(__file__).resolve().parent
PKG = "plugins_for_tests.sem_plugins"
EVENTS = "plugins_for_tests.sem_events"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, ...]]]:
    """Make the test plugins importable, drop stray PLUGBUS_* overrides, reset the call log."""
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    for name in list(os.environ):
        if name.upper().startswith("PLUGBUS_"):
            monkeypatch.delenv(name)
    from plugins_for_tests import sem_plugins

    sem_plugins.CALLS.clear()
    yield sem_plugins.CALLS
    sem_plugins.CALLS.clear()


@pytest.fixture
def calls(_isolated: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return _isolated


def load(
    tmp_path: Path,
    modules: dict[str, str],
    *,
    settings: dict[str, dict[str, Any]] | None = None,
    disabled: list[str] | None = None,
) -> tuple[LoadedConfig, LoadedPlugins]:
    """Write a config loading exactly ``modules`` (in this order) and load its plugins."""
    cfg = {
        "plugins": {
            "builtins": [],
            "entry_points": False,
            "disabled": disabled or [],
            "modules": modules,
            "settings": settings or {},
        }
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    loaded = load_config(path)
    return loaded, load_plugins(loaded)


def make_bus(tmp_path: Path, modules: dict[str, str], **kwargs: Any) -> Bus:
    loaded, plugins = load(tmp_path, modules, **kwargs)
    return Bus(loaded.config, plugins)


def labels(*names: str) -> dict[str, dict[str, Any]]:
    """Settings sections giving each plugin its own name as label."""
    return {name: {"label": name} for name in names}


def assert_no_unawaited_coroutines(caught: list[warnings.WarningMessage]) -> None:
    gc.collect()
    bad = [w for w in caught if "never awaited" in str(w.message)]
    assert not bad, [str(w.message) for w in bad]


# -- plugbus_moderate -------------------------------------------------------------------------


async def test_moderate_runs_in_pluggy_order_and_chains_the_event(tmp_path: Path, calls) -> None:
    # Registration order: events, last (trylast), a, first (tryfirst), b, c.
    modules = {
        "events": EVENTS,
        "last": f"{PKG}:LastModerator",
        "a": f"{PKG}:AsyncModerator",
        "first": f"{PKG}:FirstModerator",
        "b": f"{PKG}:SyncModerator",
        "c": f"{PKG}:AsyncModerator",
        "handler": f"{PKG}:SyncHandler",
    }
    settings = {
        "last": {"label": "last", "suffix": "+last"},
        "a": {"label": "a", "suffix": "+a"},
        "first": {"label": "first", "suffix": "+first"},
        "b": {"label": "b", "suffix": "+b"},
        "c": {"label": "c"},  # lets the event through unchanged (returns None)
        "handler": {"label": "handler"},
    }
    bus = make_bus(tmp_path, modules, settings=settings)

    # pluggy's own call order, for reference: tryfirst, then last-registered first, then trylast.
    pluggy_order = [i.plugin_name for i in reversed(bus.pm.hook.plugbus_moderate.get_hookimpls())]
    assert pluggy_order == ["first", "c", "b", "a", "last"]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = await bus.dispatch("say", {"text": "hi"}, bus.context(Origin.REST))
        assert_no_unawaited_coroutines(caught)

    assert calls == [
        ("first", "moderate", "hi"),
        ("c", "moderate", "hi+first"),
        ("b", "moderate", "hi+first"),
        ("a", "moderate", "hi+first+b"),
        ("last", "moderate", "hi+first+b+a"),
        ("handler", "handle", "hi+first+b+a+last"),
    ]
    # The handler received the event as the last moderator left it, and its result is the ack.
    assert result == {"by": "handler", "text": "hi+first+b+a+last"}


async def test_moderate_with_no_implementation_passes_the_event_unchanged(
    tmp_path: Path, calls
) -> None:
    bus = make_bus(tmp_path, {"events": EVENTS, "h": f"{PKG}:AsyncHandler"}, settings=labels("h"))
    assert await bus.dispatch("say", {"text": "plain"}, bus.context(Origin.SOCKET)) == {
        "by": "h",
        "text": "plain",
    }


async def test_async_veto_stops_the_chain_without_unawaited_coroutines(
    tmp_path: Path, calls
) -> None:
    # Registered first = called last: "later_sync" and "later_async" come after the veto.
    modules = {
        "events": EVENTS,
        "later_sync": f"{PKG}:SyncModerator",
        "later_async": f"{PKG}:AsyncModerator",
        "veto": f"{PKG}:AsyncVeto",
        "earlier": f"{PKG}:AsyncModerator",
        "handler": f"{PKG}:AsyncHandler",
    }
    bus = make_bus(
        tmp_path,
        modules,
        settings=labels("later_sync", "later_async", "veto", "earlier", "handler"),
    )
    order = [i.plugin_name for i in reversed(bus.pm.hook.plugbus_moderate.get_hookimpls())]
    assert order == ["earlier", "veto", "later_async", "later_sync"]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(MessageRejected) as info:
            await bus.dispatch("say", {"text": "bad"}, bus.context(Origin.SOCKET))
        assert_no_unawaited_coroutines(caught)

    assert info.value.details == {"rule": "veto"}
    assert info.value.to_dict()["code"] == "message_rejected"
    # Later moderators and the handler were never called.
    assert calls == [("earlier", "moderate", "bad"), ("veto", "moderate", "bad")]
    gc.collect()


async def test_async_drop_stops_the_chain_and_answers_nothing(
    tmp_path: Path, calls, caplog: pytest.LogCaptureFixture
) -> None:
    modules = {
        "events": EVENTS,
        "later_async": f"{PKG}:AsyncModerator",
        "later_sync": f"{PKG}:SyncModerator",
        "drop": f"{PKG}:AsyncDrop",
        "handler": f"{PKG}:AsyncHandler",
    }
    bus = make_bus(
        tmp_path, modules, settings=labels("later_async", "later_sync", "drop", "handler")
    )
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        result = await bus.dispatch("say", {"text": "spam"}, bus.context(Origin.SOCKET))
        assert_no_unawaited_coroutines(caught)
    assert result is None
    assert calls == [("drop", "moderate", "spam")]
    assert any("dropped by drop" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("returns", ["dict", "other-event"])
async def test_moderate_returning_the_wrong_type_names_the_plugin(
    tmp_path: Path, calls, returns: str
) -> None:
    modules = {
        "events": EVENTS,
        "handler": f"{PKG}:SyncHandler",
        "sloppy-mod": f"{PKG}:WrongTypeModerator",
    }
    bus = make_bus(
        tmp_path,
        modules,
        settings={"handler": {"label": "handler"}, "sloppy-mod": {"returns": returns}},
    )
    with pytest.raises(TypeError) as info:
        await bus.dispatch("say", {"text": "x"}, bus.context(Origin.REST))
    message = str(info.value)
    assert "'sloppy-mod'" in message
    assert "plugbus_moderate" in message
    assert "Say" in message
    assert ("handler", "handle", "x") not in calls
    gc.collect()


async def test_moderate_wrapper_sees_the_final_event(tmp_path: Path, calls) -> None:
    modules = {
        "events": EVENTS,
        "w": f"{PKG}:ModerateWrapper",
        "m": f"{PKG}:AsyncModerator",
        "h": f"{PKG}:SyncHandler",
    }
    bus = make_bus(
        tmp_path,
        modules,
        settings={"w": {"label": "w"}, "m": {"label": "m", "suffix": "!"}, "h": {"label": "h"}},
    )
    assert await bus.dispatch("say", {"text": "hey"}, bus.context(Origin.REST)) == {
        "by": "h",
        "text": "hey!",
    }
    assert calls == [
        ("w", "before", "hey"),
        ("m", "moderate", "hey"),
        ("w", "after", "hey!"),
        ("h", "handle", "hey!"),
    ]


# -- plugbus_handle_event ---------------------------------------------------------------------


async def test_handle_event_first_non_none_wins_and_async_results_are_awaited(
    tmp_path: Path, calls
) -> None:
    modules = {
        "events": EVENTS,
        "never": f"{PKG}:SyncHandler",  # registered first: would run last
        "winner": f"{PKG}:AsyncHandler",
        "passer": f"{PKG}:AsyncHandler",  # registered last: runs first, returns None
    }
    settings = {
        "never": {"label": "never"},
        "winner": {"label": "winner"},
        "passer": {"label": "passer", "answer": False},
    }
    bus = make_bus(tmp_path, modules, settings=settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = await bus.dispatch("say", {"text": "q"}, bus.context(Origin.SOCKET))
        assert_no_unawaited_coroutines(caught)
    assert not asyncio.iscoroutine(result)
    assert result == {"by": "winner", "text": "q"}
    assert calls == [("passer", "handle", "q"), ("winner", "handle", "q")]


async def test_handle_event_all_none_gives_none(tmp_path: Path, calls) -> None:
    modules = {"events": EVENTS, "x": f"{PKG}:SyncHandler", "y": f"{PKG}:AsyncHandler"}
    bus = make_bus(
        tmp_path,
        modules,
        settings={"x": {"label": "x", "answer": False}, "y": {"label": "y", "answer": False}},
    )
    assert await bus.dispatch("say", {"text": "q"}, bus.context(Origin.REST)) is None
    assert calls == [("y", "handle", "q"), ("x", "handle", "q")]


async def test_new_style_wrapper_sees_and_replaces_the_result(tmp_path: Path, calls) -> None:
    modules = {"events": EVENTS, "wrap": f"{PKG}:HandleWrapper", "h": f"{PKG}:AsyncHandler"}
    bus = make_bus(
        tmp_path,
        modules,
        settings={"wrap": {"label": "wrap", "mode": "replace"}, "h": {"label": "h"}},
    )
    result = await bus.dispatch("say", {"text": "w"}, bus.context(Origin.REST))
    assert result == {"wrapped": {"by": "h", "text": "w"}}
    assert calls == [
        ("wrap", "before", "w"),
        ("h", "handle", "w"),
        ("wrap", "after", {"by": "h", "text": "w"}),
    ]


async def test_new_style_wrapper_sees_an_exception_raised_inside(tmp_path: Path, calls) -> None:
    modules = {"events": EVENTS, "wrap": f"{PKG}:HandleWrapper", "boom": f"{PKG}:RaisingHandler"}
    bus = make_bus(
        tmp_path, modules, settings={"wrap": {"label": "wrap"}, "boom": {"label": "boom"}}
    )
    with pytest.raises(NotAllowed, match="refused by the test handler"):
        await bus.dispatch("say", {"text": "e"}, bus.context(Origin.REST))
    assert calls == [
        ("wrap", "before", "e"),
        ("boom", "handle", "e"),
        ("wrap", "saw-error", "NotAllowed", "refused by the test handler"),
    ]


async def test_new_style_wrapper_can_turn_an_exception_into_a_result(tmp_path: Path, calls) -> None:
    modules = {"events": EVENTS, "wrap": f"{PKG}:HandleWrapper", "boom": f"{PKG}:RaisingHandler"}
    bus = make_bus(
        tmp_path,
        modules,
        settings={"wrap": {"label": "wrap", "mode": "recover"}, "boom": {"label": "boom"}},
    )
    assert await bus.dispatch("say", {"text": "e"}, bus.context(Origin.REST)) == {
        "recovered": "NotAllowed"
    }


async def test_moderation_veto_reaches_a_handle_wrapper_never(tmp_path: Path, calls) -> None:
    """The wrapper wraps handling only: a veto in moderation never reaches it."""
    modules = {
        "events": EVENTS,
        "wrap": f"{PKG}:HandleWrapper",
        "veto": f"{PKG}:AsyncVeto",
        "h": f"{PKG}:SyncHandler",
    }
    bus = make_bus(
        tmp_path,
        modules,
        settings={"wrap": {"label": "wrap"}, "veto": {"label": "veto"}, "h": {"label": "h"}},
    )
    with pytest.raises(MessageRejected):
        await bus.dispatch("say", {"text": "v"}, bus.context(Origin.REST))
    assert calls == [("veto", "moderate", "v")]


# -- refusals at load time --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "hook"),
    [
        ("OldStyleModerateWrapper", "plugbus_moderate"),
        ("OldStyleHandleWrapper", "plugbus_handle_event"),
    ],
)
def test_old_style_hookwrapper_on_an_awaited_hook_is_refused(
    tmp_path: Path, calls, cls: str, hook: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, {"events": EVENTS, "legacy-wrap": f"{PKG}:{cls}"})
    message = str(info.value)
    assert "'legacy-wrap'" in message
    assert hook in message
    assert "hookwrapper" in message
    assert calls == []


def test_old_style_hookwrapper_on_a_collected_hook_works(tmp_path: Path, calls) -> None:
    """Collected hooks are called by pluggy itself: its wrappers work there, as documented."""
    bus = make_bus(tmp_path, {"events": EVENTS, "ew": f"{PKG}:RegisterEventsHookwrapper"})
    assert calls == [("events-hookwrapper", [["say", "shout"]])]
    assert bus.events.names() == ["say", "shout"]


def test_new_style_wrapper_on_the_collected_routes_hook_is_called(tmp_path: Path, calls) -> None:
    """The hookspec module documents "Wrappers work" for collected hooks, routes included."""
    bus = make_bus(tmp_path, {"routes": f"{PKG}:RoutesPlugin", "rw": f"{PKG}:RoutesWrapper"})
    routes = bus.hooks.routes(bus)
    assert [(plugin, r.path) for plugin, r in routes] == [("routes", "/ping")]
    assert calls == [("routes-wrapper", "before"), ("routes-wrapper", "after", [["/ping"]])]


def test_misspelt_hook_is_refused_naming_the_plugin(tmp_path: Path, calls) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, {"events": EVENTS, "typo-plugin": f"{PKG}:TypoPlugin"})
    message = str(info.value)
    assert "'typo-plugin'" in message
    assert "plugbus_handel_event" in message


def test_two_plugins_registering_one_event_name_stop_the_bus_naming_both(tmp_path: Path) -> None:
    loaded, plugins = load(
        tmp_path,
        {"dup-alpha": "plugins_for_tests.sem_dup_a", "dup-beta": "plugins_for_tests.sem_dup_b"},
    )
    with pytest.raises(ConfigError) as info:
        Bus(loaded.config, plugins)
    message = str(info.value)
    assert "'dup'" in message
    # Plugins are known by their names (the keys of plugins.modules), as in every other message.
    assert "dup-alpha" in message and "dup-beta" in message, message


def test_two_plugins_of_one_module_registering_one_event_name_are_told_apart(
    tmp_path: Path,
) -> None:
    loaded, plugins = load(
        tmp_path,
        {
            "dup-one": "plugins_for_tests.sem_dup_a:DupPluginOne",
            "dup-two": "plugins_for_tests.sem_dup_a:DupPluginTwo",
        },
    )
    with pytest.raises(ConfigError) as info:
        Bus(loaded.config, plugins)
    message = str(info.value)
    assert "'dup'" in message
    assert "dup-one" in message and "dup-two" in message, message


def test_disabled_module_plugin_is_not_registered(tmp_path: Path, calls) -> None:
    modules = {
        "events": EVENTS,
        "blocked": f"{PKG}:SyncHandler",
        "ghost": "no_such_package.at_all",
        "h": f"{PKG}:AsyncHandler",
    }
    _loaded, plugins = load(
        tmp_path,
        modules,
        disabled=["blocked", "ghost"],
        settings={"blocked": {"label": "blocked"}, "h": {"label": "h"}},
    )
    assert [p.name for p in plugins.plugins] == ["events", "h"]
    assert plugins.pm.get_plugin("blocked") is None
    assert plugins.pm.is_blocked("blocked") and plugins.pm.is_blocked("ghost")
    impls = [i.plugin_name for i in plugins.pm.hook.plugbus_handle_event.get_hookimpls()]
    assert impls == ["h"]


async def test_disabled_module_plugin_never_handles_events(tmp_path: Path, calls) -> None:
    modules = {"events": EVENTS, "h": f"{PKG}:AsyncHandler", "blocked": f"{PKG}:SyncHandler"}
    bus = make_bus(tmp_path, modules, disabled=["blocked"], settings=labels("h", "blocked"))
    assert await bus.dispatch("say", {"text": "d"}, bus.context(Origin.REST)) == {
        "by": "h",
        "text": "d",
    }
    assert calls == [("h", "handle", "d")]


# -- validation -------------------------------------------------------------------------------


async def test_unknown_event_lists_the_known_events(tmp_path: Path, calls) -> None:
    bus = make_bus(tmp_path, {"events": EVENTS, "h": f"{PKG}:SyncHandler"}, settings=labels("h"))
    with pytest.raises(UnknownEvent) as info:
        await bus.dispatch("sya", {"text": "t"}, bus.context(Origin.SOCKET))
    assert info.value.details == {"event": "sya", "known": ["say", "shout"]}
    assert "'sya'" in info.value.message
    assert info.value.code == "unknown_event"
    assert calls == []


async def test_non_string_event_name_is_unknown(tmp_path: Path, calls) -> None:
    bus = make_bus(tmp_path, {"events": EVENTS})
    with pytest.raises(UnknownEvent) as info:
        await bus.dispatch(42, {"text": "t"}, bus.context(Origin.SOCKET))
    assert info.value.details["known"] == ["say", "shout"]
    assert info.value.details["event"] == "42"


async def test_invalid_payload_lists_each_error_with_loc_and_message(tmp_path: Path, calls) -> None:
    bus = make_bus(tmp_path, {"events": EVENTS, "h": f"{PKG}:SyncHandler"}, settings=labels("h"))
    ctx: EventContext = bus.context(Origin.REST)
    with pytest.raises(InvalidPayload) as info:
        await bus.dispatch("say", {"text": 5, "loud": "very", "roomId": "r"}, ctx)
    errors = info.value.details["errors"]
    assert info.value.details["event"] == "say"
    by_loc = {e["loc"]: e for e in errors}
    assert set(by_loc) == {"text", "loud", "roomId"}
    assert by_loc["text"]["message"] == "Input should be a valid string"
    assert by_loc["loud"]["message"].startswith("Input should be a valid boolean")
    assert by_loc["roomId"]["message"] == "Extra inputs are not permitted"
    assert all(set(e) == {"loc", "message", "type"} for e in errors)

    with pytest.raises(InvalidPayload) as info:
        await bus.dispatch("say", {}, ctx)
    assert info.value.details["errors"] == [
        {"loc": "text", "message": "Field required", "type": "missing"}
    ]

    with pytest.raises(InvalidPayload) as info:
        await bus.dispatch("say", ["text"], ctx)
    assert info.value.details["errors"][0]["loc"] == "(payload)"
    assert "an array" in info.value.message
    assert calls == []


# -- life cycle -------------------------------------------------------------------------------


async def test_startup_hooks_are_awaited_one_at_a_time_in_order(tmp_path: Path, calls) -> None:
    modules = {"s1": f"{PKG}:AsyncLife", "s2": f"{PKG}:SyncLife", "s3": f"{PKG}:AsyncLife"}
    bus = make_bus(tmp_path, modules, settings=labels("s1", "s2", "s3"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await bus.start()
        assert_no_unawaited_coroutines(caught)
    assert calls == [
        ("s3", "startup:begin"),
        ("s3", "startup:end"),
        ("s2", "startup"),
        ("s1", "startup:begin"),
        ("s1", "startup:end"),
    ]


async def test_startup_exception_stops_start_up(tmp_path: Path, calls) -> None:
    modules = {"s1": f"{PKG}:SyncLife", "s2": f"{PKG}:AsyncLife"}
    bus = make_bus(
        tmp_path,
        modules,
        settings={"s1": {"label": "s1"}, "s2": {"label": "s2", "fail_startup": True}},
    )
    with pytest.raises(RuntimeError, match="s2 cannot start"):
        await bus.start()
    assert calls == [("s2", "startup:begin"), ("s2", "startup:end")]


async def test_failing_shutdown_hook_is_logged_and_the_rest_still_run(
    tmp_path: Path, calls, caplog: pytest.LogCaptureFixture
) -> None:
    modules = {
        "s1": f"{PKG}:AsyncLife",
        "s2": f"{PKG}:SyncLife",
        "s3": f"{PKG}:AsyncLife",
        "s4": f"{PKG}:SyncLife",
    }
    settings = {
        "s1": {"label": "s1"},
        "s2": {"label": "s2", "fail_shutdown": True},
        "s3": {"label": "s3", "fail_shutdown": True},
        "s4": {"label": "s4"},
    }
    bus = make_bus(tmp_path, modules, settings=settings)
    with caplog.at_level(logging.ERROR):
        await bus.stop()  # must not raise
    assert calls == [
        ("s4", "shutdown"),
        ("s3", "shutdown:begin"),
        ("s3", "shutdown:end"),
        ("s2", "shutdown"),
        ("s1", "shutdown:begin"),
        ("s1", "shutdown:end"),
    ]
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 2
    for record, name in zip(failures, ["s3", "s2"], strict=True):
        text = record.getMessage()
        assert "plugbus_shutdown" in text and f"'{name}'" in text
        assert record.exc_info is not None
        assert str(record.exc_info[1]) == f"{name} cannot stop cleanly"
