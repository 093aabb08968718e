"""The Socket.IO door: python-socketio's AsyncServer, feeding every event into the bus.

:class:`PlugbusSocketServer` is the one seam where plugbus reaches into python-socketio's
internals. It overrides these methods of ``socketio.AsyncServer`` (5.18):

* ``_handle_event_internal`` — the single dispatch point of every client event. plugbus
  replaces the per-event handler lookup with ``bus.dispatch`` and needs to know whether the
  client asked for an ack (python-socketio hides the packet id from handlers), so that a
  refusal travels in the ack when one was asked for and as an ``error`` event otherwise.
  The ack itself is written straight to a direct websocket (see below).
* ``_handle_eio_message`` — decodes the common packet (an EVENT with JSON arguments) in one
  step and hands everything else to python-socketio's decoder.
* ``_handle_connect`` — to run ``plugbus_connected`` after the client has been told it is
  connected, so a greeting never overtakes the Socket.IO ``connect``; to hand the connect
  handler the CONNECT payload as sent (python-socketio turns a falsy one into None); and to
  answer an unserved namespace as the v5 spec's server does (``{"message": "Invalid namespace"}``).
* ``_engineio_server_class`` — websocket sessions write frames straight to uvicorn's transport
  (:mod:`plugbus.api.direct_websocket`), and :class:`SocketTransport` broadcasts through them.

Events of one connection are handled in the order sent: the server runs with
``async_handlers=False``, so each connection's reader awaits its event before reading the next
(python-socketio's default would start a task per event and could reorder them).
"""

from __future__ import annotations

import base64
import functools
import logging
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet

from plugbus.core import (
    Bus,
    Config,
    Connection,
    ConnectionDenied,
    InternalError,
    Origin,
    PlugbusError,
    RateLimited,
)
from plugbus.core.events import ack_arguments
from plugbus.core.ratelimit import TokenBucket

from . import engineio_fixes, wire_json
from .direct_websocket import DirectEngineIOServer, direct_writer, encode_frame
from .room_index import IndexedManager, RoomIndexMixin

engineio_fixes.apply()

log = logging.getLogger("plugbus.socket")

ERROR_EVENT = "error"


class PlugbusSocketServer(socketio.AsyncServer):
    """A python-socketio AsyncServer whose events all go through one :class:`Bus`."""

    def __init__(self, bus: Bus, config: Config) -> None:
        server = config.server
        cors = server.cors
        manager: socketio.AsyncManager = IndexedManager()
        if bus.backend.shared:
            # python-socketio's own Redis manager fans every emit out to all nodes.
            # One channel for every namespace (each message names its own); named after the
            # default namespace so that nodes of a single-namespace cluster keep the channel.
            manager = PlugbusRedisManager(bus.backend.url,
                                          channel=bus.backend.key("socketio", server.default_namespace))
        super().__init__(
            client_manager=manager,
            async_mode="asgi",
            async_handlers=False,
            namespaces=list(server.namespaces),
            cors_allowed_origins=cors.origins if cors.origins != "*" else "*",
            cors_credentials=cors.credentials,
            ping_interval=server.ping_interval,
            ping_timeout=server.ping_timeout,
            max_http_buffer_size=server.max_message_bytes,
            transports=list(server.transports),
            logger=False,
            engineio_logger=False,
            json=wire_json,
        )
        self.eio.send_buffer_limit = server.limits.send_buffer_bytes
        self.bus = bus
        # The default namespace: the one _handle_eio_message decodes in one step.
        self.plugbus_namespace = server.default_namespace
        self.plugbus_namespaces = frozenset(server.namespaces)
        limits = server.limits
        self._rate = (limits.events_per_second, float(limits.event_burst)) if limits.events_per_second else None
        # an ack's Engine.IO text up to its id: "4" (message) "3" (ack) and the namespace
        self._ack_prefixes = {ns: "43" if ns == "/" else f"43{ns}," for ns in server.namespaces}
        self._event_prefix = "2" if self.plugbus_namespace == "/" else f"2{self.plugbus_namespace},"
        # (eio_sid, namespace) -> sid, between the connect handler and the CONNECT reply
        self._accepted: dict[tuple[str, str], str] = {}
        # (eio_sid, namespace) -> the CONNECT payload as the client sent it, for the connect
        # handler: python-socketio hands it None for a falsy payload, so `{}` would arrive as None
        self._connect_payloads: dict[tuple[str, str], Any] = {}
        for ns in server.namespaces:
            self.on("connect", functools.partial(self._on_connect, namespace=ns), namespace=ns)
            self.on("disconnect", self._on_disconnect, namespace=ns)
        bus.attach(SocketTransport(self))

    def _engineio_server_class(self) -> type:
        # websocket sessions write straight to the transport (api/direct_websocket.py)
        return DirectEngineIOServer

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None, *,
                          namespace: str = "/") -> bool:
        # The handshake request's body reader: python-engineio makes a new class for it per
        # request, and the environ (kept for the connection's life) would keep it alive.
        environ.pop("wsgi.input", None)
        scope = environ.get("asgi.scope", {})
        client = scope.get("client")
        headers = {
            k[5:].lower().replace("_", "-"): v for k, v in environ.items()
            if k.startswith("HTTP_") and isinstance(v, str)
        }
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        connection = Connection(
            sid=sid,
            namespace=namespace,
            remote_addr=client[0] if client else environ.get("REMOTE_ADDR"),
            auth=self._connect_payloads.pop((eio_sid, namespace), auth),
            headers=headers,
        )
        try:
            await self.bus.open_connection(connection)
        except ConnectionDenied as exc:
            raise socketio.exceptions.ConnectionRefusedError(exc.message, exc.to_dict()) from None
        except Exception:
            log.exception("plugbus_connect failed for %s", sid)
            raise socketio.exceptions.ConnectionRefusedError(
                "internal error", InternalError("internal error").to_dict()
            ) from None
        if eio_sid is not None:
            self._accepted[(eio_sid, namespace)] = sid
        return True

    async def _on_disconnect(self, sid: str, reason: str = "") -> None:
        await self.bus.close_connection(sid, str(reason))

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        namespace = namespace or "/"
        if namespace not in self.plugbus_namespaces:
            # What the Socket.IO v5 reference server answers, to the byte
            # (`44/random,{"message":"Invalid namespace"}` in socket.io-protocol's test suite);
            # python-socketio would answer a bare string, which v5 clients cannot read.
            await self._send_packet(eio_sid, self.packet_class(
                packet.CONNECT_ERROR, data={"message": "Invalid namespace"}, namespace=namespace))
            return
        key = (eio_sid, namespace)
        self._connect_payloads[key] = data
        try:
            await super()._handle_connect(eio_sid, namespace, data)
        finally:
            self._connect_payloads.pop(key, None)
        sid = self._accepted.pop(key, None)
        if sid is not None:
            await self.bus.connection_ready(sid)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        """Every Socket.IO packet a client sends. An EVENT on the served namespace with a JSON
        argument list — nearly all traffic — is decoded here in one step (prefix, ack id, one
        orjson call); anything else (connect, binary events, acks, malformed text) goes to
        python-socketio's own decoder, which raises or ignores exactly as it always did."""
        prefix = self._event_prefix
        if type(data) is str and data.startswith(prefix) and eio_sid not in self._binary_packet:
            start = len(prefix)
            end = start
            while data[end:end + 1].isdigit():
                end += 1
            if data[end:end + 1] == "[":
                try:
                    args = wire_json.loads(data[end:])
                except ValueError:
                    args = None
                if type(args) is list and args:
                    ns = self.plugbus_namespace
                    sid = self.manager.sid_from_eio_sid(eio_sid, ns)
                    if sid is not None and self.manager.is_connected(sid, ns):
                        await self._handle_event_internal(
                            self, sid, eio_sid, args, ns, int(data[start:end]) if end > start else None)
                    return
        await super()._handle_eio_message(eio_sid, data)

    async def _handle_event_internal(
        self, server: socketio.AsyncServer, sid: str, eio_sid: str, data: list[Any],
        namespace: str, id: int | None,
    ) -> None:
        name = data[0]
        wants_ack = id is not None
        error: dict[str, Any] | None = None
        result: Any = None
        try:
            connection = self.bus.connection(sid)
            if connection is not None and self._rate is not None:
                bucket = connection.state.get("plugbus.rate")
                if bucket is None:
                    bucket = connection.state["plugbus.rate"] = TokenBucket(*self._rate)
                wait = bucket.take()
                if wait:
                    raise RateLimited(
                        f"too many events: at most {self._rate[0]:g} per second "
                        f"(bursts of {self._rate[1]:g}); retry in {wait:.2f} s",
                        details={"retry_after": round(wait, 3), "limit": self._rate[0]},
                    )
            ctx = self.bus.context(Origin.SOCKET, connection, wants_ack=wants_ack,
                                   namespace=namespace if connection is None else None)
            result = await self.bus.dispatch_args(name, data[1:], ctx)
        except PlugbusError as exc:
            error = self._refusal(exc, name)
        except Exception:
            log.exception("event %r from %s failed", name, sid)
            error = self._refusal(InternalError("internal error while handling the event"), name)
        if wants_ack:
            # the ack's arguments: the {ok, data | error} envelope, or plain ones for events
            # that ask for them (ack_style "plain")
            reply = ack_arguments(self.bus.events.get(name, namespace) if isinstance(name, str) else None,
                                  result, error)
            # The ack written straight to a direct websocket, encoded by hand (the same text
            # python-socketio's Packet.encode makes, tested); binary data in the reply, and
            # long-polling, take python-socketio's path.
            sock = self.eio.sockets.get(eio_sid)
            writer = direct_writer(sock)
            body = wire_json.dumps_or_none(reply) if writer is not None else None
            if body is not None:
                if not sock.closed:
                    writer.send(f"{self._ack_prefixes[namespace]}{id}{body}")
                return
            await server._send_packet(eio_sid, self.packet_class(
                packet.ACK, namespace=namespace, id=id, data=reply))
        elif error is not None:
            await self.emit(ERROR_EVENT, error, to=sid, namespace=namespace)

    @staticmethod
    def _refusal(exc: PlugbusError, name: Any) -> dict[str, Any]:
        error = exc.to_dict()
        error["details"] = {"event": name if isinstance(name, str) else repr(name), **error["details"]}
        return error


def deliver_here(sio: socketio.AsyncServer, namespace: str, event: str, data: Any,
                 room: str | None, skip_sid: str | list[str] | None) -> None:
    """Deliver one event to the members of ``room`` (everyone when None) on this node.

    The hot path of every broadcast. python-socketio 5.18 starts one asyncio task per
    recipient, each awaiting a ping-timeout check before its queue put. Here the packet is
    encoded once and framed once; each websocket recipient gets the same frame bytes written to
    its transport (api/direct_websocket.py), each long-polling recipient the same Engine.IO
    packets on its queue. Dead sessions are left to Engine.IO's own ping monitor. Per
    recipient: two dict lookups and one write. ``data`` follows python-socketio's emit: a tuple
    is several arguments, None none.
    """
    members = sio.manager.rooms.get(namespace, {}).get(room)
    if not members:
        return
    args = list(data) if isinstance(data, tuple) else ([] if data is None else [data])
    encoded = sio.packet_class(packet.EVENT, namespace=namespace, data=[event, *args]).encode()
    eio_packets = [eio_packet.Packet(eio_packet.MESSAGE, p)
                   for p in (encoded if isinstance(encoded, list) else [encoded])]
    skip = skip_sid if isinstance(skip_sid, list) else (skip_sid,)
    frames: list[bytes] | None = None
    sockets = sio.eio.sockets
    for sid, eio_sid in members.items():
        if sid in skip:
            continue
        sock = sockets.get(eio_sid)
        if sock is None or sock.closed:
            continue
        writer = direct_writer(sock)
        if writer is not None:
            if frames is None:
                frames = [encode_frame(p.encode()) for p in eio_packets]
            for frame in frames:
                writer.write_frame(frame)
        else:
            for pkt in eio_packets:
                sock.queue.put_nowait(pkt)


class PlugbusRedisManager(RoomIndexMixin, socketio.AsyncRedisManager):  # type: ignore[misc]
    """python-socketio's Redis manager, delivering each emit on this node with
    :func:`deliver_here` instead of a task per recipient.

    ``_handle_emit`` runs for the node's own emits and for those published by other nodes;
    what it does before delivering (decoding binary data, which python-socketio base64-encodes
    for Redis) is python-socketio's, and an emit that asks for a callback keeps its path.
    """

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        if message.get("callback") is not None or self.server is None:
            await super()._handle_emit(message)
            return
        data = message["data"]
        if message.get("binary"):
            attachments = [base64.b64decode(a) for a in data[1:]]
            data = packet.Packet.reconstruct_binary(data[0], attachments)
        if isinstance(data, list):
            data = data[0] if len(data) == 1 else tuple(data)
        deliver_here(self.server, message.get("namespace") or "/", message["event"], data,
                     message.get("room"), message.get("skip_sid"))


class SocketTransport:
    """:class:`plugbus.core.Transport` on a python-socketio server and its client manager;
    every operation in the namespace the bus names."""

    def __init__(self, sio: socketio.AsyncServer) -> None:
        self._sio = sio

    async def emit(
        self, event: str, data: Any, *, room: str | None = None, skip_sid: str | None = None,
        namespace: str = "/",
    ) -> None:
        if type(self._sio.manager) is IndexedManager:
            deliver_here(self._sio, namespace, event, data, room, skip_sid)
        else:
            # A pub/sub manager publishes the emit for the other nodes and delivers here
            # through deliver_here too (PlugbusRedisManager).
            await self._sio.emit(event, data, to=room, skip_sid=skip_sid, namespace=namespace)

    async def enter_room(self, sid: str, room: str, *, namespace: str = "/") -> None:
        await self._sio.enter_room(sid, room, namespace=namespace)

    async def leave_room(self, sid: str, room: str, *, namespace: str = "/") -> None:
        await self._sio.leave_room(sid, room, namespace=namespace)

    def rooms_of(self, sid: str, *, namespace: str = "/") -> list[str]:
        return [r for r in self._sio.manager.get_rooms(sid, namespace) if r != sid]

    def is_member(self, sid: str, room: str, *, namespace: str = "/") -> bool:
        members = self._sio.manager.rooms.get(namespace, {}).get(room)
        return bool(members) and sid in members  # type: ignore[operator]

    def rooms(self, *, namespace: str = "/") -> dict[str, int]:
        ns = self._sio.manager.rooms.get(namespace, {})
        everyone = ns.get(None, {})
        return {name: len(members) for name, members in ns.items()
                if name is not None and name not in everyone and members}

    def members(self, room: str, *, namespace: str = "/") -> list[str]:
        members = self._sio.manager.rooms.get(namespace, {}).get(room)
        return list(members) if members else []

    def room_size(self, room: str, *, namespace: str = "/") -> int:
        members = self._sio.manager.rooms.get(namespace, {}).get(room)
        return len(members) if members else 0

    def connection_count(self, *, namespace: str = "/") -> int:
        return self.room_size(None, namespace=namespace)  # type: ignore[arg-type]  # the None room holds everyone

    async def disconnect(self, sid: str, *, namespace: str = "/") -> None:
        await self._sio.disconnect(sid, namespace=namespace)
