"""plugbus without a port: :class:`InProcessApp` and its :class:`InProcessClient`.

The application ``plugbus serve`` runs, with its ASGI lifespan (``plugbus_startup`` and
``plugbus_shutdown``), driven in the test's event loop through ``httpx.ASGITransport``: REST
requests and Socket.IO clients reach the real doors, the real wire and the real pipeline, but
no socket is opened, so a test starts in milliseconds. The Socket.IO client speaks Engine.IO
v4 long-polling over ASGI (websockets need a server); binary attachments are not supported.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from plugbus.testing.client import ClientRefused, EventLog
from plugbus.testing.factory import build_app

if TYPE_CHECKING:
    import httpx

    from plugbus.api.app import Application
    from plugbus.core import Bus, Config
    from plugbus.testing.recorder import HookRecorder

#: Engine.IO v4 separates the packets of one long-polling payload with this character.
_SEPARATOR = "\x1e"


class InProcessClient(EventLog):
    """A Socket.IO client on an :class:`InProcessApp`: Engine.IO v4 long-polling through ASGI.

    The same surface as the real-server kit's :class:`~plugbus.testing.PlugbusClient`
    (``call``, ``emit``, ``wait_for``, ``received``, ``events``, ``sid``, ``disconnect``).

    :ivar namespace: the namespace it is connected to.
    :ivar events: every event received, in order, as ``(name, payload)``.
    """

    def __init__(self, http: httpx.AsyncClient, path: str, namespace: str) -> None:
        self.namespace = namespace
        self.events: list[tuple[str, Any]] = []
        self._http = http
        self._path = path
        self._eio_sid = ""
        self._sid: str | None = None
        self._ids = itertools.count(1)
        self._acks: dict[int, asyncio.Future[list[Any]]] = {}
        self._connected: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._changed = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._open = False

    # -- the wire ---------------------------------------------------------------------------

    def _prefix(self, kind: str) -> str:
        return kind if self.namespace == "/" else f"{kind}{self.namespace},"

    async def _post(self, packet: str) -> None:
        response = await self._http.post(
            self._path,
            params={"EIO": "4", "transport": "polling", "sid": self._eio_sid},
            content=packet.encode(),
            headers={"content-type": "text/plain;charset=UTF-8"},
        )
        response.raise_for_status()

    async def _connect(self, auth: Any, headers: Mapping[str, str], timeout: float) -> None:
        response = await self._http.get(
            self._path, params={"EIO": "4", "transport": "polling"}, headers=dict(headers)
        )
        response.raise_for_status()
        opened = response.text
        if not opened.startswith("0"):
            raise RuntimeError(f"unexpected Engine.IO open packet: {opened[:200]!r}")
        self._eio_sid = json.loads(opened[1:])["sid"]
        self._open = True
        self._poller = asyncio.create_task(self._poll(), name="plugbus-inprocess-poll")
        await self._post(self._prefix("40") + ("" if auth is None else json.dumps(auth)))
        await asyncio.wait_for(asyncio.shield(self._connected), timeout)

    async def _poll(self) -> None:
        try:
            while self._open:
                response = await self._http.get(
                    self._path,
                    params={"EIO": "4", "transport": "polling", "sid": self._eio_sid},
                )
                if response.status_code != 200:
                    break
                for packet in response.text.split(_SEPARATOR):
                    await self._engine_packet(packet)
        finally:
            self._open = False
            if not self._connected.done():
                self._connected.set_exception(RuntimeError("the session closed before CONNECT"))

    async def _engine_packet(self, packet: str) -> None:
        if packet == "2":  # ping
            await self._post("3")
        elif packet.startswith("1"):  # close
            self._open = False
        elif packet.startswith("4"):
            self._socket_packet(packet[1:])

    def _socket_packet(self, text: str) -> None:
        kind, rest = text[:1], text[1:]
        if rest.startswith("/"):
            namespace, _, rest = rest.partition(",")
        else:
            namespace = "/"
        if namespace != self.namespace:
            return
        digits = ""
        while rest[:1].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        data: Any = json.loads(rest) if rest else None
        if kind == "0":  # CONNECT
            self._sid = data["sid"]
            if not self._connected.done():
                self._connected.set_result(data)
        elif kind == "4":  # CONNECT_ERROR
            if not self._connected.done():
                self._connected.set_exception(ClientRefused(_refusal(data)))
        elif kind == "2":  # EVENT
            name, *args = data
            self.events.append((name, args[0] if len(args) == 1 else (args or None)))
            self._changed.set()
        elif kind == "3" and digits:  # ACK
            future = self._acks.pop(int(digits), None)
            if future is not None and not future.done():
                future.set_result(data)
        elif kind == "1":  # DISCONNECT
            self._sid = None
            self._open = False

    # -- the client -------------------------------------------------------------------------

    @property
    def sid(self) -> str:
        """This connection's id (as plugins see it in ``connection.sid``)."""
        if self._sid is None:
            raise RuntimeError("the client is not connected")
        return self._sid

    async def call(self, event: str, *args: Any, timeout: float = 5.0) -> Any:
        """Send ``event`` asking for an ack and return it, as
        :meth:`PlugbusClient.call <plugbus.testing.PlugbusClient.call>` does (a plain ack with
        several arguments comes back as a tuple)."""
        ack_id = next(self._ids)
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._acks[ack_id] = future
        await self._post(self._prefix("42") + str(ack_id) + json.dumps([event, *args]))
        try:
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._acks.pop(ack_id, None)
        return reply[0] if len(reply) == 1 else tuple(reply)

    async def emit(self, event: str, *args: Any) -> None:
        """Send ``event`` without asking for an ack (a refusal then arrives as ``error``)."""
        await self._post(self._prefix("42") + json.dumps([event, *args]))

    async def disconnect(self) -> None:
        """Leave: the server runs ``plugbus_disconnect`` before this returns."""
        if self._open:
            with contextlib.suppress(Exception):
                await self._post(self._prefix("41"))
                await self._post("1")
            self._open = False
        if self._poller is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._poller, 5)
            if not self._poller.done():
                self._poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._poller
        self._sid = None


def _refusal(data: Any) -> dict[str, Any]:
    if isinstance(data, dict) and isinstance(data.get("data"), dict):
        return data["data"]  # type: ignore[no-any-return]
    message = data.get("message") if isinstance(data, dict) else str(data)
    return {"message": message}


class InProcessApp:
    """A plugbus application in the test's process and event loop, reached through ASGI.

    Start one with the ``plugbus_app`` fixture. ``http`` is an ``httpx.AsyncClient`` whose
    transport calls the application directly; ``client()`` connects an
    :class:`InProcessClient`.

    :ivar app: the :class:`~plugbus.api.app.Application`.
    :ivar http: the REST client (``base_url`` ``http://plugbus.test``).
    :ivar clients: the clients connected with :meth:`client`.
    """

    def __init__(self, app: Application, recorder: HookRecorder | None) -> None:
        import httpx

        self.app = app
        asgi: Any = app.asgi  # an ASGI 3 callable (its own Scope type is a plain dict)
        transport = httpx.ASGITransport(app=asgi, client=("127.0.0.1", 40000))
        self.http: httpx.AsyncClient = httpx.AsyncClient(
            transport=transport, base_url="http://plugbus.test", timeout=10
        )
        self.clients: list[InProcessClient] = []
        self._recorder = recorder
        self._lifespan = contextlib.AsyncExitStack()

    @property
    def bus(self) -> Bus:
        """The running bus."""
        return self.app.bus

    @property
    def config(self) -> Config:
        """The validated configuration."""
        return self.app.bus.config

    @property
    def hooks(self) -> HookRecorder:
        """Every hook call so far (see :class:`~plugbus.testing.HookRecorder`).

        :raises RuntimeError: started with ``record_hooks=False``.
        """
        if self._recorder is None:
            raise RuntimeError("this app was started with record_hooks=False")
        return self._recorder

    async def _start(self) -> None:
        rest = self.app.rest
        await self._lifespan.enter_async_context(rest.router.lifespan_context(rest))

    async def client(
        self,
        *,
        auth: Any = None,
        headers: Mapping[str, str] | None = None,
        namespace: str | None = None,
        timeout: float = 5.0,
    ) -> InProcessClient:
        """Connect a Socket.IO client (long-polling through ASGI) and return it once connected.

        :raises ClientRefused: a plugin refused the connection.
        """
        path = f"/{self.config.server.socketio_path.strip('/')}/"
        client = InProcessClient(self.http, path, namespace or self.config.server.default_namespace)
        try:
            await client._connect(auth, headers or {}, timeout)
        except BaseException:
            await client.disconnect()
            raise
        self.clients.append(client)
        return client

    async def stop(self) -> None:
        """Disconnect the clients and run the shutdown (``plugbus_shutdown``); twice is harmless."""
        clients, self.clients = self.clients, []
        await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)
        await self.http.aclose()
        await self._lifespan.aclose()


class PlugbusAppFactory:
    """What the ``plugbus_app`` fixture gives: call it to build and start an in-process app."""

    def __init__(self, directory_factory: Callable[[], Path]) -> None:
        self._directory = directory_factory
        self.apps: list[InProcessApp] = []

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
    ) -> InProcessApp:
        """Build the application as ``plugbus_server`` does (same arguments, same config) and
        run its start-up; no port is opened.

        :raises ConfigError: the config or a plugin is wrong.
        """
        app, _path, recorder = build_app(
            self._directory(),
            0,
            plugins=plugins,
            builtins=builtins,
            settings=settings,
            config=config,
            entry_points=entry_points,
            disabled=disabled,
            env=env,
            record_hooks=record_hooks,
        )
        running = InProcessApp(app, recorder)
        await running._start()
        self.apps.append(running)
        return running

    async def aclose(self) -> None:
        """Stop every app, the newest first (the first error is raised afterwards)."""
        errors: list[Exception] = []
        while self.apps:
            try:
                await self.apps.pop().stop()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
