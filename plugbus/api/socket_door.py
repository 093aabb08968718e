"""The Socket.IO door: python-socketio's AsyncServer on plugbus's own Engine.IO server.

:class:`PlugbusSocketServer` is python-socketio's ``AsyncServer`` (its packet codec, its client
managers, its namespaces), with the Engine.IO layer replaced by :mod:`plugbus.api.wire` and
with these methods of its own (declared seams, :mod:`plugbus.api.wire.seams`):

* ``_engineio_server_class`` — plugbus's :class:`~plugbus.api.wire.EngineServer`.
* ``_handle_eio_message`` — every packet a client sends. The common one (an EVENT with JSON
  arguments) is decoded in one step; the rest through python-socketio's codec. A packet that
  breaks the Socket.IO v5 protocol (an unknown type, a malformed body, an EVENT whose data is
  not a non-empty array starting with a string, an attachment outside a binary packet, more
  attachments or bytes than allowed) raises :class:`~plugbus.api.wire.ProtocolViolation`:
  the engine closes the connection and logs one line.
* ``_handle_event_internal`` — the single dispatch point of every client event: ``bus.dispatch``,
  and an ack that carries a refusal when one was asked for (an ``error`` event otherwise).
* ``_handle_connect`` — plugbus's own CONNECT handling: ``plugbus_connected`` runs after the
  client was told it is connected, so a greeting never overtakes the Socket.IO ``connect``;
  the connect handler gets the CONNECT payload as sent (python-socketio turns a falsy one into
  None); an unserved namespace is answered as the v5 spec's server does
  (``{"message": "Invalid namespace"}``); and connection state recovery (below).

Connection state recovery (``server.recovery``, docs/recovery.md), as socket.io-client >= 4.6
expects it: a connection offered recovery gets ``{sid, pid}`` in its CONNECT ack and the offset
of every event as the event's last argument. A client that names ``{pid, offset}`` in its
CONNECT payload and whose session is still kept gets its sid back (the manager's
``pre_connect_as``), its rooms, and — before anything live — the events it missed; live events
for it are *held* meanwhile and sent after the replay, none twice (a *floor* per connection
drops late copies of replayed events until the node's feed has passed them).

Events of one connection are handled in the order sent: the server runs with
``async_handlers=False``, so each connection's reader awaits its event before reading the next
(python-socketio's default would start a task per event and could reorder them).
"""

from __future__ import annotations

import functools
import logging
import re
import time
from typing import Any

import orjson
import socketio
from socketio import packet

from plugbus.core import (
    Bus,
    Config,
    Connection,
    ConnectionDenied,
    EventContext,
    InternalError,
    Origin,
    PlugbusError,
    RateLimited,
)
from plugbus.core.events import ack_arguments
from plugbus.core.history import PARKING, FeedEvent, StoredEvent, later, parse_offset, wait_turn
from plugbus.core.ratelimit import TokenBucket
from plugbus.core.recovery import Recovery, SessionMismatch, SuspendedSession

from . import wire_json
from .metrics import Metrics
from .room_index import IndexedManager
from .structured_logs import event_fields, log_context
from .wire import SEAM_REPORT, EngineServer, ProtocolViolation, WireSettings, encode_frame

log = logging.getLogger("plugbus.socket")

ERROR_EVENT = "error"


#: Ack ids longer than this are refused (JavaScript's integers are exact below 2**53).
_MAX_ID_DIGITS = 15

_ASCII_DIGITS = re.compile("[0-9]*")

_orjson_loads = orjson.loads
_orjson_dumps = orjson.dumps
_JSONDecodeError = orjson.JSONDecodeError
#: wire_json's options (dumps_or_none's), for the ack encoded in the door
_ORJSON_OPTIONS = wire_json.ORJSON_OPTIONS
#: a namespace without rooms (read only: never written to)
_NO_ROOMS: dict[Any, Any] = {}


def _check_event_args(args: Any) -> None:
    """An EVENT's data: a non-empty array whose first element (the name) is a string."""
    if type(args) is not list or not args or type(args[0]) is not str:
        raise ProtocolViolation("an EVENT's data must be an array starting with the event name")


class PlugbusSocketServer(socketio.AsyncServer):  # type: ignore[misc]
    """A python-socketio AsyncServer whose events all go through one :class:`Bus`."""

    def __init__(self, bus: Bus, config: Config) -> None:
        server = config.server
        cors = server.cors
        # One local manager on every node: what crosses nodes takes the history feed (a Redis
        # Stream every node follows from its last offset, issue #18), not python-socketio's
        # Redis pub/sub manager, which drops what it cannot publish.
        manager: socketio.AsyncManager = IndexedManager()
        limits = server.limits
        self.wire_settings = WireSettings(
            ping_interval=server.ping_interval,
            ping_timeout=server.ping_timeout,
            max_payload=server.max_message_bytes,
            transports=tuple(server.transports),
            cors_origins=None if cors.origins == "*" else tuple(cors.origins),
            cors_credentials=cors.credentials,
            send_buffer_limit=limits.send_buffer_bytes,
            connect_timeout=server.connect_timeout,
            websocket_writer=server.websocket_writer,
            max_sessions=limits.max_connections,
            max_sessions_per_address=limits.max_connections_per_address,
        )
        super().__init__(
            client_manager=manager,
            async_handlers=False,
            namespaces=list(server.namespaces),
            logger=False,
            engineio_logger=False,
            json=wire_json,
        )
        self.eio: EngineServer
        self._max_attachments = limits.max_binary_attachments
        self._max_bytes = server.max_message_bytes
        self._binary_bytes: dict[str, int] = {}
        self.bus = bus
        #: set by create_app; the door counts each event's outcome and each publish's
        #: deliveries there
        self.metrics: Metrics | None = None
        # The default namespace: the one _handle_eio_message decodes in one step.
        self.plugbus_namespace = server.default_namespace
        self.plugbus_namespaces = frozenset(server.namespaces)
        self._rate = (
            (limits.events_per_second, float(limits.event_burst))
            if limits.events_per_second
            else None
        )
        # the sid, user and event on each log line written while an event is handled; only
        # when a format shows them, so the text format pays nothing per event
        if server.log_format == "json":
            self._handle_event_internal = self._handle_event_with_log_fields  # type: ignore[method-assign]
        # a CONNECT packet's text up to its JSON data
        self._connect_prefixes = {ns: "0" if ns == "/" else f"0{ns}," for ns in server.namespaces}
        # an ack's Socket.IO text up to its id: "3" (ack) and the namespace
        self._ack_prefixes = {ns: "3" if ns == "/" else f"3{ns}," for ns in server.namespaces}
        # Metrics' key of an accepted socket event, by name (registered names only)
        self._accepted_keys: dict[str, tuple[str, str, str]] = {}
        self._event_prefix = "2" if self.plugbus_namespace == "/" else f"2{self.plugbus_namespace},"
        # (eio_sid, namespace) -> sid, between the connect handler and the CONNECT reply
        self._accepted: dict[tuple[str, str], str] = {}
        # (eio_sid, namespace) -> the CONNECT payload as the client sent it, for the connect
        # handler: python-socketio hands it None for a falsy payload, so `{}` would arrive as None
        self._connect_payloads: dict[tuple[str, str], Any] = {}
        # (eio_sid, namespace) -> the suspended session a CONNECT claimed, for the handler
        self._claimed: dict[tuple[str, str], SuspendedSession | None] = {}
        # (eio_sid, namespace) -> the claimed session's rooms the connection may be in again
        self._allowed: dict[tuple[str, str], list[str]] = {}
        #: connections that receive each event's offset as its last argument
        self.with_offsets: set[str] = set()
        #: connections being recovered: what was delivered to them meanwhile, sent after the
        #: replay — (namespace, event, args, offset, stored)
        self.holding: dict[str, list[tuple[str, str, list[Any], str, bool]]] = {}
        #: recovered connections: the last replayed offset (and its key); stored events up to
        #: it that still arrive through the feed are not sent again
        self.floors: dict[str, tuple[str, tuple[int, int]]] = {}
        for ns in server.namespaces:
            self.on("connect", functools.partial(self._on_connect, namespace=ns), namespace=ns)
            self.on("disconnect", self._on_disconnect, namespace=ns)
        bus.attach(SocketTransport(self))

    def _engineio_server_class(self) -> Any:
        # python-socketio calls the result with python-engineio's options, which plugbus's
        # engine does not take: it is configured from plugbus's own settings.
        settings = self.wire_settings
        return lambda **_engineio_options: EngineServer(settings, SEAM_REPORT)

    async def _on_connect(
        self, sid: str, environ: dict[str, Any], auth: Any = None, *, namespace: str = "/"
    ) -> bool:
        scope = environ.get("asgi.scope", {})
        client = scope.get("client")
        # plugbus's engine parsed them once (lower-cased); shared, not copied, as every idle
        # connection keeps both
        headers = environ["plugbus.headers"]
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        key = (eio_sid, namespace)
        connection = Connection(
            sid=sid,
            namespace=namespace,
            remote_addr=client[0] if client else environ.get("REMOTE_ADDR"),
            auth=self._connect_payloads.pop(key, auth),
            headers=headers,
        )
        try:
            self._allowed[key] = await self.bus.open_connection(connection, self._claimed.get(key))
        except ConnectionDenied as exc:
            raise socketio.exceptions.ConnectionRefusedError(exc.message, exc.to_dict()) from None
        except SessionMismatch:
            raise
        except Exception:
            log.exception("plugbus_connect failed for %s", sid)
            raise socketio.exceptions.ConnectionRefusedError(
                "internal error", InternalError("internal error").to_dict()
            ) from None
        if eio_sid is not None:
            self._accepted[(eio_sid, namespace)] = sid
        return True

    async def _on_disconnect(self, sid: str, reason: str = "") -> None:
        self.with_offsets.discard(sid)
        self.holding.pop(sid, None)
        self.floors.pop(sid, None)
        await self.bus.close_connection(sid, str(reason))

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        namespace = namespace or "/"
        if namespace not in self.plugbus_namespaces:
            # What the Socket.IO v5 reference server answers, to the byte
            # (`44/random,{"message":"Invalid namespace"}` in socket.io-protocol's test suite);
            # python-socketio would answer a bare string, which v5 clients cannot read.
            await self._send_packet(
                eio_sid,
                self.packet_class(
                    packet.CONNECT_ERROR, data={"message": "Invalid namespace"}, namespace=namespace
                ),
            )
            return
        if self.manager.sid_from_eio_sid(eio_sid, namespace) is not None:
            await self._send_packet(
                eio_sid,
                self.packet_class(
                    packet.CONNECT_ERROR,
                    namespace=namespace,
                    data={"message": f"already connected to namespace {namespace}"},
                ),
            )
            return
        key = (eio_sid, namespace)
        claimed, offset, missed = await self._claim(data, namespace)
        while True:
            if claimed is not None:
                sid = self.manager.pre_connect_as(eio_sid, namespace, claimed.sid)
                if sid is not None:
                    self.holding[sid] = []  # from now on, live events wait for the replay
            else:
                sid = await self.manager.pre_connect(eio_sid, namespace)
            if sid is None:
                await self._send_packet(
                    eio_sid,
                    self.packet_class(
                        packet.CONNECT_ERROR,
                        data={"message": "Unable to connect"},
                        namespace=namespace,
                    ),
                )
                return
            self._connect_payloads[key] = data
            self._claimed[key] = claimed
            try:
                await self._on_connect(sid, self.environ[eio_sid], data, namespace=namespace)
            except SessionMismatch:
                # the pid's holder is someone else now: a fresh session, with a fresh sid
                log.info("recovery refused for %s: another identity", sid)
                self.holding.pop(sid, None)
                await self.manager.disconnect(sid, namespace, ignore_queue=True)
                if claimed is not None:
                    self.bus.abandon_session(claimed)
                claimed, missed = None, []
                continue
            except socketio.exceptions.ConnectionRefusedError as exc:
                self.holding.pop(sid, None)
                if claimed is not None:
                    self.bus.abandon_session(claimed)
                await self._send_packet(
                    eio_sid,
                    self.packet_class(
                        packet.CONNECT_ERROR, data=exc.error_args, namespace=namespace
                    ),
                )
                await self.manager.disconnect(sid, namespace, ignore_queue=True)
                return
            finally:
                self._connect_payloads.pop(key, None)
                self._claimed.pop(key, None)
            break
        allowed = self._allowed.pop(key, [])
        self._accepted.pop(key, None)
        connection = self.bus.connection(sid)
        if connection is None:  # gone while its hooks ran
            self.holding.pop(sid, None)
            return
        recovery: Recovery | None = None
        replay: list[StoredEvent] = []
        if claimed is not None:
            for room in allowed:
                self.manager.basic_enter_room(sid, namespace, room)
            # what was stored between the first read and the hold
            newer = await self.bus.missed(claimed, missed[-1].id if missed else offset, allowed)
            if newer is None:  # history trimmed meanwhile: the client recovers afresh
                log.info("recovery of %s lost a race with history trimming", sid)
                engine_session = self.eio.session_of(eio_sid)
                if engine_session is not None:
                    engine_session.close("transport close")
                return
            rooms = set(allowed)
            seen: set[str] = set()
            for event in (*missed, *newer):
                if event.id not in seen and (event.room is None or event.room in rooms):
                    seen.add(event.id)
                    replay.append(event)
            recovery = Recovery(
                rooms=tuple(allowed),
                refused_rooms=tuple(r for r in claimed.rooms if r not in rooms),
                replayed=0,
                offline_s=max(0.0, time.time() - claimed.suspended_at),
                moved=claimed.node != self.bus.backend.node_id,
            )
        ack: dict[str, Any] = {"sid": sid}
        if connection.pid is not None:
            ack["pid"] = connection.pid
            self.with_offsets.add(sid)
        # Presence before the ack: once the client's connect returns, another node's
        # send-direct to it must find it.
        await self.bus.connection_accepted(sid)
        if self.bus.connection(sid) is None:  # gone while presence was written
            self.holding.pop(sid, None)
            return
        session = self.eio.session_of(eio_sid)
        if session is not None:
            # the CONNECT packet as python-socketio's Packet.encode writes it, without one. A
            # direct writer keeps a loop turn's frames for one write at its end: the ack, the
            # greeting (plugbus_connected, when it needs no I/O) and a recovered client's
            # replay leave together.
            session.send_message(self._connect_prefixes[namespace] + wire_json.dumps(ack))
        await self.manager.connect(sid, namespace)
        if session is not None:
            session.mark_connected()  # the connect deadline no longer applies
        if recovery is not None:
            replayed = self._replay(eio_sid, sid, namespace, replay, offset)
            if self.metrics is not None:
                self.metrics.recovered(replayed)
            recovery = Recovery(
                recovery.rooms,
                recovery.refused_rooms,
                replayed,
                recovery.offline_s,
                recovery.moved,
            )
        await self.bus.connection_ready(sid, recovery)

    async def _claim(
        self, data: Any, namespace: str
    ) -> tuple[SuspendedSession | None, str, list[StoredEvent]]:
        """The session a CONNECT names, the offset to replay from and what it missed so far —
        or (None, "", []) for a fresh session (none named, expired, unknown offset, or history
        no longer holds everything it missed)."""
        session = await self.bus.claim_session(data, namespace)
        if session is None:
            return None, "", []
        self.bus.recovered_here(session.pid)
        given = data.get("offset")
        if given is None:
            offset = session.origin  # it received nothing with an offset: owed all since
        elif parse_offset(given) is not None:
            offset = given
        else:
            log.info("recovery refused for %s: not an offset", session.sid)
            self.bus.abandon_session(session)
            return None, "", []
        missed = await self.bus.missed(session, offset)
        if missed is None:
            log.info("recovery refused for %s: history no longer reaches back", session.sid)
            self.bus.abandon_session(session)
            return None, "", []
        return session, offset, missed

    def _replay(
        self, eio_sid: str, sid: str, namespace: str, replay: list[StoredEvent], offset: str
    ) -> int:
        """Send the missed events, then what was held meanwhile (none twice); return how many
        missed events were sent."""
        engine_session = self.eio.session_of(eio_sid)
        held = self.holding.pop(sid, [])
        if engine_session is None:
            return 0
        last = offset
        for event in replay:
            self._send_event(engine_session, namespace, [event.event, *event.args, event.id])
            last = event.id
        last_key = parse_offset(last) or (0, 0)
        for ns, name, args, off, stored in held:
            if stored:
                key = parse_offset(off) or (0, 0)
                if key <= last_key:
                    continue  # replayed already
                last, last_key = off, key
                self._send_event(engine_session, ns, [name, *args, off])
            else:
                self._send_event(engine_session, ns, [name, *args, later(off, last)])
        if last_key > (parse_offset(self.bus.history.watermark) or (0, 0)):
            self.floors[sid] = (last, last_key)
        return len(replay)

    def _send_event(self, engine_session: Any, namespace: str, data: list[Any]) -> None:
        encoded = self.packet_class(packet.EVENT, namespace=namespace, data=data).encode()
        for part in encoded if isinstance(encoded, list) else [encoded]:
            engine_session.send_message(part)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        """Every Socket.IO packet a client sends (see the module docstring).

        :raises ProtocolViolation: the packet breaks the Socket.IO v5 protocol or a limit.
        """
        if eio_sid in self._binary_packet:
            await self._attachment(eio_sid, data)
            return
        if type(data) is not str:
            raise ProtocolViolation("a binary attachment outside a binary packet")
        prefix = self._event_prefix
        if data.startswith(prefix):
            start = len(prefix)
            # the ack id's ASCII digits in one regex step; past any other character that
            # str.isdigit accepts, the character-by-character scan decides, as it always did
            head = _ASCII_DIGITS.match(data, start)
            end = head.end() if head is not None else start
            if not data.startswith("[", end):
                while data[end : end + 1].isdigit():
                    end += 1
            if data.startswith("[", end) and end - start <= _MAX_ID_DIGITS:
                text = data[end:]
                try:
                    # orjson first, without wire_json.loads's frame; what it refuses is read as
                    # wire_json.loads reads it (python-engineio's json)
                    args = _orjson_loads(text)
                except _JSONDecodeError:
                    try:
                        args = wire_json.loads(text)
                    except ValueError:
                        raise ProtocolViolation("an EVENT whose arguments are not JSON") from None
                if type(args) is not list or not args or type(args[0]) is not str:
                    _check_event_args(args)  # raises
                ns = self.plugbus_namespace
                sid = self.manager.sid_from_eio_sid(eio_sid, ns)
                if sid is None:
                    raise ProtocolViolation(f"an EVENT on namespace {ns} before its CONNECT")
                if self.manager.is_connected(sid, ns):
                    await self._handle_event_internal(
                        self, sid, eio_sid, args, ns, int(data[start:end]) if end > start else None
                    )
                return
        if data == "0":
            # a CONNECT to "/" without a payload, as nearly every client sends it: what
            # python-socketio's Packet decodes it to (tests/test_socket_door_connect.py)
            await self._handle_connect(eio_sid, None, None)
            return
        try:
            pkt = self.packet_class(encoded_packet=data)
        except Exception as exc:
            raise ProtocolViolation(f"malformed Socket.IO packet ({type(exc).__name__})") from None
        kind = pkt.packet_type
        if pkt.id is not None and (pkt.id < 0 or pkt.id >= 10**_MAX_ID_DIGITS):
            raise ProtocolViolation("an ack id out of range")
        namespace = pkt.namespace or "/"
        if kind == packet.CONNECT:
            await self._handle_connect(eio_sid, pkt.namespace, pkt.data)
            return
        if self.manager.sid_from_eio_sid(eio_sid, namespace) is None:
            # Socket.IO v5: "If the server does not receive a CONNECT packet first, then it
            # MUST close the connection immediately" (Node closes on any packet for a
            # namespace the client has not joined, too)
            raise ProtocolViolation(
                f"packet type {kind} on namespace {namespace} before its CONNECT"
            )
        if kind == packet.DISCONNECT:
            await self._handle_disconnect(eio_sid, pkt.namespace, self.reason.CLIENT_DISCONNECT)
        elif kind in (packet.EVENT, packet.BINARY_EVENT):
            _check_event_args(pkt.data)
            await self._packet_complete(eio_sid, pkt)
        elif kind in (packet.ACK, packet.BINARY_ACK):
            if type(pkt.data) is not list or pkt.id is None:
                raise ProtocolViolation("an ACK needs an id and an array of arguments")
            await self._packet_complete(eio_sid, pkt)
        else:
            raise ProtocolViolation(f"a client may not send packet type {kind}")

    async def _packet_complete(self, eio_sid: str, pkt: Any) -> None:
        """Handle an EVENT or ACK, or hold a binary one until its attachments arrived."""
        count = pkt.attachment_count
        if pkt.packet_type in (packet.BINARY_EVENT, packet.BINARY_ACK):
            if not 0 < count <= self._max_attachments:
                raise ProtocolViolation(
                    f"a binary packet must announce 1 to {self._max_attachments} attachments, not {count}"
                )
            self._binary_packet[eio_sid] = pkt
            self._binary_bytes[eio_sid] = 0
            return
        await self._dispatch(eio_sid, pkt)

    async def _dispatch(self, eio_sid: str, pkt: Any) -> None:
        """An EVENT or ACK whose data is complete (attachments put back in place)."""
        if pkt.packet_type in (packet.EVENT, packet.BINARY_EVENT):
            await self._handle_event(eio_sid, pkt.namespace, pkt.id, pkt.data)
        else:
            await self._handle_ack(eio_sid, pkt.namespace, pkt.id, pkt.data)

    async def _attachment(self, eio_sid: str, data: Any) -> None:
        if type(data) is not bytes:
            raise ProtocolViolation("a text packet where a binary attachment was due")
        size = self._binary_bytes.get(eio_sid, 0) + len(data)
        if size > self._max_bytes:
            raise ProtocolViolation(
                f"binary attachments larger than {self._max_bytes} bytes in all"
            )
        self._binary_bytes[eio_sid] = size
        pkt = self._binary_packet[eio_sid]
        try:
            complete = pkt.add_attachment(data)
        except Exception as exc:
            raise ProtocolViolation(
                f"a binary packet whose placeholders do not match ({type(exc).__name__})"
            ) from None
        if complete:
            del self._binary_packet[eio_sid]
            self._binary_bytes.pop(eio_sid, None)
            if pkt.packet_type == packet.BINARY_EVENT:
                _check_event_args(pkt.data)
            await self._dispatch(eio_sid, pkt)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        self._binary_packet.pop(eio_sid, None)
        self._binary_bytes.pop(eio_sid, None)
        await super()._handle_eio_disconnect(eio_sid, reason)

    async def disconnect(
        self, sid: str, namespace: str | None = None, ignore_queue: bool = False
    ) -> None:
        """Disconnect ``sid`` from ``namespace``; the Engine.IO session closes too once it holds
        no namespace (as Node's ``socket.disconnect(true)``), so a kicked client cannot stay."""
        namespace = namespace or "/"
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        await super().disconnect(sid, namespace=namespace, ignore_queue=ignore_queue)
        if eio_sid is not None and not any(
            self.manager.sid_from_eio_sid(eio_sid, ns) for ns in self.manager.get_namespaces()
        ):
            await self.eio.disconnect(eio_sid)

    async def _handle_event_internal(
        self,
        server: socketio.AsyncServer,
        sid: str,
        eio_sid: str,
        data: list[Any],
        namespace: str,
        id: int | None,
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
            ctx = (
                EventContext(self.bus, Origin.SOCKET, connection, wants_ack, connection.namespace)
                if connection is not None
                else self.bus.context(Origin.SOCKET, wants_ack=wants_ack, namespace=namespace)
            )
            result = await self.bus.dispatch_args(name, data[1:], ctx)
        except PlugbusError as exc:
            error = self._refusal(exc, name)
        except Exception:
            log.exception("event %r from %s failed", name, sid)
            error = self._refusal(InternalError("internal error while handling the event"), name)
        parking = PARKING.get()
        if parking is not None and parking.behind:
            # started while this connection's earlier events wait for their appends: its
            # answer goes after theirs
            await wait_turn()
        # the event's schema, looked up once for the metrics and the ack
        event_cls = self.bus.events.get(name, namespace) if isinstance(name, str) else None
        metrics = self.metrics
        if metrics is not None:
            if error is None and event_cls is not None:
                # Metrics.event's count of an accepted event, inline (every event), under a
                # key made once per event name
                key = self._accepted_keys.get(name)
                if key is None:
                    key = self._accepted_keys[name] = ("socket", name, "ok")
                counts = metrics.events
                counts[key] = counts.get(key, 0) + 1
            else:
                metrics.event("socket", name, error, namespace, known=event_cls is not None)
        if wants_ack:
            # the ack's arguments: the {ok, data | error} envelope, or plain ones for events
            # that ask for them (ack_style "plain")
            reply = (
                [{"ok": True, "data": result}]  # ack_arguments' answer for an accepted event
                if error is None and event_cls is not None and event_cls.ack_style == "envelope"
                else ack_arguments(event_cls, result, error)
            )
            # The ack encoded by hand (the same text python-socketio's Packet.encode makes,
            # tested) and handed to the session at once; binary data in the reply takes
            # python-socketio's encoder.
            try:
                body: str | None = _orjson_dumps(reply, option=_ORJSON_OPTIONS).decode()
            except TypeError:
                body = None  # what wire_json.dumps_or_none answers
            if body is None:
                await server._send_packet(
                    eio_sid, self.packet_class(packet.ACK, namespace=namespace, id=id, data=reply)
                )
                return
            session = self.eio.session_of(eio_sid)
            if session is not None:
                session.send_message(f"{self._ack_prefixes[namespace]}{id}{body}")
        elif error is not None:
            await self.emit(ERROR_EVENT, error, to=sid, namespace=namespace)

    async def _handle_event_with_log_fields(
        self,
        server: socketio.AsyncServer,
        sid: str,
        eio_sid: str,
        data: list[Any],
        namespace: str,
        id: int | None,
    ) -> None:
        """:meth:`_handle_event_internal` with the sid, user and event on every log line
        written meanwhile (``log_format: json``)."""
        connection = self.bus.connection(sid)
        identity = connection.identity if connection is not None else None
        user = identity.user_id if identity is not None else None
        token = log_context.set(event_fields(sid, user, data[0]))
        try:
            await PlugbusSocketServer._handle_event_internal(
                self, server, sid, eio_sid, data, namespace, id
            )
        finally:
            log_context.reset(token)

    @staticmethod
    def _refusal(exc: PlugbusError, name: Any) -> dict[str, Any]:
        error = exc.to_dict()
        error["details"] = {
            "event": name if isinstance(name, str) else repr(name),
            **error["details"],
        }
        return error


def deliver_here(
    sio: PlugbusSocketServer,
    namespace: str,
    event: str,
    data: Any,
    room: str | None,
    skip_sid: str | list[str] | None,
    offset: str | None = None,
    feed: FeedEvent | None = None,
) -> None:
    """Deliver one event to the members of ``room`` (everyone when None) on this node.

    The hot path of every broadcast. The packet is encoded once and, for websocket clients on
    the direct writer, framed once: each gets the same frame bytes written to its transport.
    Other recipients (long-polling, the ASGI writer) get the same encoded text. Dead sessions
    are left to the engine's heartbeat. Per recipient: two dict lookups and one write.
    ``data`` follows python-socketio's emit: a tuple is several arguments, None none.

    Connections offered recovery get a second encoding (made once, when the first of them is
    met) with the offset as the last argument: ``offset`` for a stored event, the node's
    watermark for one that is not — true either way, since this node delivers stored events
    in offset order. Connections being recovered have the event held; recovered ones skip
    stored events they were replayed already.

    ``feed``: the event as read from the history feed; its publisher's JSON text, when there
    is one, is sent as it is (``event`` and ``data`` are then not read), and its mark is the
    watermark it is delivered at.
    """
    members = sio.manager.rooms.get(namespace, _NO_ROOMS).get(room)
    if not members:
        return
    if offset is not None and sio.floors:
        _prune_floors(sio, offset)
    watermark = sio.bus.history.watermark if feed is None else feed.mark
    text = feed.text if feed is not None else None
    if feed is not None and (text is None or sio.holding or sio.floors or sio.with_offsets):
        event, data = feed.call  # the values, for the recipients the shared text does not fit
    args = list(data) if isinstance(data, tuple) else ([] if data is None else [data])
    parts: list[str | bytes]
    if text is not None:
        parts = [_event_prefix(namespace) + text]
    else:
        encoded = sio.packet_class(packet.EVENT, namespace=namespace, data=[event, *args]).encode()
        parts = encoded if isinstance(encoded, list) else [encoded]
    skip = skip_sid if isinstance(skip_sid, list) else (skip_sid,)
    frames: list[bytes] | None = None
    sessions = sio.eio.sessions
    delivered = 0
    with_offsets = sio.with_offsets
    special = sio.holding or sio.floors
    marked: _Encoded | None = None
    for sid, eio_sid in members.items():
        if sid in skip:
            continue
        if special and (sid in sio.holding or sid in sio.floors):
            _deliver_special(sio, sid, eio_sid, namespace, event, args, offset, watermark)
            continue
        session = sessions.get(eio_sid)
        if session is None:
            continue
        delivered += 1
        if with_offsets and sid in with_offsets:
            if marked is None:
                marked = _Encoded(sio, namespace, [event, *args, offset or watermark])
            marked.write(session)
            continue
        writer = session.writer
        if writer is not None and writer.direct:
            if frames is None:
                frames = [encode_frame("4" + p if isinstance(p, str) else p) for p in parts]
            for frame in frames:
                writer.write_frame(frame)
        else:
            for part in parts:
                session.send_message(part)
    if sio.metrics is not None and delivered:
        sio.metrics.delivered(delivered, sum(len(p) for p in parts))


def _event_prefix(namespace: str) -> str:
    """An EVENT packet's text up to its JSON data (python-socketio's ``Packet.encode``)."""
    return "2" if namespace == "/" else f"2{namespace},"


def deliver_feed(sio: PlugbusSocketServer, events: list[FeedEvent]) -> None:
    """Deliver events read from the history feed, in order, on this node.

    Consecutive events to the same room are delivered together: each recipient gets one write
    with all of its frames (framed once per event, for every recipient), in the events'
    order. Whatever needs more than the publisher's encoded text — binary events, connections
    being recovered or just recovered — takes :func:`deliver_here`, one event at a time.
    """
    i, n = 0, len(events)
    while i < n:
        first = events[i]
        j = i + 1
        while j < n and events[j].target == first.target and events[j].namespace == first.namespace:
            j += 1
        try:
            if j - i == 1 or sio.holding or sio.floors or any(e.text is None for e in events[i:j]):
                for e in events[i:j]:
                    deliver_here(sio, e.namespace, "", None, e.target, e.skip, e.offset, e)
            else:
                _deliver_run(sio, events[i:j])
        except Exception:
            log.exception(
                "delivering %s..%s from the history feed failed", first.mark, events[j - 1].mark
            )
        i = j


def _deliver_run(sio: PlugbusSocketServer, run: list[FeedEvent]) -> None:
    """Several events, each with its encoded text, to the members of one room (none of them
    being recovered): one write per recipient."""
    first = run[0]
    members = sio.manager.rooms.get(first.namespace, {}).get(first.target)
    if not members:
        return
    prefix = _event_prefix(first.namespace)
    texts = [prefix + e.text for e in run]  # type: ignore[operator]  # deliver_feed checked
    frames = [encode_frame("4" + t) for t in texts]
    everything: bytes | None = None
    skips = [e.skip for e in run]
    skipping = {s for s in skips if s is not None}
    with_offsets = sio.with_offsets
    marked: list[str] | None = None
    marked_frames: list[bytes] | None = None
    sessions = sio.eio.sessions
    recipients = 0
    skipped = dict.fromkeys(range(len(run)), 0)
    for sid, eio_sid in members.items():
        session = sessions.get(eio_sid)
        if session is None:
            continue
        recipients += 1
        mine = range(len(run))
        if sid in skipping:
            mine = [k for k, s in enumerate(skips) if s != sid]  # type: ignore[assignment]
            for k, s in enumerate(skips):
                if s == sid:
                    skipped[k] += 1
            if not mine:
                continue
        writer = session.writer
        if writer is not None and not writer.direct:
            writer = None  # polling, or the ASGI writer: messages, not frames
        if with_offsets and sid in with_offsets:
            if marked is None:
                # the offset as the last argument: the same JSON array, one element longer
                marked = [t[:-1] + ',"' + e.mark + '"]' for t, e in zip(texts, run, strict=True)]
                marked_frames = [encode_frame("4" + t) for t in marked]
            if writer is not None:
                assert marked_frames is not None
                writer.write_frame(b"".join(marked_frames[k] for k in mine))
            else:
                for k in mine:
                    session.send_message(marked[k])
            continue
        if writer is not None:
            if len(mine) == len(run):
                if everything is None:
                    everything = b"".join(frames)
                writer.write_frame(everything)
            else:
                writer.write_frame(b"".join(frames[k] for k in mine))
        else:
            for k in mine:
                session.send_message(texts[k])
    metrics = sio.metrics
    if metrics is not None and recipients:
        for k, t in enumerate(texts):
            if recipients - skipped[k]:
                metrics.delivered(recipients - skipped[k], len(t))


class _Encoded:
    """One packet encoded once (and framed once, for direct websocket writers)."""

    __slots__ = ("frames", "parts")

    def __init__(self, sio: PlugbusSocketServer, namespace: str, data: list[Any]) -> None:
        encoded = sio.packet_class(packet.EVENT, namespace=namespace, data=data).encode()
        self.parts: list[str | bytes] = encoded if isinstance(encoded, list) else [encoded]
        self.frames: list[bytes] | None = None

    def write(self, session: Any) -> None:
        writer = session.writer
        if writer is not None and writer.direct:
            if self.frames is None:
                self.frames = [
                    encode_frame("4" + p if isinstance(p, str) else p) for p in self.parts
                ]
            for frame in self.frames:
                writer.write_frame(frame)
        else:
            for part in self.parts:
                session.send_message(part)


def _prune_floors(sio: PlugbusSocketServer, offset: str) -> None:
    """A stored event newer than a floor has arrived: with the feed in offset order, no copy
    of a replayed event can follow, so that floor is done with."""
    key = parse_offset(offset) or (0, 0)
    for sid, (_floor, floor_key) in list(sio.floors.items()):
        if floor_key < key:
            del sio.floors[sid]


def _deliver_special(
    sio: PlugbusSocketServer,
    sid: str,
    eio_sid: str,
    namespace: str,
    event: str,
    args: list[Any],
    offset: str | None,
    watermark: str,
) -> None:
    """One recipient being recovered (hold the event) or just recovered (skip what it was
    replayed; never let its offset go back). ``watermark``: the offset this node has
    delivered up to, this event included."""
    held = sio.holding.get(sid)
    if held is not None:
        held.append((namespace, event, args, offset or watermark, offset is not None))
        return
    session = sio.eio.sessions.get(eio_sid)
    if session is None:
        return
    floor, floor_key = sio.floors[sid]
    if offset is not None:
        if (parse_offset(offset) or (0, 0)) <= floor_key:
            return
        mark = offset
    else:
        mark = later(watermark, floor)
    data = [event, *args, mark] if sid in sio.with_offsets else [event, *args]
    _Encoded(sio, namespace, data).write(session)


class SocketTransport:
    """:class:`plugbus.core.Transport` on a python-socketio server and its client manager;
    every operation in the namespace the bus names."""

    def __init__(self, sio: socketio.AsyncServer) -> None:
        self._sio = sio

    async def emit(
        self,
        event: str,
        data: Any,
        *,
        room: str | None = None,
        skip_sid: str | None = None,
        namespace: str = "/",
    ) -> None:
        deliver_here(self._sio, namespace, event, data, room, skip_sid)

    def deliver(
        self,
        event: str,
        args: tuple[Any, ...],
        *,
        room: str | None = None,
        skip_sid: str | None = None,
        namespace: str = "/",
        offset: str | None = None,
    ) -> None:
        deliver_here(self._sio, namespace, event, args, room, skip_sid, offset)

    def deliver_stored(
        self,
        namespace: str,
        event: str,
        args: tuple[Any, ...],
        target: str | None,
        kind: str,
        skip_sid: str | None,
        offset: str | None,
    ) -> None:
        deliver_here(self._sio, namespace, event, args, target, skip_sid, offset)

    def deliver_many(self, events: list[FeedEvent]) -> None:
        deliver_feed(self._sio, events)

    async def enter_room(self, sid: str, room: str, *, namespace: str = "/") -> None:
        await self._sio.enter_room(sid, room, namespace=namespace)

    async def leave_room(self, sid: str, room: str, *, namespace: str = "/") -> None:
        await self._sio.leave_room(sid, room, namespace=namespace)

    def rooms_of(self, sid: str, *, namespace: str = "/") -> list[str]:
        return [r for r in self._sio.manager.get_rooms(sid, namespace) if r != sid]

    def is_member(self, sid: str, room: str, *, namespace: str = "/") -> bool:
        members = self._sio.manager.rooms.get(namespace, _NO_ROOMS).get(room)
        return bool(members) and sid in members

    def rooms(self, *, namespace: str = "/") -> dict[str, int]:
        ns = self._sio.manager.rooms.get(namespace, {})
        everyone = ns.get(None, {})
        return {
            name: len(members)
            for name, members in ns.items()
            if name is not None and name not in everyone and members
        }

    def members(self, room: str, *, namespace: str = "/") -> list[str]:
        members = self._sio.manager.rooms.get(namespace, {}).get(room)
        return list(members) if members else []

    def room_size(self, room: str, *, namespace: str = "/") -> int:
        members = self._sio.manager.rooms.get(namespace, _NO_ROOMS).get(room)
        return len(members) if members else 0

    def connection_count(self, *, namespace: str = "/") -> int:
        return self.room_size(None, namespace=namespace)  # type: ignore[arg-type]  # the None room holds everyone

    async def disconnect(self, sid: str, *, namespace: str = "/") -> None:
        await self._sio.disconnect(sid, namespace=namespace)
