"""One Engine.IO v4 session: its transport, outgoing packets, heartbeat and close.

A session starts on long-polling (packets wait in ``outbox`` for the next GET) or directly on a
websocket (packets go to its writer at once), and may upgrade from the first to the second.
The heartbeat is two deadlines, not a task: a PING every ``ping_interval``, and a deadline
``ping_timeout`` after it by which the PONG must have come (Engine.IO v4: the server pings).
The deadlines are kept in the engine's timer queues (:class:`TimerQueue`, one per kind), not
in a timer per session.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .writers import AsgiWriter, DirectWriter, encode_frame

if TYPE_CHECKING:
    from .engine import EngineServer

log = logging.getLogger("plugbus.wire")

#: Packets one long-polling payload carries at most: python-engineio's clients refuse a payload
#: of more (``Payload.max_decode_packets``, 16) and stop polling; a burst of feed deliveries to
#: a polling client easily queues more between two GETs.
PAYLOAD_PACKETS = 16

OPEN, CLOSING, CLOSED = "open", "closing", "closed"
PING = "2"
_PING_FRAME = encode_frame(PING)
#: What a pending GET is woken with, besides new packets.
WAKE_NOOP, WAKE_CLOSE = "noop", "close"


class TimerQueue:
    """Deadlines that are all the same delay after they were set, for many sessions, behind one
    event-loop timer.

    As the delay is the same for every entry and the loop's clock never goes back, entries are
    appended in deadline order: a deque is the whole schedule, and only its head is armed. A
    session cancels by forgetting the deadline it holds (``due`` returns None); its entry
    stays until it comes due and is then skipped, so a closed session's object is kept that
    long (at most the delay: ``connect_timeout``, ``ping_interval`` or ``ping_timeout``), not
    freed at once. Per session that is one small tuple instead
    of an event-loop timer handle (~0.3 KB with uvloop); with ~10k sessions each PONG also
    costs an append instead of a timer-heap insertion.
    """

    __slots__ = ("_armed", "_delay", "_due", "_entries", "_fire")

    def __init__(
        self,
        delay: float,
        due: Callable[[EngineSession], float | None],
        fire: Callable[[EngineSession], None],
    ) -> None:
        self._delay = delay
        self._due = due
        self._fire = fire
        self._entries: deque[tuple[float, EngineSession]] = deque()
        self._armed: asyncio.TimerHandle | None = None

    def add(self, session: EngineSession) -> float:
        """Schedule ``session`` ``delay`` from now; returns the deadline the session holds."""
        loop = asyncio.get_running_loop()
        when = loop.time() + self._delay
        self._entries.append((when, session))
        if self._armed is None:
            self._armed = loop.call_at(when, self._run)
        return when

    def _run(self) -> None:
        self._armed = None
        entries = self._entries
        loop = asyncio.get_running_loop()
        now = loop.time()
        due, fire = self._due, self._fire
        while entries and entries[0][0] <= now:
            when, session = entries.popleft()
            if due(session) == when:  # still the session's deadline: not cancelled or moved
                try:
                    fire(session)
                except Exception:
                    log.exception("session timer for %s failed", session.sid)
        if entries:
            self._armed = loop.call_at(entries[0][0], self._run)

    def stop(self) -> None:
        """Forget every entry (the engine is shutting down, every session closed)."""
        self._entries.clear()
        if self._armed is not None:
            self._armed.cancel()
            self._armed = None


class SessionTimers:
    """The engine's three timer queues: PINGs due, PONGs awaited, CONNECTs awaited."""

    __slots__ = ("connect", "ping", "pong")

    def __init__(self, ping_interval: float, ping_timeout: float, connect_timeout: float) -> None:
        self.ping = TimerQueue(ping_interval, EngineSession.ping_due, EngineSession.ping)
        self.pong = TimerQueue(ping_timeout, EngineSession.pong_due, EngineSession.pong_missed)
        self.connect = TimerQueue(
            connect_timeout, EngineSession.connect_due, EngineSession.connect_expired
        )

    def stop(self) -> None:
        """Forget every deadline (the engine is shutting down)."""
        for queue in (self.ping, self.pong, self.connect):
            queue.stop()


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
        "_connect_due",
        "_ping_due",
        "_pong_due",
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
        # the deadlines this session holds in the engine's timer queues (None: not scheduled)
        self._ping_due: float | None = None
        self._pong_due: float | None = None
        self._connect_due: float | None = None
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

    def drop_slow(self) -> None:
        """The websocket writer gave up on a slow consumer: count it, close without flushing."""
        self.server.count("slow_consumer")
        self.close(self.server.reason.TRANSPORT_ERROR, flush=False)

    def take_outbox(self, limit: int = PAYLOAD_PACKETS) -> str:
        """What is held for the client, as one long-polling payload of at most ``limit``
        packets; the rest waits for the next GET (which then returns at once)."""
        taken, self.outbox = self.outbox[:limit], self.outbox[limit:]
        payload = "\x1e".join(taken)
        self.outbox_bytes = sum(map(len, self.outbox)) if self.outbox else 0
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
        timers = self.server.timers
        self._ping_due = timers.ping.add(self)
        if connect_timeout:
            self._connect_due = timers.connect.add(self)

    def mark_connected(self) -> None:
        """The client joined a namespace: the connect deadline no longer applies."""
        if self.socketio_connected:
            return
        self.socketio_connected = True
        self.server.joined(self)
        self._connect_due = None

    def ping_due(self) -> float | None:
        return self._ping_due

    def pong_due(self) -> float | None:
        return self._pong_due

    def connect_due(self) -> float | None:
        return self._connect_due

    def ping(self) -> None:
        """The PING is due: send it; the PONG is due in ``ping_timeout``."""
        self._ping_due = None
        if self.state != OPEN:
            return
        writer = self.writer
        if writer is None:
            self.queue(PING)
        elif writer.direct:
            writer.write_frame(_PING_FRAME)
        else:
            writer.send(PING)
        if self.state == OPEN:
            self._pong_due = self.server.timers.pong.add(self)

    def on_pong(self) -> None:
        """A PONG arrived: the deadline is met, the next PING is due in ``ping_interval``."""
        if self._pong_due is None:
            return  # a PONG nobody asked for changes nothing
        self._pong_due = None
        if self.state == OPEN:
            self._ping_due = self.server.timers.ping.add(self)

    def pong_missed(self) -> None:
        """No PONG within ``ping_timeout``: the session ends."""
        self._pong_due = None
        self.close(self.server.reason.PING_TIMEOUT)

    def connect_expired(self) -> None:
        """No Socket.IO CONNECT within ``connect_timeout``: the session ends."""
        self._connect_due = None
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
        self._ping_due = self._pong_due = self._connect_due = None
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
