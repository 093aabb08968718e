"""docs/plugins/bus.md cannot rot: it documents every public member of the Bus protocol and of
what the Bus hands out, names nothing that does not exist, lists every error class with its
code and status, and shows the worked example the two-node test runs. The built-in plugins
use nothing of the bus beyond the protocol."""

from __future__ import annotations

import ast
import dataclasses
import re
import types
from pathlib import Path
from typing import Any

import pluggy
import pytest

import plugbus
from plugbus import (
    Batch,
    Bus,
    Cluster,
    Connection,
    Counter,
    EventContext,
    Member,
    Origin,
    PlugbusError,
    Plugin,
    Presence,
    Store,
    Subscription,
    TextDecision,
)
from plugbus.core import bus as concrete_bus
from plugbus.core import hookspecs

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "plugins" / "bus.md"
TEXT = PAGE.read_text(encoding="utf-8")
FENCE = re.compile(r"^```([\w+-]*)\n(.*?)^```$", re.M | re.S)

#: How the page names each type's members: ``bus.emit``, ``store.incr``...
DOCUMENTED: dict[str, Any] = {
    "bus": Bus,
    "presence": Presence,
    "cluster": Cluster,
    "store": Store,
    "subscription": Subscription,
    "batch": Batch,
    "decision": TextDecision,
    "member": Member,
    "connection": Connection,
    "ctx": EventContext,
    "counter": Counter,
}


def members(cls: Any) -> set[str]:
    """The public members of a protocol or dataclass."""
    names = {n for n in vars(cls) if not n.startswith("_")}
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls)}
    return names


def section(title: str) -> str:
    start = TEXT.index(f"## {title}")
    end = TEXT.find("\n## ", start + 1)
    return TEXT[start : end if end != -1 else len(TEXT)]


def test_every_public_member_is_documented() -> None:
    for prefix, cls in DOCUMENTED.items():
        for name in sorted(members(cls)):
            assert re.search(rf"`(?:await )?{prefix}\.{name}\b", TEXT), (
                f"{prefix}.{name} ({cls.__name__}) is not documented in {PAGE.name}"
            )
    for origin in Origin:
        assert f"`Origin.{origin.name}`" in TEXT


def test_the_page_names_no_member_that_does_not_exist() -> None:
    internal = set(re.findall(r"`bus\.(\w+)`", section("Not for plugins")))
    prefixes = "|".join(DOCUMENTED)
    for prefix, name in re.findall(rf"`(?:await )?({prefixes})\.(\w+)", TEXT):
        known = members(DOCUMENTED[prefix]) | (internal if prefix == "bus" else set())
        assert name in known, f"{PAGE.name} names {prefix}.{name}, which does not exist"


def test_the_internals_list_is_exactly_what_the_protocol_leaves_out() -> None:
    running = {n for n in dir(concrete_bus.Bus) if not n.startswith("_")}
    instance_attributes = {"config", "plugins", "pm", "hooks", "default_namespace", "events"}
    instance_attributes |= {"backend", "presence", "cluster", "counters"}
    internal = set(re.findall(r"`bus\.(\w+)`", section("Not for plugins")))
    assert (running | instance_attributes) - members(Bus) == internal


def test_the_builtins_use_only_the_bus_protocol() -> None:
    used: dict[str, set[str]] = {}
    for path in (ROOT / "plugbus" / "plugins").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value
            is_bus = (isinstance(owner, ast.Name) and owner.id == "bus") or (
                isinstance(owner, ast.Attribute) and owner.attr == "bus"
            )
            if is_bus:
                used.setdefault(node.attr, set()).add(path.name)
    assert used, "no bus use found: the test reads the wrong files"
    outside = {name: files for name, files in used.items() if name not in members(Bus)}
    assert not outside, f"built-ins use bus members outside plugbus.Bus: {outside}"


def error_rows() -> dict[str, tuple[str, int]]:
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| (\d{3}) \|", section("Errors"), re.M)
    return {name: (code, int(status)) for name, code, status in rows}


def test_every_error_class_is_listed_with_its_code_and_status() -> None:
    exported = {
        name: cls
        for name in plugbus.__all__
        if isinstance(cls := getattr(plugbus, name), type) and issubclass(cls, PlugbusError)
    }
    rows = error_rows()
    assert set(rows) == set(exported)
    for name, (code, status) in rows.items():
        assert (exported[name].code, exported[name].status) == (code, status), name


def test_the_worked_example_is_the_file_the_two_node_test_runs() -> None:
    blocks = [b for lang, b in FENCE.findall(TEXT) if b.startswith("# tests/fixture_plugins/")]
    assert len(blocks) == 1
    path = blocks[0].split("\n", 1)[0][2:]
    assert (ROOT / path).read_text(encoding="utf-8") == blocks[0]


@pytest.mark.parametrize(
    "index", range(len([1 for lang, _ in FENCE.findall(TEXT) if lang == "python"]))
)
def test_each_python_example_runs_and_fits_the_hook_contract(index: int) -> None:
    block = [b for lang, b in FENCE.findall(TEXT) if lang == "python"][index]
    module = types.ModuleType(f"bus_md_example_{index}")
    exec(compile(block, f"{PAGE.name} example {index + 1}", "exec"), module.__dict__)
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    marker = f"{hookspecs.PROJECT_NAME}_impl"
    if any(hasattr(f, marker) for f in vars(module).values()):
        pm.register(module)
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, Plugin) and obj is not Plugin:
            pm.register(obj(obj.Settings()))
    pm.check_pending()
