"""Static contract checks: the hook contract is documented, the layers stay apart, the shipped
config.yaml is complete and commented, and the plugin-author surface is what it claims to be.

Every check reads the real sources (``ast``, ``inspect``) or the real files, so each fails as
soon as someone breaks the rule it states. The helpers are themselves checked against small
made-up sources, so a check cannot pass by finding nothing.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest
import yaml
from pydantic import BaseModel

import plugbus
from plugbus.core import hookspecs
from plugbus.core.config import DEFAULT_BUILTINS, Config, ServerSettings, load_config
from plugbus.core.loader import BUILTINS

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "plugbus" / "core"
PLUGINS = ROOT / "plugbus" / "plugins"
CONFIG_YAML = ROOT / "config.yaml"

#: Hooks pluggy calls itself, once, whose every result is used (at least these two).
ALWAYS_COLLECTED = frozenset({"plugbus_register_events", "plugbus_routes"})
#: What core/ may never import: web frameworks, the socket server, and the doors built on them.
CORE_FORBIDDEN = ("fastapi", "starlette", "socketio", "engineio", "uvicorn", "api", "plugbus.api")
#: What plugins/ may never import: anything but the public ``plugbus`` surface of plugbus.
PLUGINS_FORBIDDEN = ("core", "api", "plugbus.core", "plugbus.api")


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("PLUGBUS_"):
            monkeypatch.delenv(name)


# -- helpers (checked below) ------------------------------------------------------------------


def imported_modules(source: str, package: str) -> Iterator[tuple[int, str]]:
    """Every module a source imports, absolute, as ``(line, dotted name)``.

    ``from X import a`` yields ``X`` and ``X.a`` (``a`` may be a submodule); relative imports
    are resolved against ``package`` (the importing module's package).
    """
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base_parts = parts[: len(parts) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"


def matches(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def forbidden_imports(path: Path, package: str, prefixes: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for line, module in imported_modules(path.read_text(encoding="utf-8"), package)
        if matches(module, prefixes)
    ]


def is_hookimpl(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Name) and target.id == "hookimpl") or (
        isinstance(target, ast.Attribute) and target.attr == "hookimpl"
    )


def undocumented(source: str) -> list[str]:
    """Public classes and ``hookimpl``-decorated functions without a docstring."""
    missing = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            if not ast.get_docstring(node):
                missing.append(f"class {node.name} (line {node.lineno})")
        elif (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and any(is_hookimpl(d) for d in node.decorator_list)
            and not ast.get_docstring(node)
        ):
            missing.append(f"hook {node.name} (line {node.lineno})")
    return missing


KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):(?:\s|$)")


def uncommented_keys(text: str, exempt: set[tuple[str, ...]] | None = None) -> list[str]:
    """Key lines of a block-style YAML file with no comment directly above them or above the
    group of sibling key lines they belong to.

    A group is a run of consecutive key lines at one indentation with nothing between them; a
    blank line, a deeper (nested) block or a parent key ends it. Keys in ``exempt`` (dotted
    paths as tuples; a trailing ``"*"`` matches any one key) need no comment.
    """
    exempt = exempt or set()
    lines = text.splitlines()
    path: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    missing = []
    for i, line in enumerate(lines):
        m = KEY_LINE.match(line)
        if not m:
            continue
        indent, key = len(m["indent"]), m["key"]
        while path and path[-1][0] >= indent:
            path.pop()
        full = tuple(k for _, k in path) + (key,)
        path.append((indent, key))
        if full in exempt or full[:-1] + ("*",) in exempt:
            continue
        j = i - 1
        while j >= 0:
            above = lines[j]
            sibling = KEY_LINE.match(above)
            if sibling and len(sibling["indent"]) == indent:
                j -= 1
                continue
            break
        above = lines[j] if j >= 0 else ""
        stripped = above.lstrip(" ")
        if not (stripped.startswith("#") and len(above) - len(stripped) == indent):
            missing.append(f"line {i + 1}: {'.'.join(full)}")
    return missing


def test_helpers_detect_what_they_look_for() -> None:
    src = (
        "import fastapi.routing\nfrom starlette import status\nfrom ..api import socket_door\n"
        "from .. import api\nfrom . import events\nimport pydantic\n"
    )
    found = [m for _, m in imported_modules(src, "plugbus.core")]
    assert "fastapi.routing" in found and "starlette" in found
    assert "plugbus.api" in found and "plugbus.api.socket_door" in found
    assert "plugbus.core.events" in found
    bad = [m for m in found if matches(m, CORE_FORBIDDEN)]
    assert "pydantic" not in bad and "plugbus.core.events" not in bad
    assert {"fastapi.routing", "starlette", "plugbus.api", "plugbus.api.socket_door"} <= set(bad)
    plugin_src = "from plugbus import core\nfrom plugbus import Event\nfrom core.bus import Bus\n"
    bad = [
        m
        for _, m in imported_modules(plugin_src, "plugbus.plugins")
        if matches(m, PLUGINS_FORBIDDEN)
    ]
    assert bad == ["plugbus.core", "core.bus", "core.bus.Bus"]

    assert sorted(
        undocumented(
            "class A:\n    '''doc'''\n    @hookimpl\n    def plugbus_x(self): pass\n"
            "    @plugbus.hookimpl(tryfirst=True)\n    async def plugbus_y(self): pass\n"
            "    def helper(self): pass\nclass _Private: pass\nclass B: pass\n"
        )
    ) == ["class B (line 9)", "hook plugbus_x (line 4)", "hook plugbus_y (line 6)"]

    yaml_text = "# s\nserver:\n  # a\n  a: 1\n  b: 2\n\n  c: 3\n  d:\n    e: 1\n  f: 2\n"
    assert uncommented_keys(yaml_text, {("server",)}) == [
        "line 7: server.c",
        "line 8: server.d",
        "line 9: server.d.e",
        "line 10: server.f",
    ]


# -- the hook contract ------------------------------------------------------------------------


def hookspec_functions() -> dict[str, Any]:
    return {
        name: obj
        for name, obj in vars(hookspecs).items()
        if name.startswith("plugbus_") and inspect.isfunction(obj)
    }


def collected_hooks() -> set[str]:
    """The hookspecs plugbus does not await: every one not in ``AWAITED_HOOKS``."""
    return set(hookspec_functions()) - set(hookspecs.AWAITED_HOOKS)


def collected_hooks_named_in_module_docstring() -> set[str]:
    match = re.search(r"\*\*Collected hooks\*\*\s*\((.*?)\)", hookspecs.__doc__ or "", re.DOTALL)
    assert match, "the hookspecs module docstring has no 'Collected hooks (...)' list"
    return set(re.findall(r"``(plugbus_\w+)``", match.group(1)))


def test_hookspec_module_defines_the_hooks_pluggy_sees() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    registered = {name for name in vars(pm.hook) if not name.startswith("_")}
    assert registered == set(hookspec_functions())
    assert registered, "no hookspecs found"


@pytest.mark.parametrize("name", sorted(hookspec_functions()))
def test_hookspec_docstring_states_when_what_and_how(name: str) -> None:
    func = hookspec_functions()[name]
    doc = inspect.getdoc(func) or ""
    assert doc, f"{name} has no docstring"
    assert "Called" in doc, f"{name}: the docstring does not say when it is called"
    for param in inspect.signature(func).parameters:
        assert re.search(rf"^:param {re.escape(param)}:", doc, re.MULTILINE), (
            f"{name}: parameter {param!r} is not documented with ':param {param}:'"
        )
    documented = re.findall(r"^:param (\w+):", doc, re.MULTILINE)
    assert set(documented) <= set(inspect.signature(func).parameters), (
        f"{name}: documents parameters it does not have: {documented}"
    )
    if name in hookspecs.AWAITED_HOOKS:
        assert "Awaited" in doc and "Collected" not in doc, (
            f"{name} is awaited; its docstring must say so"
        )
    else:
        assert "Collected" in doc and "Not awaited" in doc, (
            f"{name} is not in AWAITED_HOOKS, so it is collected; its docstring must say so"
        )


def test_awaited_hooks_are_exactly_the_non_collected_hookspecs() -> None:
    specs = set(hookspec_functions())
    assert specs >= hookspecs.AWAITED_HOOKS, hookspecs.AWAITED_HOOKS - specs
    assert specs >= ALWAYS_COLLECTED
    assert not (hookspecs.AWAITED_HOOKS & ALWAYS_COLLECTED)
    # Every hookspec is either awaited or one of the collected hooks the module docstring lists.
    assert collected_hooks() == collected_hooks_named_in_module_docstring()
    assert collected_hooks() >= ALWAYS_COLLECTED


def test_hookspecs_are_marked_for_the_plugbus_project() -> None:
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    for name, func in hookspec_functions().items():
        assert hasattr(func, marker), f"{name} is not decorated with @hookspec"


# -- the plugin-author surface ----------------------------------------------------------------


def test_public_surface_exists_and_is_documented() -> None:
    assert len(plugbus.__all__) == len(set(plugbus.__all__))
    for name in plugbus.__all__:
        assert hasattr(plugbus, name), f"plugbus.__all__ names {name!r}, which plugbus lacks"
        obj = getattr(plugbus, name)
        if inspect.isclass(obj):
            doc = vars(obj).get("__doc__")
            assert doc and doc.strip(), f"plugbus.{name} has no docstring of its own"
            assert not doc.startswith(f"{obj.__name__}("), (
                f"plugbus.{name}: generated docstring only"
            )
        elif inspect.isfunction(obj):
            assert (obj.__doc__ or "").strip(), f"plugbus.{name} has no docstring"


def test_hookimpl_is_pluggys_marker_for_plugbus() -> None:
    assert isinstance(plugbus.hookimpl, pluggy.HookimplMarker)
    assert plugbus.hookimpl.project_name == "plugbus" == hookspecs.PROJECT_NAME


def test_names_plugins_take_from_plugbus_are_public() -> None:
    for path in sorted(PLUGINS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "plugbus" and not node.level:
                for alias in node.names:
                    assert alias.name in plugbus.__all__, (
                        f"{path.name}:{node.lineno} imports {alias.name} from plugbus, not in __all__"
                    )


# -- layering ---------------------------------------------------------------------------------


def test_sources_exist() -> None:
    assert len(list(CORE.glob("*.py"))) >= 5 and len(list(PLUGINS.rglob("*.py"))) >= 4


def test_core_imports_no_web_framework() -> None:
    problems = [
        p
        for path in sorted(CORE.glob("*.py"))
        for p in forbidden_imports(path, "plugbus.core", CORE_FORBIDDEN)
    ]
    assert problems == []


def test_plugins_import_only_plugbus_and_libraries() -> None:
    problems = [
        p
        for path in sorted(PLUGINS.rglob("*.py"))
        for p in forbidden_imports(path, "plugbus.plugins", PLUGINS_FORBIDDEN)
    ]
    assert problems == []
    # Whatever else they import is the stdlib, plugbus itself, or an installed library.
    installed = set(importlib.metadata.packages_distributions())
    for path in sorted(PLUGINS.rglob("*.py")):
        for line, module in imported_modules(path.read_text(encoding="utf-8"), "plugbus.plugins"):
            top = module.split(".")[0]
            if not module or top == "__future__" or top in sys.stdlib_module_names:
                continue
            if top == "plugbus":
                continue  # the names are checked against plugbus.__all__ above
            assert top in installed, f"{path.name}:{line}: imports {module}, which is not installed"


def test_plugins_document_public_classes_and_hooks() -> None:
    problems = [
        f"{path.name}: {item}"
        for path in sorted(PLUGINS.rglob("*.py"))
        for item in undocumented(path.read_text(encoding="utf-8"))
    ]
    assert problems == []


# -- the shipped config.yaml ------------------------------------------------------------------


def test_packaged_config_is_a_symlink_to_the_top_level_file() -> None:
    packaged = ROOT / "plugbus" / "config.yaml"
    assert packaged.is_symlink()
    assert packaged.resolve() == CONFIG_YAML.resolve()
    assert packaged.read_bytes() == CONFIG_YAML.read_bytes()


def test_embedded_default_loads_to_the_same_values_as_config_yaml() -> None:
    embedded = load_config(None)
    top = load_config(CONFIG_YAML)
    assert embedded.config.model_dump() == top.config.model_dump()
    assert Path(embedded.path).read_text(encoding="utf-8") == CONFIG_YAML.read_text(
        encoding="utf-8"
    )


def model_keys(
    model: type[BaseModel], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every field of a model, recursively into nested models: ``(path, field info)``."""
    for name, info in model.model_fields.items():
        yield prefix + (name,), info
        ann = info.annotation
        if inspect.isclass(ann) and issubclass(ann, BaseModel):
            yield from model_keys(ann, prefix + (name,))


def lookup(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            raise KeyError(".".join(path))
        data = data[part]
    return data


def builtin_settings_models() -> dict[str, type[BaseModel]]:
    out = {}
    for name, target in BUILTINS.items():
        module, _, attr = target.partition(":")
        out[name] = getattr(importlib.import_module(module), attr).Settings
    return out


def test_config_yaml_has_every_config_key() -> None:
    data = yaml.safe_load(CONFIG_YAML.read_text(encoding="utf-8"))
    paths = [path for path, _ in model_keys(Config)]
    assert ("server", "cors", "origins") in paths and ("plugins", "modules") in paths
    missing = []
    for path in paths:
        try:
            lookup(data, path)
        except KeyError:
            missing.append(".".join(path))
    assert missing == []


def test_config_yaml_has_every_builtin_plugin_setting() -> None:
    data = yaml.safe_load(CONFIG_YAML.read_text(encoding="utf-8"))
    sections = data["plugins"]["settings"]
    assert set(DEFAULT_BUILTINS) == set(data["plugins"]["builtins"])
    # the rest are off by default (webhooks): loadable by name, their section still present
    assert set(DEFAULT_BUILTINS) < set(BUILTINS)
    for name, model in builtin_settings_models().items():
        assert isinstance(sections.get(name), dict), f"plugins.settings.{name} is missing"
        for field in model.model_fields:
            assert field in sections[name], f"plugins.settings.{name}.{field} is missing"


def test_config_yaml_values_are_the_defaults() -> None:
    """The file says every key is there "with its default value"."""
    config = load_config(CONFIG_YAML).config
    defaults = Config()
    assert config.server == defaults.server
    assert config.plugins.model_dump(exclude={"settings"}) == defaults.plugins.model_dump(
        exclude={"settings"}
    )
    for name, model in builtin_settings_models().items():
        assert model.model_validate(config.plugins.settings[name]) == model(), name


def test_config_yaml_keys_are_commented() -> None:
    text = CONFIG_YAML.read_text(encoding="utf-8")
    # Sections are introduced by the header; plugin names under plugins.settings by the comment
    # above `settings:` (their own keys are commented one by one).
    exempt = {("server",), ("plugins",), ("plugins", "settings", "*")}
    assert uncommented_keys(text, exempt) == []
    keys = [m["key"] for m in map(KEY_LINE.match, text.splitlines()) if m]
    assert {"server", "cors", "origins", "plugins", "settings", "blocked_words"} <= set(keys)


def test_every_server_key_has_a_comment_directly_above_its_group() -> None:
    """The explicit form of the rule for ``server:``, independent of the helper above."""
    lines = CONFIG_YAML.read_text(encoding="utf-8").splitlines()
    start = lines.index("server:")
    end = next(i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith(" "))
    server_keys = [path for path, _ in model_keys(ServerSettings)]
    seen = 0
    for i in range(start + 1, end):
        m = KEY_LINE.match(lines[i])
        if not m:
            continue
        seen += 1
        indent = m["indent"]
        j = i - 1
        while (above := KEY_LINE.match(lines[j])) is not None and above["indent"] == indent:
            j -= 1
        assert lines[j].startswith(indent + "#"), (
            f"config.yaml line {i + 1} ({lines[i].strip()}) is uncommented"
        )
    assert seen == len(server_keys)
