"""Building the plugin manager: built-ins, entry points and dotted paths, with their settings.

The order follows pytest: names in ``plugins.disabled`` are blocked first, so a blocked entry
point is never even imported; then built-ins, installed entry-point packages (group
``plugbus``) and ``plugins.modules`` are registered in that order; ``check_pending`` finally
catches a misspelt hook name. Every failure is a :class:`ConfigError` naming the plugin and,
where there is one, the config key.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pluggy
from pydantic import ValidationError

from . import hookspecs
from .config import LoadedConfig, format_config_errors
from .errors import ConfigError
from .hooks import PluginManager
from .plugin import Plugin, PluginSettings

#: Built-in plugin name -> "module:Class" inside the installed package. Those not in
#: ``config.DEFAULT_BUILTINS`` (webhooks) are off until ``plugins.builtins`` names them.
BUILTINS: dict[str, str] = {
    "auth": "plugbus.plugins.auth:AuthPlugin",
    "welcome": "plugbus.plugins.welcome:WelcomePlugin",
    "rooms": "plugbus.plugins.rooms:RoomsPlugin",
    "relay": "plugbus.plugins.relay:RelayPlugin",
    "moderation": "plugbus.plugins.moderation:ModerationPlugin",
    "webhooks": "plugbus.plugins.webhooks:WebhooksPlugin",
}

ENTRY_POINT_GROUP = "plugbus"


class PluginSource(StrEnum):
    """Where a plugin came from."""

    BUILTIN = "builtin"
    ENTRY_POINT = "entry point"
    MODULE = "module"


@dataclass(slots=True)
class PluginInfo:
    """One loaded plugin, as ``plugbus plugins`` and ``GET /plugins`` show it."""

    name: str
    source: PluginSource
    version: str | None
    target: str
    hooks: list[str] = field(default_factory=list)
    settings: PluginSettings | None = None
    obj: Any = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able description (settings are left out: they may hold secrets)."""
        return {
            "name": self.name,
            "source": str(self.source),
            "version": self.version,
            "target": self.target,
            "hooks": self.hooks,
        }


@dataclass(slots=True)
class LoadedPlugins:
    """The plugin manager and what is in it."""

    pm: PluginManager
    plugins: list[PluginInfo]


def _plugbus_version() -> str | None:
    try:
        return importlib.metadata.version("plugbus")
    except importlib.metadata.PackageNotFoundError:  # running from a bare checkout
        return None


def _import_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def load_plugins(loaded: LoadedConfig) -> LoadedPlugins:
    """Create a fresh plugin manager for one application and register its plugins.

    :raises ConfigError: unknown plugin name, unimportable module, bad plugin settings,
        clashing names, an implementation of an unknown hook, or a wrapper on an awaited hook.
    """
    cfg = loaded.config.plugins
    pm = PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in cfg.disabled:
        pm.set_blocked(name)

    wanted: list[tuple[str, PluginSource, str, str | None]] = []  # name, source, target, version
    version = _plugbus_version()
    for i, name in enumerate(cfg.builtins):
        if name not in BUILTINS:
            raise ConfigError(
                loaded.error(
                    ("plugins", "builtins", i),
                    f"no built-in plugin named {name!r} (built-ins are: {', '.join(BUILTINS)})",
                )
            )
        wanted.append((name, PluginSource.BUILTIN, BUILTINS[name], version))

    entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    if cfg.entry_points:
        for ep in entry_points:
            if pm.is_blocked(ep.name):
                continue
            if ep.name in BUILTINS:
                dist = ep.dist.name if ep.dist else "an installed package"
                raise ConfigError(
                    f"the entry point {ep.name!r} of {dist} has the name of a built-in plugin; "
                    f"a replacement needs a name of its own (disable the built-in with "
                    f"plugins.builtins, and install the replacement under another name)"
                )
            wanted.append(
                (ep.name, PluginSource.ENTRY_POINT, ep.value, ep.dist.version if ep.dist else None)
            )
    for name, target in cfg.modules.items():
        wanted.append((name, PluginSource.MODULE, target, None))

    known = set(BUILTINS) | {ep.name for ep in entry_points} | set(cfg.modules)
    for name in cfg.settings:
        if name not in known:
            raise ConfigError(
                loaded.error(
                    ("plugins", "settings", name),
                    f"settings for {name!r}, but no plugin has that name "
                    f"(known: {', '.join(sorted(known))})",
                )
            )

    infos: list[PluginInfo] = []
    seen: set[str] = set()
    for name, source, target, ver in wanted:
        if pm.is_blocked(name):
            continue
        if name in seen:
            raise ConfigError(f"two plugins are named {name!r}; plugin names must be unique")
        seen.add(name)
        infos.append(_register(pm, loaded, name, source, target, ver))
    # Sections for known plugins that are not loaded (a switched-off built-in, say) are still
    # checked, so a typo does not wait until the day the plugin is switched back on.
    for name in cfg.settings:
        if name in BUILTINS and name not in seen:
            _settings_for(loaded, name, _import_target(BUILTINS[name]))

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"plugin {pm.get_name(exc.plugin)!r}: {exc}") from None
    for info in infos:
        if info.obj is not None:
            info.hooks = sorted(caller.name for caller in pm.get_hookcallers(info.obj) or [])
    return LoadedPlugins(pm, infos)


def _settings_for(loaded: LoadedConfig, name: str, obj: Any) -> PluginSettings | None:
    section = loaded.config.plugins.settings.get(name, {})
    model = getattr(obj, "Settings", None) if inspect.isclass(obj) else None
    if model is None:
        if section:
            raise ConfigError(
                loaded.error(("plugins", "settings", name), f"plugin {name!r} takes no settings")
            )
        return None
    try:
        return model.model_validate(section)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise ConfigError(
            f"plugin {name!r}: "
            + format_config_errors(exc, loaded.path, loaded._lines, ("plugins", "settings", name))
        ) from None


def _register(
    pm: pluggy.PluginManager,
    loaded: LoadedConfig,
    name: str,
    source: PluginSource,
    target: str,
    version: str | None,
) -> PluginInfo:
    try:
        obj = _import_target(target)
    except Exception as exc:  # any import-time failure is the plugin's, reported as such
        key = ("plugins", "modules", name) if source is PluginSource.MODULE else ("plugins",)
        raise ConfigError(
            loaded.error(
                key,
                f"cannot load plugin {name!r} from {target!r} ({source}): {type(exc).__name__}: {exc}",
            )
        ) from None
    settings = _settings_for(loaded, name, obj)
    if inspect.isclass(obj):
        if not issubclass(obj, Plugin):
            raise ConfigError(f"plugin {name!r}: {target!r} is a class but not a plugbus.Plugin")
        instance: Any = obj(settings if settings is not None else PluginSettings())
    else:
        instance = obj
    if source is PluginSource.MODULE and version is None:
        module = inspect.getmodule(instance)
        version = getattr(module, "__version__", None)
    try:
        pm.register(instance, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise ConfigError(f"plugin {name!r} ({target}): {exc}") from None
    for hook_name in hookspecs.AWAITED_HOOKS:
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin_name == name and impl.hookwrapper:
                raise ConfigError(
                    f"plugin {name!r}: {hook_name} is awaited by plugbus and cannot take an "
                    f"old-style hookwrapper; use hookimpl(wrapper=True) or tryfirst/trylast"
                )
    return PluginInfo(name, source, version, target, settings=settings, obj=instance)
