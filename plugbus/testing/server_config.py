"""The config a test server runs with: the embedded default, the kit's settings and the test's own."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

import yaml

from plugbus.core.config import default_config_path


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _target(name: str, plugin: str | type | ModuleType) -> str:
    """``"pkg.mod[:Class]"`` for a plugin given as a dotted path, a class or a module."""
    if isinstance(plugin, str):
        return plugin
    if isinstance(plugin, ModuleType):
        return plugin.__name__
    if isinstance(plugin, type) and "<locals>" not in plugin.__qualname__:
        return f"{plugin.__module__}:{plugin.__qualname__}"
    raise TypeError(
        f"plugin {name!r}: give a dotted path, a module, or a module-level class "
        f"(plugbus imports plugins by path), not {plugin!r}"
    )


def _kit_config(
    port: int,
    modules: dict[str, str],
    builtins: Sequence[str] | None,
    settings: Mapping[str, Mapping[str, Any]],
    config: Mapping[str, Any],
    entry_points: bool,
    disabled: Sequence[str],
) -> dict[str, Any]:
    """The embedded default config, with the kit's server settings and the test's plugins."""
    data = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))
    section: dict[str, Any] = {
        "entry_points": entry_points,
        "disabled": list(disabled),
        "modules": modules,
        "settings": dict(settings),
    }
    if builtins is not None:
        section["builtins"] = list(builtins)
    data = _deep_merge(
        data,
        {
            # Short pings: a client on long-polling takes ping_interval + ping_timeout to leave.
            "server": {
                "log_level": "warning",
                "ping_interval": 2,
                "ping_timeout": 5,
                "shutdown_timeout": 2,
            },
            "plugins": section,
        },
    )
    data = _deep_merge(data, config)
    data["server"]["port"] = port  # the socket the kit bound, whatever the test said
    return data


@contextlib.contextmanager
def _plugbus_environment(env: Mapping[str, str]) -> Iterator[None]:
    """Hide the process's PLUGBUS_* variables and set ``env`` instead, while config loads."""
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith("PLUGBUS_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)
