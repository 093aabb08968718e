"""What a plugin is: a :class:`Plugin` subclass with a settings model, or a plain module."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


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
