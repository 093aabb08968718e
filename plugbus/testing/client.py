"""The test client: :class:`PlugbusClient`, a recording Socket.IO client, and :class:`ClientRefused`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    import socketio


#: The event :meth:`PlugbusServer.settle` sends; a :class:`PlugbusClient` keeps it out of
#: ``events``.
SENTINEL_EVENT = "plugbus-testing-sentinel"


class ClientRefused(Exception):
    """The server refused a test client's connection (``plugbus_connect`` raised).

    :ivar error: the refusal in plugbus's error shape, ``{code, message, details}``.
    """

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"connection refused: {error.get('code')}: {error.get('message')}")
        self.error = error


class EventLog:
    """What both test clients record and how a test waits on it: ``events`` as
    ``(name, payload)`` in order, and ``_changed``, set whenever something arrives."""

    events: list[tuple[str, Any]]
    _changed: asyncio.Event

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
                raise AssertionError(
                    f"{event!r} arrived {len(self.received(event))} times, "
                    f"wanted {count}; received: {self.events!r}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return self.received(event)


class PlugbusClient(EventLog):
    """A real python-socketio ``AsyncClient`` on a test server that records what it receives.

    A client connected with ``recovery=True`` speaks connection state recovery as
    socket.io-client does: it keeps the ``pid`` of its CONNECT ack and the last ``offset``
    (which it takes off each event's arguments before recording them), and
    :meth:`PlugbusServer.reconnect` names both to come back as the same session.

    :ivar sio: the underlying ``socketio.AsyncClient``.
    :ivar namespace: the namespace it is connected to.
    :ivar events: every event received, in order, as ``(name, payload)``.
    :ivar auth: the handshake ``auth`` payload it connected with.
    :ivar pid: the private session id the server gave it (None: not offered recovery).
    :ivar offset: the offset of the last event received (None: none yet).
    :ivar recovered: True when it continues a session (the server gave back the pid it named).
    """

    def __init__(self, sio: socketio.AsyncClient, namespace: str = "/", auth: Any = None) -> None:
        self.sio = sio
        self.namespace = namespace
        self.auth = auth
        self.events: list[tuple[str, Any]] = []
        self.pid: str | None = None
        self.offset: str | None = None
        self.recovered = False
        self._changed = asyncio.Event()
        self._sentinels: set[str] = set()

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        namespace: str = "/",
        transports: Sequence[str] = ("polling", "websocket"),
        auth: Any = None,
        headers: Mapping[str, str] | None = None,
        socketio_path: str = "socket.io",
        timeout: float = 5.0,
    ) -> Self:
        """Connect a new client to the plugbus at ``url`` and return it once connected.

        ``server.client()`` calls this with the server's own namespace, transports and path;
        call it directly for a server the kit did not start. The caller disconnects it.

        :raises ClientRefused: a plugin refused the connection.
        """
        import socketio

        sio = recovery_client_class()(reconnection=False)
        client = cls(sio, namespace, auth)
        sio.plugbus_client = client
        refusals: list[Any] = []
        sio.on("*", client._receive, namespace=namespace)
        sio.on("disconnect", client._disconnected, namespace=namespace)
        sio.on("connect_error", lambda data=None: refusals.append(data), namespace=namespace)
        try:
            await sio.connect(
                url,
                namespaces=[namespace],
                transports=list(transports),
                auth=auth,
                headers=dict(headers or {}),
                wait_timeout=timeout,
                socketio_path=socketio_path,
            )
        except socketio.exceptions.ConnectionError:
            await sio.disconnect()
            if refusals and isinstance(refusals[0], dict):
                raise ClientRefused(
                    refusals[0].get("data") or {"message": refusals[0].get("message")}
                ) from None
            raise
        return client

    def _receive(self, event: str, *args: Any) -> None:
        if self.pid is not None and args and isinstance(args[-1], str):
            # what socket.io-client does: the last string argument is the offset
            self.offset, args = args[-1], args[:-1]
        if event == SENTINEL_EVENT and args:
            self._sentinels.add(args[0])  # the kit's own, not the test's: left out of events
        else:
            self.events.append((event, args[0] if len(args) == 1 else (list(args) or None)))
        self._changed.set()

    async def _wait_sentinel(self, token: str, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while token not in self._sentinels:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"the kit's sentinel did not arrive within {timeout} s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        self._sentinels.discard(token)

    def _disconnected(self, *reason: Any) -> None:
        self._changed.set()

    @property
    def sid(self) -> str:
        """This connection's id (as plugins see it in ``connection.sid``)."""
        sid = self.sio.get_sid(self.namespace)
        if sid is None:
            raise RuntimeError("the client is not connected")
        return str(sid)

    async def call(self, event: str, *args: Any, timeout: float = 5.0) -> Any:
        """Send ``event`` asking for an ack, and return the ack: ``{"ok": True, "data": ...}``
        or ``{"ok": False, "error": {code, message, details}}``. Leave the payload out to send
        an event without one; give several arguments for an event with ``positional``. A
        plain ack (``ack_style = "plain"``) comes back as python-socketio returns it: one
        value, or a tuple of several."""
        return await self.sio.call(event, _data(args), namespace=self.namespace, timeout=timeout)

    async def emit(self, event: str, *args: Any) -> None:
        """Send ``event`` without asking for an ack (a refusal then arrives as ``error``)."""
        await self.sio.emit(event, _data(args), namespace=self.namespace)

    async def wait_disconnected(self, *, timeout: float = 5.0) -> None:
        """Wait until the connection is closed (say, a plugin kicked this client).

        :raises AssertionError: still connected after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.sio.connected:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"still connected after {timeout} s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def disconnect(self) -> None:
        """Close the connection (the server then runs ``plugbus_disconnect``).

        A client still on long-polling waits for its pending poll to end (python-engineio
        does); plugbus ends it as soon as the close arrives, so either transport is quick.
        """
        if self.sio.connected:
            await self.sio.disconnect()


def _data(args: tuple[Any, ...]) -> Any:
    # python-socketio's own convention: a tuple is several arguments, None is none
    return args[0] if len(args) == 1 else (args or None)


def recovery_client_class() -> type[socketio.AsyncClient]:
    """python-socketio's ``AsyncClient`` keeping the ``pid`` of each CONNECT ack (which
    python-socketio reads only the ``sid`` of), for :class:`PlugbusClient`."""
    import socketio

    class RecoveryClient(socketio.AsyncClient):  # type: ignore[misc]
        plugbus_client: PlugbusClient | None = None

        async def _handle_connect(self, namespace: str | None, data: Any) -> None:
            client = self.plugbus_client
            if client is not None and isinstance(data, dict):
                client.pid = data.get("pid")
            await super()._handle_connect(namespace, data)

    return RecoveryClient
