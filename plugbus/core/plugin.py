"""What a plugin is: a :class:`Plugin` subclass with a settings model, or a plain module."""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, SecretStr


def _resolve_secret(value: Any) -> Any:
    """``"$env:NAME"`` or ``{"$env": "NAME"}`` -> the environment variable's value."""
    name = None
    if isinstance(value, str) and value.startswith("$env:"):
        name = value[5:]
    elif isinstance(value, dict) and set(value) == {"$env"}:
        name = value["$env"]
    if name is None:
        return value
    if not isinstance(name, str) or name not in os.environ:
        raise ValueError(f"environment variable {name} is not set")
    return os.environ[name]


#: A secret setting: a literal, or ``"$env:NAME"`` / ``{"$env": "NAME"}`` to read it from the
#: environment. It is a ``SecretStr``: shown as ``**********`` in reprs, never in error messages.
Secret = Annotated[SecretStr, BeforeValidator(_resolve_secret)]


class PluginSettings(BaseModel):
    """Base for a plugin's settings model; unknown keys in its config section are errors."""

    model_config = ConfigDict(extra="forbid")


class Plugin:
    """Base class for plugins that take settings.

    plugbus validates the plugin's ``plugins.settings.<name>`` section of config.yaml against
    ``Settings`` at start-up and constructs the plugin with the result; hooks are methods
    decorated with ``plugbus.hookimpl``. A plugin with no settings may also be a plain module of
    hook functions.

    :cvar Settings: the settings model (a :class:`PluginSettings` subclass).
    :ivar settings: the validated settings instance.
    """

    Settings: ClassVar[type[PluginSettings]] = PluginSettings

    def __init__(self, settings: PluginSettings) -> None:
        self.settings = settings
