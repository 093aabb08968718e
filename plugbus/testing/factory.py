"""The server factory: :class:`PlugbusServerFactory`, what the ``plugbus_server`` fixture gives."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import yaml

from plugbus.core import load_config
from plugbus.testing.process import PlugbusProcess
from plugbus.testing.recorder import (
    _RECORDER_TARGET,
    _RECORDERS,
    RECORDER_NAME,
    HookRecorder,
)
from plugbus.testing.server import PlugbusServer
from plugbus.testing.server_config import _kit_config, _plugbus_environment, _target

if TYPE_CHECKING:
    from plugbus.api.app import Application

_ids = itertools.count(1)


class PlugbusServerFactory:
    """What the :func:`plugbus_server` fixture gives: call it to start a server."""

    def __init__(self, directory_factory: Callable[[], Path]) -> None:
        self._directory = directory_factory
        self.servers: list[PlugbusServer] = []
        self.processes: list[PlugbusProcess] = []

    async def __call__(
        self,
        *,
        plugins: Mapping[str, str | type | ModuleType] | None = None,
        builtins: Sequence[str] | None = None,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        config: Mapping[str, Any] | None = None,
        entry_points: bool = False,
        disabled: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        record_hooks: bool = True,
        timeout: float = 20.0,
    ) -> PlugbusServer:
        """Start plugbus and return the running :class:`PlugbusServer`.

        The config is the embedded default, with a free port, ``log_level: warning`` and
        short pings, then these arguments laid over it:

        :param plugins: ``plugins.modules``: name -> ``"pkg.module[:Class]"``, or the module
            or module-level class itself.
        :param builtins: ``plugins.builtins`` (default: all of them; ``[]`` for none).
        :param settings: ``plugins.settings``, merged key by key over the defaults.
        :param config: any other keys, merged last (``{"server": {"name": "test"}}``).
        :param entry_points: ``plugins.entry_points``; off by default so that only what the
            test names is loaded — switch it on to load your installed package.
        :param disabled: ``plugins.disabled``.
        :param env: ``PLUGBUS_*`` variables seen while the config loads; the process's own
            ``PLUGBUS_*`` variables are hidden then, so tests do not depend on the shell.
        :param record_hooks: load the hook recorder (``server.hooks``); it is a plugin like
            any other and shows in ``GET /plugins`` as ``hook-recorder``.
        :raises ConfigError: the config or a plugin is wrong (as ``plugbus serve`` would say).
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        try:
            app, path, recorder = build_app(
                self._directory(),
                port,
                plugins=plugins,
                builtins=builtins,
                settings=settings,
                config=config,
                entry_points=entry_points,
                disabled=disabled,
                env=env,
                record_hooks=record_hooks,
            )
        except BaseException:
            sock.close()
            raise
        server = PlugbusServer(app, sock, path, recorder)
        self.servers.append(server)
        await server._serve(timeout)
        return server

    async def spawn(
        self,
        *,
        plugins: Mapping[str, str | type | ModuleType] | None = None,
        builtins: Sequence[str] | None = None,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        config: Mapping[str, Any] | None = None,
        entry_points: bool = False,
        disabled: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = 20.0,
    ) -> PlugbusProcess:
        """Start ``python -m plugbus serve`` in a child process and return the running
        :class:`PlugbusProcess` once it serves; it is stopped when the test ends.

        The arguments are those of :meth:`__call__` (there is no hook recorder: the plugins
        run in another process); ``env`` is the child's environment on top of the test's.

        :raises PlugbusExited: the process exited before it served (its output says why).
        """
        process = await asyncio.to_thread(
            PlugbusProcess.start,
            self._directory(),
            plugins=plugins,
            builtins=builtins,
            settings=settings,
            config=config,
            entry_points=entry_points,
            disabled=disabled,
            env=env,
            timeout=timeout,
        )
        self.processes.append(process)
        return process

    async def aclose(self) -> None:
        """Stop every server and process this factory started, side by side (all of them,
        even when one fails to stop; the first error is raised afterwards)."""
        servers, self.servers = self.servers, []
        processes, self.processes = self.processes, []
        results = await asyncio.gather(
            *(server.stop() for server in servers),
            *(process.aclose() for process in processes),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]


def build_app(
    directory: Path,
    port: int,
    *,
    plugins: Mapping[str, str | type | ModuleType] | None,
    builtins: Sequence[str] | None,
    settings: Mapping[str, Mapping[str, Any]] | None,
    config: Mapping[str, Any] | None,
    entry_points: bool,
    disabled: Sequence[str],
    env: Mapping[str, str] | None,
    record_hooks: bool,
) -> tuple[Application, Path, HookRecorder | None]:
    """The application the kit's config makes (written to ``directory``), with its recorder.

    :raises ConfigError: the config or a plugin is wrong.
    """
    from plugbus.api.app import create_app

    modules = {name: _target(name, plugin) for name, plugin in (plugins or {}).items()}
    data = _kit_config(
        port, modules, builtins, settings or {}, config or {}, entry_points, disabled
    )
    recorder: HookRecorder | None = None
    key = ""
    if record_hooks:
        recorder = HookRecorder()
        key = f"r{next(_ids)}"
        _RECORDERS[key] = recorder
        data["plugins"]["modules"][RECORDER_NAME] = _RECORDER_TARGET
        data["plugins"]["settings"][RECORDER_NAME] = {"recorder": key}
    path = directory / f"plugbus-{port}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    try:
        with _plugbus_environment(env or {}):
            app = create_app(load_config(path))
    finally:
        if recorder is not None:
            _RECORDERS.pop(key)
    if recorder is not None:
        recorder._pm = app.bus.pm
    return app, path, recorder
