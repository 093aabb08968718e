"""One Engine.IO v4 session: its transport, outgoing packets, heartbeat and close.

A session starts on long-polling (packets wait in ``outbox`` for the next GET) or directly on a
websocket (packets go to its writer at once), and may upgrade from the first to the second.
The heartbeat is two timers, not a task: a PING every ``ping_interval``, and a deadline
``ping_timeout`` after it by which the PONG must have come (Engine.IO v4: the server pings).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import TYPE_CHECKING, Any

from .writers import AsgiWriter, DirectWriter, encode_frame

if TYPE_CHECKING:
    from .engine import EngineServer

log = logging.getLogger("plugbus.wire")

OPEN, CLOSING, CLOSED = "open", "closing", "closed"
PING = "2"
_PING_FRAME = encode_frame(PING)
#: What a pending GET is woken with, besides new packets.
WAKE_NOOP, WAKE_CLOSE = "noop", "close"


class EngineSession:
    """An Engine.IO session held by :class:`~plugbus.api.wire.engine.EngineServer`.

    :ivar sid: the Engine.IO session id.
    :ivar transport: ``"polling"`` or ``"websocket"`` (after an upgrade, or from the start).
    :ivar writer: the websocket writer once the websocket carries the session, else None.
    :ivar state: ``"open"``, ``"closing"`` (a polling session flushing its last packets) or
        ``"closed"``.
    :ivar data: python-socketio's per-session dict (``get_session``).
    """

    __slots__ = (
        "_connect_timer",
        "_ping_timer",
        "_pong_timer",
        "_ws_send",
        "close_reason",
        "data",
        "environ",
        "outbox",
        "outbox_bytes",
        "poll",
        "posting",
        "remote_addr",
        "server",
        "sid",
        "socketio_connected",
        "state",
        "transport",
        "upgrading",
        "writer",
    )

    def __init__(
        self,
        server: EngineServer,
        sid: str,
        transport: str,
        environ: dict[str, Any],
        remote_addr: str | None,
    ) -> None:
        self.sid = sid
        self.server = server
        self.transport = transport
        self.writer: DirectWriter | AsgiWriter | None = None
        self.state = OPEN
        self.environ = environ
        self.remote_addr = remote_addr
        self.data: dict[str, Any] = {}
        self.outbox: list[str] = []
        self.outbox_bytes = 0
        self.poll: asyncio.Future[str | None] | None = None
        self.posting = False
        self.upgrading = False
        self.socketio_connected = False
        self.close_reason: str | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._connect_timer: asyncio.TimerHandle | None = None
        self._ws_send: Any = None

    # -- sending ------------------------------------------------------------------------------

    def send_message(self, data: str | bytes) -> None:
        """Send one Engine.IO MESSAGE holding ``data`` (a Socket.IO packet or an attachment)."""
        writer = self.writer
        if writer is not None:
            writer.send("4" + data if isinstance(data, str) else data)
        elif isinstance(data, str):
            self.queue("4" + data)
        else:
            # v4 long-polling carries binary as "b" + base64, implicitly a message
            self.queue("b" + base64.b64encode(data).decode("ascii"))

    def queue(self, encoded: str) -> None:
        """Hold one encoded packet for the next GET (long-polling, or during an upgrade)."""
        if self.state == CLOSED:
            return
        self.outbox.append(encoded)
        self.outbox_bytes += len(encoded)
        if self.outbox_bytes > self.server.settings.send_buffer_limit:
            log.warning(
                "dropping a slow long-polling client %s: %d bytes unsent (limit %d)",
                self.sid,
                self.outbox_bytes,
                self.server.settings.send_buffer_limit,
            )
            self.outbox.clear()
            self.outbox_bytes = 0
            self.server.count("slow_consumer")
            self.close(self.server.reason.TRANSPORT_ERROR, flush=False)
            return
        self.wake(None)

    def take_outbox(self) -> str:
        """Everything held for the client, as one long-polling payload."""
        payload = "\x1e".join(self.outbox)
        self.outbox = []
        self.outbox_bytes = 0
        return payload

    def wake(self, why: str | None) -> None:
        """Answer the pending GET now (with the outbox, a NOOP, or the close)."""
        poll = self.poll
        if poll is not None and not poll.done():
            poll.set_result(why)

    def use_writer(self, writer: DirectWriter | AsgiWriter, ws_send: Any) -> None:
        """Carry the session over ``writer`` from now on, after what waited in the outbox."""
        for encoded in self.outbox:
            if encoded[:1] == "b":
                writer.send(base64.b64decode(encoded[1:]))
            else:
                writer.send(encoded)
        self.outbox = []
        self.outbox_bytes = 0
        self.writer = writer
        self._ws_send = ws_send
        self.transport = "websocket"

    # -- heartbeat and timers -----------------------------------------------------------------

    def start(self, connect_timeout: float) -> None:
        """Start the heartbeat, and the deadline for the client's Socket.IO CONNECT."""
        loop = asyncio.get_running_loop()
        self._ping_timer = loop.call_later(self.server.settings.ping_interval, self._ping)
        if connect_timeout:
            self._connect_timer = loop.call_later(connect_timeout, self._connect_expired)

    def mark_connected(self) -> None:
        """The client joined a namespace: the connect deadline no longer applies."""
        if self.socketio_connected:
            return
        self.socketio_connected = True
        self.server.joined(self)
        timer = self._connect_timer
        if timer is not None:
            timer.cancel()
            self._connect_timer = None

    def _ping(self) -> None:
        self._ping_timer = None
        if self.state != OPEN:
            return
        writer = self.writer
        if writer is None:
            self.queue(PING)
        elif writer.direct:
            writer.write_frame(_PING_FRAME)
        else:
            writer.send(PING)
        self._pong_timer = asyncio.get_running_loop().call_later(
            self.server.settings.ping_timeout, self._pong_missed
        )

    def on_pong(self) -> None:
        """A PONG arrived: the deadline is met, the next PING is due in ``ping_interval``."""
        timer = self._pong_timer
        if timer is None:
            return  # a PONG nobody asked for changes nothing
        timer.cancel()
        self._pong_timer = None
        if self.state == OPEN:
            self._ping_timer = asyncio.get_running_loop().call_later(
                self.server.settings.ping_interval, self._ping
            )

    def _pong_missed(self) -> None:
        self._pong_timer = None
        self.close(self.server.reason.PING_TIMEOUT)

    def _connect_expired(self) -> None:
        self._connect_timer = None
        if not self.socketio_connected and self.state == OPEN:
            log.info(
                "closing %s from %s: no Socket.IO CONNECT within %g s",
                self.sid,
                self.remote_addr,
                self.server.settings.connect_timeout,
            )
            self.server.count("connect_timeout")
            self.close("connect timeout")

    # -- closing ------------------------------------------------------------------------------

    def close(self, reason: str, *, flush: bool = True) -> None:
        """End the session (idempotent): timers stop, the websocket closes after what was
        written, a pending GET is answered with what is held and a CLOSE packet, and the
        server forgets the session and tells python-socketio once."""
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self.close_reason = reason
        for timer in (self._ping_timer, self._pong_timer, self._connect_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = self._connect_timer = None
        if not flush:
            self.outbox.clear()
            self.outbox_bytes = 0
        self.server.forget(
            self,
            reason,
            linger=flush
            and bool(self.outbox)
            and self.poll is None
            and self.transport == "polling",
        )
        self.wake(WAKE_CLOSE)
        if self._ws_send is not None:
            asyncio.get_running_loop().create_task(self._close_websocket())

    async def _close_websocket(self) -> None:
        writer, ws_send = self.writer, self._ws_send
        self._ws_send = None
        if writer is not None:
            await writer.drain()
            if writer.dropped:
                return  # aborted already
        try:
            await ws_send({"type": "websocket.close", "code": 1000})
        except Exception:
            pass
