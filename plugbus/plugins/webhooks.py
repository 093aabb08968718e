"""webhooks: room and membership events (and, if asked, published messages) POSTed as signed
JSON to configured URLs, from a background task, so that a slow or dead receiver never holds
up the event pipeline.

Off by default: add ``webhooks`` to ``plugins.builtins``. Each URL has its own bounded queue
and sender task; a full queue drops its oldest event (counted in
``plugbus_webhook_deliveries_total{outcome="dropped"}``). A delivery that fails (a connection
error, a timeout, a 408, 429 or 5xx answer) is retried with exponential backoff up to
``retry.attempts`` times; any other 4xx answer is final. Each attempt is signed anew:
``X-Plugbus-Signature: v1=<hex HMAC-SHA256 of "<X-Plugbus-Timestamp>.<body>" with the secret>``.

Room occupied and vacated fire once per cluster with a Redis backend: the first node to set
the room's ``occupied`` flag in ``bus.store("webhooks")`` (set-if-absent) sends
``room.occupied``; the node that finds the room empty in ``bus.presence`` and deletes the flag
sends ``room.vacated`` (and, should someone have joined meanwhile, sets the flag again and
sends ``room.occupied``). Membership work runs in the same background task, off the pipeline.
docs/plugins/webhooks.md is this plugin's page.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Generator
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import AnyHttpUrl, Field, model_validator

from plugbus import (
    Bus,
    Connection,
    Counter,
    Event,
    EventContext,
    Plugin,
    PluginSettings,
    Secret,
    hookimpl,
    new_id,
)

log = logging.getLogger("plugbus.webhooks")

WebhookEvent = Literal[
    "room.occupied", "room.vacated", "member.added", "member.removed", "message.published"
]
#: every event type, in the order the page lists them
EVENT_TYPES: tuple[WebhookEvent, ...] = (
    "room.occupied",
    "room.vacated",
    "member.added",
    "member.removed",
    "message.published",
)
TIMESTAMP_HEADER = "X-Plugbus-Timestamp"
SIGNATURE_HEADER = "X-Plugbus-Signature"
#: answers worth another attempt besides 5xx: the receiver asks to be tried again later
RETRY_STATUSES = frozenset({408, 425, 429})


class RetrySettings(PluginSettings):
    """How a failed delivery is tried again: after ``initial_delay_s``, then each delay
    ``factor`` times the one before, at most ``max_delay_s``, for ``attempts`` in all."""

    attempts: int = Field(5, ge=1, le=20, description="Attempts per event, the first included.")
    initial_delay_s: float = Field(
        1.0, gt=0, le=300, description="Seconds before the second attempt."
    )
    factor: float = Field(2.0, ge=1, le=10, description="Each delay is this times the last.")
    max_delay_s: float = Field(60.0, gt=0, le=3600, description="Longest delay between attempts.")


class WebhooksSettings(PluginSettings):
    """Settings of the webhooks plugin."""

    urls: list[AnyHttpUrl] = Field(
        default_factory=list,
        description="Where every event is POSTed (http or https); logs show no user, password "
        "or query of them.",
    )
    secret: Secret | None = Field(
        None,
        description="The HMAC-SHA256 key of the signature, needed with urls; a secret setting, "
        'never logged ("$env:NAME" reads it from the environment).',
    )
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(EVENT_TYPES[:4]),
        description="Which events are sent; message.published is off by default.",
    )
    queue_size: int = Field(
        1000, ge=1, le=1_000_000, description="Events waiting per URL; past it the oldest go."
    )
    timeout_s: float = Field(5.0, gt=0, le=120, description="Seconds one attempt may take.")
    retry: RetrySettings = Field(default_factory=RetrySettings)

    @model_validator(mode="after")
    def _signed(self) -> WebhooksSettings:
        if self.urls and (self.secret is None or not self.secret.get_secret_value()):
            raise ValueError("a secret is needed to sign what is sent to urls")
        return self


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Plugbus-Signature`` value of ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def shown(url: str) -> str:
    """``url`` for logs: without its user, password and query (they may hold credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


class Sender:
    """One URL's queue and the task that empties it, one event at a time (so a receiver gets
    them in order), each tried until it is taken or the retry policy gives up."""

    def __init__(
        self,
        url: str,
        settings: WebhooksSettings,
        client: httpx.AsyncClient,
        deliveries: Counter,
        retries: Counter,
    ) -> None:
        self.url = url
        self.settings = settings
        self.client = client
        self.deliveries = deliveries
        self.retries = retries
        self.queue: deque[tuple[str, str, bytes]] = deque()  # (id, type, body)
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._overflowing = False
        self._secret = (
            settings.secret.get_secret_value().encode() if settings.secret is not None else b""
        )

    def put(self, event_id: str, kind: str, body: bytes) -> None:
        """Queue an event; when the queue is full the oldest waiting one is dropped."""
        if len(self.queue) >= self.settings.queue_size:
            self.queue.popleft()
            self.deliveries.inc("dropped")
            if not self._overflowing:  # once per overflow, not once per event
                self._overflowing = True
                log.warning(
                    "webhooks: the queue for %s is full (%d); dropping the oldest events",
                    shown(self.url),
                    self.settings.queue_size,
                )
        elif self._overflowing and len(self.queue) < self.settings.queue_size // 2:
            self._overflowing = False
        self.queue.append((event_id, kind, body))
        self.wake.set()

    async def run(self) -> None:
        """Send what is queued, for ever."""
        while True:
            while not self.queue:
                self.wake.clear()
                await self.wake.wait()
            event_id, kind, body = self.queue.popleft()
            await self.deliver(event_id, kind, body)

    async def deliver(self, event_id: str, kind: str, body: bytes) -> bool:
        """POST one event, retrying as the policy says; True when the receiver took it."""
        retry = self.settings.retry
        delay = retry.initial_delay_s
        why = ""
        for attempt in range(1, retry.attempts + 1):
            if attempt > 1:
                self.retries.inc()
                await asyncio.sleep(delay)
                delay = min(delay * retry.factor, retry.max_delay_s)
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "plugbus-webhooks",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(self._secret, timestamp, body),
                "X-Plugbus-Event": kind,
                "X-Plugbus-Delivery": event_id,
                "X-Plugbus-Attempt": str(attempt),
            }
            try:
                resp = await self.client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if resp.is_success:
                self.deliveries.inc("delivered")
                return True
            why = f"HTTP {resp.status_code}"
            if resp.status_code < 500 and resp.status_code not in RETRY_STATUSES:
                break  # the receiver refuses it: trying again would get the same answer
        self.deliveries.inc("failed")
        log.warning(
            "webhooks: %s %s not delivered to %s after %d attempt(s): %s",
            kind,
            event_id,
            shown(self.url),
            attempt,
            why,
        )
        return False


#: a membership change for the background task: (kind, connection, room, namespace)
Job = tuple[Literal["joined", "left"], Connection, str, str]


class WebhooksPlugin(Plugin):
    """Sends room, membership and (optionally) message events to webhook receivers.

    :ivar settings: the validated :class:`WebhooksSettings`.
    :ivar senders: one :class:`Sender` per URL (after start-up).
    """

    Settings = WebhooksSettings
    settings: WebhooksSettings

    def __init__(self, settings: WebhooksSettings) -> None:
        super().__init__(settings)
        self.wanted = frozenset(settings.events)
        self.senders: list[Sender] = []
        self.jobs: asyncio.Queue[Job] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._membership = bool(self.wanted - {"message.published"})
        if "message.published" not in self.wanted:
            # Not a hook at all then: the per-event path keeps no wrapper it does not need
            # (pluggy registers only what is a routine on the instance).
            self.__dict__["plugbus_handle_event"] = None

    @hookimpl
    async def plugbus_startup(self, bus: Bus) -> None:
        """Open the HTTP client and start one sender per URL and the membership task."""
        self.bus = bus
        self.store = bus.store("webhooks")
        deliveries = bus.counter(
            "webhook_deliveries",
            "Webhook events by outcome: delivered, failed (refused, or every attempt failed), "
            "dropped (the oldest of a full queue).",
            ("outcome",),
        )
        retries = bus.counter("webhook_retries", "Webhook delivery attempts after a first one.")
        s = self.settings
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(s.timeout_s),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=max(4, len(s.urls) * 2)),
        )
        self.senders = [Sender(str(u), s, self._client, deliveries, retries) for u in s.urls]
        for sender in self.senders:
            sender.task = asyncio.create_task(sender.run(), name="plugbus-webhooks-sender")
            self._tasks.append(sender.task)
        self._tasks.append(asyncio.create_task(self._memberships(), name="plugbus-webhooks"))
        if not self.senders:
            log.warning("webhooks: loaded with no urls; nothing will be sent")

    @hookimpl
    async def plugbus_shutdown(self) -> None:
        """Stop the tasks and close the HTTP client; events still queued are dropped
        (counted and logged)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = sum(len(s.queue) for s in self.senders)
        for sender in self.senders:
            sender.deliveries.inc("dropped", amount=len(sender.queue))
            sender.queue.clear()
        if left:
            log.warning("webhooks: %d queued event(s) dropped at shutdown", left)
        if self._client is not None:
            await self._client.aclose()

    # -- what happens ------------------------------------------------------------------------

    @hookimpl
    def plugbus_room_joined(self, connection: Connection, room: str) -> None:
        """Queue ``member.added`` (and ``room.occupied`` for the first member)."""
        if self._membership:
            self.jobs.put_nowait(("joined", connection, room, connection.namespace))

    @hookimpl
    def plugbus_room_left(self, connection: Connection, room: str) -> None:
        """Queue ``member.removed`` (and ``room.vacated`` for the last member)."""
        if self._membership:
            self.jobs.put_nowait(("left", connection, room, connection.namespace))

    @hookimpl
    def plugbus_disconnect(self, connection: Connection, bus: Bus) -> None:
        """A closed connection leaves each of its rooms — unless its session is kept for
        recovery: then it leaves them when the session expires (a client that comes back
        never left)."""
        if not self._membership or connection.suspended:
            return
        for room in bus.rooms_of(connection.sid, connection.namespace):
            self.jobs.put_nowait(("left", connection, room, connection.namespace))

    @hookimpl
    def plugbus_session_expired(self, connection: Connection, rooms: list[str]) -> None:
        """A session kept for recovery expired: it leaves its rooms now."""
        if self._membership:
            for room in rooms:
                self.jobs.put_nowait(("left", connection, room, connection.namespace))

    @hookimpl(wrapper=True)
    def plugbus_handle_event(self, event: Event, ctx: EventContext) -> Generator[None, Any, Any]:
        """Around the handlers: a ``send-message`` they carried out becomes
        ``message.published`` (only registered when that event is selected)."""
        result = yield
        if event.event_name == "send-message" and isinstance(result, dict) and "room" in result:
            message = getattr(event, "message", None)
            sender = ctx.connection
            identity = sender.identity if sender is not None else None
            self.send(
                "message.published",
                namespace=ctx.namespace,
                room=result["room"],
                message={
                    "id": result.get("id"),
                    "from": sender.sid if sender is not None else None,
                    "user": identity.user_id if identity is not None else None,
                    **_message_field(message),
                },
            )
        return result

    # -- the background work -----------------------------------------------------------------

    async def _memberships(self) -> None:
        while True:
            kind, connection, room, namespace = await self.jobs.get()
            try:
                if kind == "joined":
                    await self._joined(connection, room, namespace)
                else:
                    await self._left(connection, room, namespace)
            except Exception as exc:  # Redis away, say: that event is lost, the next may not be
                log.warning(
                    "webhooks: membership event for a room of %s lost: %s: %s",
                    namespace,
                    type(exc).__name__,
                    exc,
                )

    @staticmethod
    def _flag(room: str, namespace: str) -> str:
        # the namespace's length keeps a room holding ":" from reaching another namespace's key
        return f"occupied:{len(namespace)}:{namespace}:{room}"

    async def _joined(self, connection: Connection, room: str, namespace: str) -> None:
        if await self.store.add(self._flag(room, namespace), self.bus.node_id):
            self.send("room.occupied", namespace=namespace, room=room)
        self.send("member.added", namespace=namespace, room=room, member=_member(connection))

    async def _left(self, connection: Connection, room: str, namespace: str) -> None:
        self.send("member.removed", namespace=namespace, room=room, member=_member(connection))
        if await self._count(room, namespace, without=connection.sid):
            return
        flag = self._flag(room, namespace)
        if await self.store.delete(flag):
            self.send("room.vacated", namespace=namespace, room=room)
            # someone joined between the count and the delete, and found the flag still set:
            # the room is occupied again, and nobody else will say so
            if await self._count(room, namespace) and await self.store.add(flag, self.bus.node_id):
                self.send("room.occupied", namespace=namespace, room=room)

    async def _count(self, room: str, namespace: str, *, without: str | None = None) -> int:
        members = await self.bus.presence.members(room, namespace)
        return sum(1 for m in members if m.sid != without)

    def send(self, kind: WebhookEvent, **data: Any) -> None:
        """Queue event ``kind`` with ``data`` for every URL (when ``kind`` is selected)."""
        if kind not in self.wanted or not self.senders:
            return
        event_id = new_id()
        body = json.dumps(
            {
                "id": event_id,
                "type": kind,
                "ts": round(time.time(), 3),
                "server": self.bus.server_name,
                "node": self.bus.node_id,
                **data,
            },
            separators=(",", ":"),
            ensure_ascii=False,
            default=str,
        ).encode()
        for sender in self.senders:
            sender.put(event_id, kind, body)


def _member(connection: Connection) -> dict[str, Any]:
    identity = connection.identity
    return {
        "sid": connection.sid,
        "user": identity.user_id if identity is not None else None,
        "name": identity.name if identity is not None else None,
    }


def _message_field(message: Any) -> dict[str, Any]:
    """The message for JSON: as it is, or binary as base64 with ``"binary": true``."""
    if isinstance(message, bytes | bytearray | memoryview):
        return {"message": base64.b64encode(bytes(message)).decode(), "binary": True}
    return {"message": message}
