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

``plugbus_app`` builds the same application in-process, without a port (REST and
long-polling Socket.IO through ASGI: faster, for plugin logic). ``plugbus_server`` starts a
real plugbus — the application ``plugbus serve`` builds, served
by uvicorn on a free loopback port in the test's own event loop — with the given plugins and
config. ``server.client()`` connects a real python-socketio ``AsyncClient`` that records every
event it receives; ``server.http`` is an ``httpx.AsyncClient`` for the REST door;
``server.hooks`` records every hook call in order (see :class:`HookRecorder`);
``await server.settle(client)`` shows that nothing more is on its way to a client, without a
sleep. ``await plugbus_server.spawn(...)`` runs ``plugbus serve`` in a child process instead
(:class:`PlugbusProcess`), for tests about the process: its log, a kill, a restart. Everything
is stopped when the test ends. The kit needs pytest-asyncio, httpx and aiohttp (the test
extras).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from plugbus.testing.calls import HookCall, HookCalls
from plugbus.testing.client import ClientRefused, PlugbusClient
from plugbus.testing.factory import PlugbusServerFactory
from plugbus.testing.fork_server import fork_servers
from plugbus.testing.inprocess import InProcessApp, InProcessClient, PlugbusAppFactory
from plugbus.testing.process import PlugbusExited, PlugbusProcess
from plugbus.testing.recorder import RECORDER_NAME as RECORDER_NAME
from plugbus.testing.recorder import HookRecorder, HookRecorderPlugin
from plugbus.testing.server import PlugbusServer

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
    "InProcessApp",
    "InProcessClient",
    "PlugbusAppFactory",
    "PlugbusClient",
    "PlugbusExited",
    "PlugbusProcess",
    "PlugbusServer",
    "PlugbusServerFactory",
    "fork_servers",
    "plugbus_app",
    "plugbus_server",
]


@_async_fixture
async def plugbus_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[PlugbusServerFactory]:
    """Factory fixture: ``server = await plugbus_server(plugins=..., builtins=..., settings=...,
    config=...)`` starts a real plugbus on a free loopback port (see
    :meth:`PlugbusServerFactory.__call__`); ``await plugbus_server.spawn(...)`` starts
    ``plugbus serve`` in a child process. Servers, processes and their clients stop when the
    test ends."""
    factory = PlugbusServerFactory(lambda: tmp_path_factory.mktemp("plugbus"))
    try:
        yield factory
    finally:
        await factory.aclose()


@_async_fixture
async def plugbus_app(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[PlugbusAppFactory]:
    """Factory fixture: ``app = await plugbus_app(plugins=..., ...)`` — the same application
    and arguments as ``plugbus_server``, in this process with no port: ``app.http`` calls the
    REST door through ASGI, ``await app.client()`` connects a long-polling Socket.IO client
    through ASGI (see :class:`InProcessApp`). Apps stop when the test ends."""
    factory = PlugbusAppFactory(lambda: tmp_path_factory.mktemp("plugbus-app"))
    try:
        yield factory
    finally:
        await factory.aclose()
