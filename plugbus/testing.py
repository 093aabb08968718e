"""The plugbus test kit: a pytest plugin for plugin authors.

Installed with plugbus and loaded by pytest through the ``pytest11`` entry point, so its one
fixture is there in every test without a conftest. It has no autouse fixture::

    async def test_echo(plugbus_server):
        server = await plugbus_server(plugins={"echo": "my_pkg:EchoPlugin"}, builtins=[])
        alice, bob = await server.client(), await server.client()
        assert await alice.call("echo", {"text": "hi"}) == {"ok": True, "data": {"echo": "hi"}}
        assert await bob.wait_for("echoed") == ["hi"]
        assert (await server.http.get("/health")).status_code == 200
        server.hooks.for_connection(alice.sid).assert_order(["plugbus_connect", "plugbus_handle_event"])

``plugbus_server`` starts a real plugbus — the application ``plugbus serve`` builds, served
by uvicorn on a free loopback port in the test's own event loop — with the given plugins and
config. ``server.client()`` connects a real python-socketio ``AsyncClient`` that records every
event it receives; ``server.http`` is an ``httpx.AsyncClient`` for the REST door;
``server.hooks`` records every hook call in order (see :class:`HookRecorder`). Everything is
stopped when the test ends. The kit needs pytest-asyncio, httpx and aiohttp (the test extras).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import math
import os
import socket
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, overload

import pytest
import yaml

from plugbus.core import Plugin, PluginSettings, hookimpl, load_config
from plugbus.core import hookspecs as _hookspecs
from plugbus.core.config import default_config_path

if TYPE_CHECKING:
    import httpx
    import pluggy
    import socketio
    import uvicorn

    from plugbus.api.app import Application
    from plugbus.core import Bus, Config

try:  # pytest-asyncio in strict mode only runs async fixtures declared with its decorator
    from pytest_asyncio import fixture as _async_fixture
except ImportError:  # pragma: no cover - the kit then fails when used, not when pytest starts
    _async_fixture = pytest.fixture  # type: ignore[assignment]

__all__ = [
    "ClientRefused",
    "HookCall",
    "HookCalls",
    "HookRecorder",
    "HookRecorderPlugin",
    "PlugbusClient",
    "PlugbusServer",
    "PlugbusServerFactory",
    "plugbus_server",
]

#: The name the hook recorder is registered under (it shows in ``GET /plugins``).
RECORDER_NAME = "hook-recorder"
_RECORDERS: dict[str, HookRecorder] = {}
_ids = itertools.count(1)
_NOTHING: Any = object()


# -- recording hook calls -------------------------------------------------------------------


class HookCall:
    """One recorded hook call: its name, its arguments and, once it returned, its outcome.

    Arguments are also attributes (``call.event``, ``call.connection``), as in pytest's
    ``HookRecorder``. They are the live objects the hook received (a later change to, say,
    ``connection.state`` shows here too); for ``plugbus_moderate``, ``event`` is the event
    before moderation and ``result`` the event after it.

    :ivar name: the hook's name, e.g. ``"plugbus_moderate"``.
    :ivar kwargs: the arguments by name.
    :ivar result: what the call returned (for awaited hooks: what plugbus made of the walk).
    :ivar error: the exception the call raised, or None.
    :ivar done: False while the call is still running.
    """

    def __init__(self, name: str, kwargs: dict[str, Any]) -> None:
        self.name = name
        self.kwargs = kwargs
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["kwargs"][key]
        except KeyError:
            raise AttributeError(f"{self.name} has no argument {key!r}") from None

    @property
    def sid(self) -> str | None:
        """The connection the call is about (``connection.sid`` or ``ctx.sid``), or None."""
        connection = self.kwargs.get("connection")
        if connection is None:
            connection = getattr(self.kwargs.get("ctx"), "connection", None)
        return getattr(connection, "sid", None)

    def __repr__(self) -> str:
        args = ", ".join(sorted(self.kwargs))
        state = f"error={self.error!r}" if self.error else ("done" if self.done else "running")
        return f"<HookCall {self.name}({args}) {state}>"


class HookCalls(Sequence[HookCall]):
    """A list of recorded hook calls, in the order they started, with ways to query it."""

    def __init__(self, calls: Iterable[HookCall] = ()) -> None:
        self._calls = list(calls)

    @overload
    def __getitem__(self, index: int) -> HookCall: ...
    @overload
    def __getitem__(self, index: slice) -> HookCalls: ...
    def __getitem__(self, index: int | slice) -> HookCall | HookCalls:
        if isinstance(index, slice):
            return HookCalls(self._calls[index])
        return self._calls[index]

    def __len__(self) -> int:
        return len(self._calls)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.names()!r})"

    @property
    def calls(self) -> list[HookCall]:
        """The calls, as a plain list (a copy)."""
        return list(self._calls)

    def names(self) -> list[str]:
        """The hook names, in call order."""
        return [call.name for call in self._calls]

    def getcalls(self, names: str | Iterable[str]) -> HookCalls:
        """The calls of the given hooks (a list, or one string of space-separated names)."""
        wanted = set(names.split() if isinstance(names, str) else names)
        return HookCalls(call for call in self._calls if call.name in wanted)

    def getcall(self, name: str) -> HookCall:
        """The one call of hook ``name``.

        :raises AssertionError: it was called no times, or more than once.
        """
        found = self.getcalls(name)
        if len(found) != 1:
            raise AssertionError(f"expected 1 call of {name}, found {len(found)}: {self.names()}")
        return found[0]

    def for_connection(self, sid: str) -> HookCalls:
        """The calls about one connection (their ``connection`` or ``ctx.connection``)."""
        return HookCalls(call for call in self._calls if call.sid == sid)

    def assert_order(self, names: Sequence[str]) -> None:
        """Assert that hooks ``names`` were called in this order (other calls may come between).

        :raises AssertionError: naming the first hook not found after the previous one.
        """
        recorded = self.names()
        position = 0
        for name in names:
            try:
                position = recorded.index(name, position) + 1
            except ValueError:
                raise AssertionError(
                    f"{name} was not called after {names[: names.index(name)] or 'the start'}; "
                    f"recorded: {recorded}"
                ) from None


class HookRecorder(HookCalls):
    """Records every hook call of one server's plugin manager, as it happens.

    Filled by :class:`HookRecorderPlugin`, a plugin whose implementations of every hook are
    ``tryfirst`` new-style wrappers: they run around all other implementations (and around
    other ``tryfirst`` wrappers, being registered last), for the hooks pluggy calls and for
    the awaited hooks plugbus walks itself alike. A call is recorded when it starts, and
    marked done with its result or error when it returns.
    """

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()
        self._pm: pluggy.PluginManager | None = None

    def clear(self) -> None:
        """Forget the calls recorded so far (e.g. the start-up hooks)."""
        self._calls.clear()

    def impl_order(self, name: str) -> list[str]:
        """The implementations hook ``name`` calls, in call order, as ``"plugin:function"``.

        This is pluggy's order (``tryfirst`` first, ``trylast`` last, otherwise the most
        recently registered first), wrappers left out. An implementation may stop the walk
        early: a veto, or the first answer of ``plugbus_handle_event``.
        """
        if self._pm is None:
            raise RuntimeError("the recorder is not attached to a server yet")
        impls = reversed(getattr(self._pm.hook, name).get_hookimpls())
        return [f"{i.plugin_name}:{i.function.__name__}" for i in impls
                if not (i.wrapper or i.hookwrapper)]

    async def wait_for(self, name: str, *, sid: str | None = None, count: int = 1,
                       timeout: float = 5.0) -> HookCall:
        """Wait until hook ``name`` (about connection ``sid``, if given) has returned ``count``
        times, and return that call. Useful for hooks the server runs on its own time, such
        as ``plugbus_disconnect`` after a client left.

        :raises AssertionError: not within ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            done = [c for c in self._calls if c.name == name and c.done and (sid is None or c.sid == sid)]
            if len(done) >= count:
                return done[count - 1]
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{name} returned {len(done)} times, wanted {count}; "
                                     f"recorded: {self.names()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _record(self, name: str, kwargs: dict[str, Any]) -> Generator[None, Any, Any]:
        call = HookCall(name, kwargs)
        self._calls.append(call)
        try:
            result = yield
        except BaseException as exc:
            call.error, call.done = exc, True
            self._changed.set()
            raise
        call.result, call.done = result, True
        self._changed.set()
        return result


def _hook_argnames() -> dict[str, tuple[str, ...]]:
    """Every hookspec's name and argument names, read from the hook contract itself."""
    marker = f"{_hookspecs.PROJECT_NAME}_spec"
    return {name: tuple(inspect.signature(func).parameters)
            for name, func in vars(_hookspecs).items()
            if name.startswith("plugbus_") and callable(func) and hasattr(func, marker)}


def _recording_wrapper(recorder: HookRecorder, name: str, argnames: tuple[str, ...]) -> Callable[..., Any]:
    # pluggy reads an implementation's argument names from its code object, so the wrapper
    # is compiled with the hookspec's own argument names (as dataclasses builds __init__).
    if not all(a.isidentifier() for a in (name, *argnames)):
        raise ValueError(f"unexpected hook signature {name}{argnames}")
    source = (f"def {name}({', '.join(argnames)}):\n"
              f"    return (yield from _record(_name, {{{', '.join(f'{a!r}: {a}' for a in argnames)}}}))\n")
    namespace: dict[str, Any] = {"_record": recorder._record, "_name": name}
    exec(source, namespace)  # noqa: S102 - the source is built from hookspec identifiers only
    function = namespace[name]
    function.__doc__ = f"Record each call of ``{name}`` (a tryfirst new-style wrapper)."
    return hookimpl(wrapper=True, tryfirst=True)(function)  # type: ignore[no-any-return]


class HookRecorderPlugin(Plugin):
    """The plugin that feeds a :class:`HookRecorder`: a ``tryfirst`` wrapper on every hook.

    The test kit loads it by dotted path, last in ``plugins.modules`` under the name
    ``hook-recorder``, so it goes through the same loader as every plugin. Its setting
    ``recorder`` names the recorder it feeds.
    """

    class Settings(PluginSettings):
        """``recorder``: the id of the :class:`HookRecorder` to feed."""

        recorder: str

    def __init__(self, settings: PluginSettings) -> None:
        super().__init__(settings)
        recorder = _RECORDERS[settings.recorder]  # type: ignore[attr-defined]
        for name, argnames in _hook_argnames().items():
            setattr(self, name, _recording_wrapper(recorder, name, argnames))


# -- clients --------------------------------------------------------------------------------


class ClientRefused(Exception):
    """The server refused a test client's connection (``plugbus_connect`` raised).

    :ivar error: the refusal in plugbus's error shape, ``{code, message, details}``.
    """

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"connection refused: {error.get('code')}: {error.get('message')}")
        self.error = error


class PlugbusClient:
    """A real python-socketio ``AsyncClient`` on a test server that records what it receives.

    :ivar sio: the underlying ``socketio.AsyncClient``.
    :ivar namespace: the namespace it is connected to.
    :ivar events: every event received, in order, as ``(name, payload)``.
    """

    def __init__(self, sio: socketio.AsyncClient, namespace: str) -> None:
        self.sio = sio
        self.namespace = namespace
        self.events: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()

    def _receive(self, event: str, *args: Any) -> None:
        self.events.append((event, args[0] if len(args) == 1 else (list(args) or None)))
        self._changed.set()

    @property
    def sid(self) -> str:
        """This connection's id (as plugins see it in ``connection.sid``)."""
        sid = self.sio.get_sid(self.namespace)
        if sid is None:
            raise RuntimeError("the client is not connected")
        return str(sid)

    def received(self, event: str) -> list[Any]:
        """The payloads of every ``event`` received so far, in order."""
        return [data for name, data in self.events if name == event]

    async def wait_for(self, event: str, count: int = 1, *, timeout: float = 5.0) -> list[Any]:
        """Wait until ``event`` arrived at least ``count`` times; return all its payloads.

        :raises AssertionError: not within ``timeout`` seconds (the message lists what came).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.received(event)) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{event!r} arrived {len(self.received(event))} times, "
                                     f"wanted {count}; received: {self.events!r}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return self.received(event)

    async def call(self, event: str, payload: Any = _NOTHING, *, timeout: float = 5.0) -> Any:
        """Send ``event`` asking for an ack, and return the ack: ``{"ok": True, "data": ...}``
        or ``{"ok": False, "error": {code, message, details}}``. Leave ``payload`` out to send
        an event without one."""
        args = () if payload is _NOTHING else (payload,)
        return await self.sio.call(event, *args, namespace=self.namespace, timeout=timeout)

    async def emit(self, event: str, payload: Any = _NOTHING) -> None:
        """Send ``event`` without asking for an ack (a refusal then arrives as ``error``)."""
        args = () if payload is _NOTHING else (payload,)
        await self.sio.emit(event, *args, namespace=self.namespace)

    async def disconnect(self) -> None:
        """Close the connection (the server then runs ``plugbus_disconnect``).

        A client still on long-polling takes up to ``ping_interval + ping_timeout`` seconds
        (python-engineio waits for its pending poll); one upgraded to websocket is immediate.
        """
        if self.sio.connected:
            await self.sio.disconnect()


# -- servers --------------------------------------------------------------------------------


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
    raise TypeError(f"plugin {name!r}: give a dotted path, a module, or a module-level class "
                    f"(plugbus imports plugins by path), not {plugin!r}")


def _kit_config(
    port: int, modules: dict[str, str], builtins: Sequence[str] | None,
    settings: Mapping[str, Mapping[str, Any]], config: Mapping[str, Any], entry_points: bool,
    disabled: Sequence[str],
) -> dict[str, Any]:
    """The embedded default config, with the kit's server settings and the test's plugins."""
    data = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))
    section: dict[str, Any] = {"entry_points": entry_points, "disabled": list(disabled),
                               "modules": modules, "settings": dict(settings)}
    if builtins is not None:
        section["builtins"] = list(builtins)
    data = _deep_merge(data, {
        # Short pings: a client on long-polling takes ping_interval + ping_timeout to leave.
        "server": {"log_level": "warning", "ping_interval": 2, "ping_timeout": 5, "shutdown_timeout": 2},
        "plugins": section,
    })
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


def _server_class() -> type[uvicorn.Server]:
    import uvicorn

    class _Server(uvicorn.Server):
        """uvicorn inside a test: no signal handlers; a failed start-up returns, not exits."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            try:
                await super().startup(sockets)
            except SystemExit:
                self.should_exit = True

    return _Server


class PlugbusServer:
    """A plugbus application served on a loopback port in the test's event loop.

    Start one with the :func:`plugbus_server` fixture. It is the application ``plugbus
    serve`` runs (``create_app`` on a config file the kit writes), served by uvicorn, so
    ``plugbus_startup`` and ``plugbus_shutdown`` run through the ASGI lifespan as in
    production.

    :ivar url: ``http://127.0.0.1:PORT``.
    :ivar port: the port.
    :ivar app: the :class:`~plugbus.api.app.Application` (``.asgi``, ``.bus``, ``.rest``, ``.sio``).
    :ivar config_path: the config file it was built from.
    :ivar http: an ``httpx.AsyncClient`` with ``base_url=url``, for the REST door.
    :ivar clients: the clients connected with :meth:`client`.
    """

    def __init__(self, app: Application, sock: socket.socket, config_path: Path,
                 recorder: HookRecorder | None) -> None:
        import httpx

        self.app = app
        self.port: int = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = config_path
        self.http: httpx.AsyncClient = httpx.AsyncClient(base_url=self.url, timeout=10)
        self.clients: list[PlugbusClient] = []
        self._sock = sock
        self._recorder = recorder
        self._lifespan_error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._uvicorn: uvicorn.Server | None = None

    @property
    def bus(self) -> Bus:
        """The running :class:`~plugbus.Bus` (in this process: inspect it, call it)."""
        return self.app.bus

    @property
    def config(self) -> Config:
        """The validated configuration the server runs with."""
        return self.app.bus.config

    @property
    def hooks(self) -> HookRecorder:
        """Every hook call so far, in order (see :class:`HookRecorder`).

        :raises RuntimeError: the server was started with ``record_hooks=False``.
        """
        if self._recorder is None:
            raise RuntimeError("this server was started with record_hooks=False")
        return self._recorder

    async def _lifespan_spy(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app.asgi(scope, receive, send)
        except BaseException as exc:
            if scope["type"] == "lifespan":
                self._lifespan_error = exc
            raise

    async def _serve(self, timeout: float) -> None:
        import uvicorn

        server = self.config.server
        self._uvicorn = _server_class()(uvicorn.Config(
            self._lifespan_spy, interface="asgi3", host="127.0.0.1", port=self.port, log_config=None,
            log_level=server.log_level, lifespan="on", ws_max_size=server.max_message_bytes,
            timeout_graceful_shutdown=math.ceil(server.shutdown_timeout),
        ))
        self._task = asyncio.create_task(self._uvicorn.serve(sockets=[self._sock]))
        deadline = asyncio.get_running_loop().time() + timeout
        while not self._uvicorn.started:
            if self._task.done() or asyncio.get_running_loop().time() > deadline:
                await self._halt()
                if self._lifespan_error is not None:
                    raise self._lifespan_error
                raise RuntimeError(f"plugbus did not start within {timeout} s (see the log)")
            await asyncio.sleep(0.01)

    async def client(self, *, transports: Sequence[str] | None = None, auth: Any = None,
                     headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> PlugbusClient:
        """Connect a new real Socket.IO client and return it once connected.

        :param transports: e.g. ``["websocket"]`` or ``["polling"]`` (default: those the server
            accepts, ``server.transports``: polling first, upgraded to websocket).
        :param auth: the handshake ``auth`` payload (``connection.auth`` in the hooks).
        :param headers: extra HTTP headers for the handshake.
        :raises ClientRefused: a plugin refused the connection.
        """
        import socketio

        namespace = self.config.server.namespace
        sio = socketio.AsyncClient(reconnection=False)
        client = PlugbusClient(sio, namespace)
        refusals: list[Any] = []
        sio.on("*", client._receive, namespace=namespace)
        sio.on("connect_error", lambda data=None: refusals.append(data), namespace=namespace)
        try:
            await sio.connect(self.url, namespaces=[namespace],
                              transports=list(transports or self.config.server.transports),
                              auth=auth, headers=dict(headers or {}), wait_timeout=timeout,
                              socketio_path=self.config.server.socketio_path)
        except socketio.exceptions.ConnectionError:
            await sio.disconnect()
            if refusals and isinstance(refusals[0], dict):
                raise ClientRefused(refusals[0].get("data") or {"message": refusals[0].get("message")}) from None
            raise
        self.clients.append(client)
        return client

    async def _halt(self) -> None:
        if self._uvicorn is not None and self._task is not None:
            self._uvicorn.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.config.server.shutdown_timeout + 5)
            except TimeoutError:
                self._uvicorn.force_exit = True
                await self._task
        self._sock.close()

    async def stop(self) -> None:
        """Disconnect the clients, close ``http`` and stop the server (``plugbus_shutdown``
        runs). Called for you at the end of the test; calling it twice is harmless."""
        clients, self.clients = self.clients, []
        try:
            await asyncio.gather(*(client.disconnect() for client in clients), return_exceptions=True)
            await self.http.aclose()
        finally:
            if self._task is not None and not self._task.done():
                await self._halt()


class PlugbusServerFactory:
    """What the :func:`plugbus_server` fixture gives: call it to start a server."""

    def __init__(self, directory_factory: Callable[[], Path]) -> None:
        self._directory = directory_factory
        self.servers: list[PlugbusServer] = []

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
        from plugbus.api.app import create_app

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        modules = {name: _target(name, plugin) for name, plugin in (plugins or {}).items()}
        data = _kit_config(port, modules, builtins, settings or {}, config or {}, entry_points, disabled)
        recorder: HookRecorder | None = None
        if record_hooks:
            recorder = HookRecorder()
            key = f"r{next(_ids)}"
            _RECORDERS[key] = recorder
            data["plugins"]["modules"][RECORDER_NAME] = f"{__name__}:HookRecorderPlugin"
            data["plugins"]["settings"][RECORDER_NAME] = {"recorder": key}
        path = self._directory() / f"plugbus-{port}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        try:
            with _plugbus_environment(env or {}):
                app = create_app(load_config(path))
        except BaseException:
            sock.close()
            raise
        finally:
            if recorder is not None:
                _RECORDERS.pop(key)
        if recorder is not None:
            recorder._pm = app.bus.pm
        server = PlugbusServer(app, sock, path, recorder)
        self.servers.append(server)
        await server._serve(timeout)
        return server

    async def aclose(self) -> None:
        """Stop every server this factory started, the newest first (all of them, even when
        one fails to stop; the first error is raised afterwards)."""
        errors: list[Exception] = []
        while self.servers:
            try:
                await self.servers.pop().stop()
            except Exception as exc:  # noqa: BLE001 - stop the others first, then report
                errors.append(exc)
        if errors:
            raise errors[0]


@_async_fixture
async def plugbus_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PlugbusServerFactory]:
    """Factory fixture: ``server = await plugbus_server(plugins=..., builtins=..., settings=...,
    config=...)`` starts a real plugbus on a free loopback port (see
    :meth:`PlugbusServerFactory.__call__`). Servers and their clients stop when the test ends."""
    factory = PlugbusServerFactory(lambda: tmp_path_factory.mktemp("plugbus"))
    try:
        yield factory
    finally:
        await factory.aclose()
