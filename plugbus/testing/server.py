"""The in-process server: :class:`PlugbusServer`, plugbus served by uvicorn in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plugbus.testing.client import SENTINEL_EVENT, PlugbusClient

if TYPE_CHECKING:
    import httpx
    import uvicorn

    from plugbus.api.app import Application
    from plugbus.core import Bus, Config
    from plugbus.testing.recorder import HookRecorder


_sentinel_ids = itertools.count(1)


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

    def __init__(
        self,
        app: Application,
        sock: socket.socket,
        config_path: Path,
        recorder: HookRecorder | None,
    ) -> None:
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

        # Inside the function like every import of plugbus.api in the kit (see factory.py).
        from plugbus.api.app import uvicorn_options
        from plugbus.api.log_filters import install_log_filters

        # the same redaction as `plugbus serve`: a test's log never shows a token either
        install_log_filters()
        self._uvicorn = _server_class()(
            uvicorn.Config(
                self._lifespan_spy,
                interface="asgi3",
                host="127.0.0.1",
                port=self.port,
                log_config=None,
                **uvicorn_options(self.config),
            )
        )
        self._task = asyncio.create_task(self._uvicorn.serve(sockets=[self._sock]))
        deadline = asyncio.get_running_loop().time() + timeout
        while not self._uvicorn.started:
            if self._task.done() or asyncio.get_running_loop().time() > deadline:
                await self._halt()
                if self._lifespan_error is not None:
                    raise self._lifespan_error
                raise RuntimeError(f"plugbus did not start within {timeout} s (see the log)")
            await asyncio.sleep(0.01)

    async def client(
        self,
        *,
        transports: Sequence[str] | None = None,
        auth: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        namespace: str | None = None,
        recovery: bool = False,
    ) -> PlugbusClient:
        """Connect a new real Socket.IO client and return it once connected.

        :param transports: e.g. ``["websocket"]`` or ``["polling"]`` (default: those the server
            accepts, ``server.transports``: polling first, upgraded to websocket).
        :param auth: the handshake ``auth`` payload (``connection.auth`` in the hooks).
        :param headers: extra HTTP headers for the handshake.
        :param namespace: the namespace to connect to (default: the first of
            ``server.namespaces``). Each namespace is its own connection: call ``client`` once
            per namespace.
        :param recovery: ask for connection state recovery (``auth`` gets ``recovery: true``)
            and speak it as socket.io-client does (see :class:`PlugbusClient`).
        :raises ClientRefused: a plugin refused the connection.
        """
        if recovery:
            auth = {**(auth if isinstance(auth, dict) else {}), "recovery": True}
        return await self._connect(auth, transports, headers, timeout, namespace)

    async def _connect(
        self,
        auth: Any,
        transports: Sequence[str] | None,
        headers: Mapping[str, str] | None,
        timeout: float,
        namespace: str | None,
    ) -> PlugbusClient:
        client = await PlugbusClient.connect(
            self.url,
            namespace=namespace or self.config.server.default_namespace,
            transports=transports or self.config.server.transports,
            auth=auth,
            headers=headers,
            socketio_path=self.config.server.socketio_path,
            timeout=timeout,
        )
        self.clients.append(client)
        return client

    async def drop(self, client: PlugbusClient, *, timeout: float = 5.0) -> None:
        """Lose ``client``'s transport on the server side, as a dead network would (the
        reason is ``transport close``: a client offered recovery has its session kept); return
        once the client noticed."""
        sio_server = self.app.sio
        eio_sid = sio_server.manager.eio_sid_from_sid(client.sid, client.namespace)
        session = sio_server.eio.session_of(eio_sid) if eio_sid is not None else None
        if session is None:
            raise RuntimeError(f"no live transport for {client.sid}")
        session.close("transport close")
        deadline = asyncio.get_running_loop().time() + timeout
        while client.sio.connected:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("the client did not notice its transport was lost")
            await asyncio.sleep(0.01)

    async def reconnect(
        self,
        client: PlugbusClient,
        *,
        transports: Sequence[str] | None = None,
        timeout: float = 5.0,
    ) -> PlugbusClient:
        """Connect again as socket.io-client does after losing its connection: the same
        ``auth`` plus the ``pid`` and last ``offset`` of ``client``. The new client's
        ``recovered`` says whether the server restored the session (then its ``sid`` is the
        old one, and the events it missed are in its ``events``).

        :raises ClientRefused: a plugin refused the connection.
        """
        auth = dict(client.auth) if isinstance(client.auth, dict) else {}
        if client.pid is not None:
            auth["pid"] = client.pid
            if client.offset is not None:
                auth["offset"] = client.offset
        back = await self._connect(auth, transports, None, timeout, client.namespace)
        back.recovered = client.pid is not None and back.pid == client.pid
        if back.recovered and back.offset is None:
            back.offset = client.offset
        return back

    async def settle(self, *clients: PlugbusClient, timeout: float = 5.0) -> None:
        """Wait until everything the server has sent ``clients`` so far has arrived.

        The server sends each client a sentinel event of the kit's own (kept out of
        ``client.events``) and the call returns when it is there: a connection's packets
        arrive in the order they were sent, so whatever was sent before the sentinel has been
        received by then. This is how to show that something did *not* arrive, with no sleep::

            await alice.call("send-message", {"message": "hi", "roomID": "r"})
            await server.settle(outsider)
            assert outsider.received("receive-message") == []

        The sentinel leaves from this server: on a cluster, settle on the node that sent
        what must not arrive, so that the sentinel takes the same road after it.

        :raises AssertionError: a sentinel did not arrive within ``timeout`` seconds.
        """
        for client in clients:
            token = f"s{next(_sentinel_ids)}"
            await self.bus.emit(
                SENTINEL_EVENT, token, to=client.sid, namespace=client.namespace, history=False
            )
            await client._wait_sentinel(token, timeout)

    async def _halt(self) -> None:
        if self._uvicorn is not None and self._task is not None:
            self._uvicorn.should_exit = True
            try:
                await asyncio.wait_for(
                    asyncio.shield(self._task), self.config.server.shutdown_timeout + 5
                )
            except TimeoutError:
                self._uvicorn.force_exit = True
                await self._task
        self._sock.close()

    async def stop(self) -> None:
        """Disconnect the clients, close ``http`` and stop the server (``plugbus_shutdown``
        runs). Called for you at the end of the test; calling it twice is harmless."""
        clients, self.clients = self.clients, []
        try:
            await asyncio.gather(
                *(client.disconnect() for client in clients), return_exceptions=True
            )
            await self.http.aclose()
        finally:
            if self._task is not None and not self._task.done():
                await self._halt()
