"""plugbus's benchmark load generator: Engine.IO 4 / Socket.IO 5 over raw websockets.

    python bench/loadgen.py WORKLOAD --url http://127.0.0.1:3000 [options]   -> one JSON object

Every client is one websocket (``/socket.io/?EIO=4&transport=websocket``, no long-polling
upgrade) spoken with the least parsing that still follows the protocol: the Engine.IO open
packet ``0{...}`` is answered with the Socket.IO connect ``40``, pings ``2`` with pongs ``3``,
events arrive as ``42[...]`` and acks as ``43<id>[...]``. Only the packets a workload measures
are decoded, and only as far as it needs (a delivery's text ``"<seq> <t_send>"``, an ack's id).

Two websocket layers, chosen with ``--ws``:

* ``raw`` (default): an ``asyncio.Protocol`` on uvloop that does the HTTP upgrade and the
  RFC 6455 framing itself (server frames are read straight out of the receive buffer; client
  frames are masked with a per-connection key). It is the cheapest per delivery.
* ``websockets``: the ``websockets`` package's asyncio client (one reader task per
  connection), kept for comparison; docs/benchmarks.md says which was measured to be cheaper.

Workloads (each bounded in time and in count; see ``--help`` of each):

* ``fanout``: C clients in one room and one publisher (not in the room) sending
  ``send-message``. Saturation: a closed loop keeps a window of messages not yet delivered to
  every sampled client (below), and counts deliveries/s (and their publish -> receive latency). Sustained: an
  open-loop ladder of offered rates; a rate is sustained when >= 97 % of its deliveries arrive
  and the p99 publish -> receive latency is <= 50 ms (the send time travels in the message
  text). With ``--url-b`` the clients are split evenly over two nodes of one cluster (the
  first half on ``--url``, node A, with the publisher; the rest on ``--url-b``, node B), and
  deliveries and latencies are also reported per node. To stay cheap per delivery, only 1
  client in ``--sample`` (default 20, at least 5) decodes deliveries: those measure latency and
  pace the closed loop. The event loop stops reading the others' sockets; every ``--sweep-ms``
  one ``epoll_wait`` finds those with data and one read each takes all that arrived, counted by
  walking frame headers (no decoding, no object per delivery; pings are still answered).
  Deliveries and delivered fractions count every client (in aggregate: each client receives
  its messages in order).
* ``echo``: K clients, each with one acked ``send-message`` in flight to a room nobody is in;
  acks/s and round-trip p50/p99.
* ``connect``: N clients connect (Socket.IO connected, greeting received when one is sent);
  time to connect all, and the server's VmRSS before and after (``--server-pid``).
* ``rest``: C clients in one room; ``POST /rooms/{room}/messages`` over one keep-alive HTTP/1.1
  connection, one message at a time; publish -> delivery latency.

With ``--server-pid`` every workload also reports the server's CPU time over its measured
window, read from /proc; ``--cpu-pid NAME=PID`` (repeatable) adds more processes (a cluster's
other node, its Redis): ``server_cpu`` is then the sum, ``cpu_by_process`` each one's share. The generator reports its own CPU use (``gen_cpu``: CPU seconds per
wall second over the measured window; 1.0 = one core saturated).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import resource
import select
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a plugbus dependency on Linux
    uvloop = None  # type: ignore[assignment]

now = time.perf_counter
CLK_TCK = os.sysconf("SC_CLK_TCK")
SIO_PATH = "/socket.io/?EIO=4&transport=websocket"
DELIVERY = b'42["receive-message",'


# --------------------------------------------------------------------------------------------
# measuring helpers


def proc_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return None


def proc_rss_kb(pid: int | None) -> int | None:
    """VmRSS of process ``pid`` in kB."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


EXTRA_PIDS: dict[str, int] = {}  # --cpu-pid NAME=PID: more server-side processes to account


class Window:
    """Wall time, generator CPU and server CPU over one measured window.

    The server's CPU is ``server_pid``'s plus that of every ``--cpu-pid`` process (a cluster's
    other node and its Redis): ``server_cpu`` is their sum, ``cpu_by_process`` each one's share.
    """

    def __init__(self, server_pid: int | None) -> None:
        self.pids = {"server": server_pid, **EXTRA_PIDS} if server_pid else {}
        self.t0, self.c0 = now(), self_cpu()
        self.s0 = {name: proc_cpu(pid) for name, pid in self.pids.items()}
        self.wall = self.gen_cpu = 0.0
        self.server_cpu: float | None = None
        self.parts: dict[str, float] = {}

    def close(self) -> Window:
        self.wall = now() - self.t0
        self.gen_cpu = (self_cpu() - self.c0) / self.wall if self.wall > 0 else 0.0
        for name, pid in self.pids.items():
            s0, s1 = self.s0[name], proc_cpu(pid)
            if s0 is not None and s1 is not None:
                self.parts[name] = s1 - s0
        if "server" in self.parts:
            self.server_cpu = sum(self.parts.values())
        return self

    def report(self, units: float, unit_name: str) -> dict[str, Any]:
        out: dict[str, Any] = {"wall_s": round(self.wall, 3), "gen_cpu": round(self.gen_cpu, 3)}
        if self.server_cpu is not None:
            out["server_cpu"] = round(self.server_cpu / self.wall, 3) if self.wall else None
            if units:
                out[f"server_cpu_us_per_{unit_name}"] = round(self.server_cpu / units * 1e6, 2)
            if len(self.parts) > 1 and self.wall:
                out["cpu_by_process"] = {k: round(v / self.wall, 3) for k, v in self.parts.items()}
        return out


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100, nearest rank) of ``values``, or None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 3)


# --------------------------------------------------------------------------------------------
# the client: Engine.IO / Socket.IO over a websocket


class Client:
    """One Socket.IO client; subclasses supply the websocket (``_send_frame``)."""

    def __init__(self) -> None:
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_event: Callable[[Client, bytes], None] | None = None
        self.on_ack: Callable[[Client, int, bytes], None] | None = None
        self.acks: dict[int, asyncio.Future[bytes]] = {}
        self.next_id = 0
        self.closed = False
        self.events = 0  # events received that nobody handled (greetings)
        self.node = 0  # fanout --url-b: 0 = a client of node A, 1 = of node B

    # -- Engine.IO / Socket.IO packets ------------------------------------------------------
    def on_message(self, payload: bytes) -> None:
        """One Engine.IO packet (a whole websocket message) arrived."""
        if payload[:2] == b"42":
            if self.on_event is not None:
                self.on_event(self, payload)
            else:
                self.events += 1
            return
        kind = payload[:1]
        if kind == b"4":
            sio = payload[1:2]
            if sio == b"3":
                j = payload.index(b"[", 2)
                ack_id = int(payload[2:j])
                if self.on_ack is not None:
                    self.on_ack(self, ack_id, payload)
                    return
                fut = self.acks.pop(ack_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(payload[j:])
            elif sio == b"0":
                if not self.ready.done():
                    self.ready.set_result(None)
            elif sio == b"4" and not self.ready.done():
                self.ready.set_exception(ConnectionError(f"connect_error: {payload[2:200]!r}"))
        elif kind == b"2":
            self.send(b"3")
        elif kind == b"0":
            self.send(b"40")
        elif kind == b"1":
            self.lost(ConnectionError("engine.io close"))

    def lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(exc or ConnectionError("connection closed"))
            self.ready.exception()  # retrieved: a handshake nobody awaits any more is not worth a log line
        for fut in self.acks.values():
            if not fut.done():
                fut.set_exception(exc or ConnectionError("connection closed"))
        self.acks.clear()

    def send(self, text: bytes) -> None:
        self._send_frame(text)

    def emit(self, event: str, data: Any, ack_id: int | None = None) -> None:
        self.emit_encoded(json.dumps([event, data], separators=(",", ":")).encode(), ack_id)

    def emit_encoded(self, body: bytes, ack_id: int | None = None) -> None:
        """Emit ``[event, data]`` already encoded as JSON (echo sends the same one each time)."""
        self._send_frame(b"42" + (str(ack_id).encode() if ack_id is not None else b"") + body)

    def call(self, event: str, data: Any) -> asyncio.Future[bytes]:
        """Emit with an ack; the future gets the ack's argument list (raw JSON bytes)."""
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.acks[self.next_id] = fut
        self.emit(event, data, self.next_id)
        return fut

    def _send_frame(self, payload: bytes) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class RawClient(Client, asyncio.Protocol):
    """The websocket done by hand on an asyncio transport (uvloop's when installed)."""

    def __init__(self, host: str, port: int) -> None:
        Client.__init__(self)
        self.host, self.port = host, port
        self.transport: asyncio.Transport | None = None
        self.head: bytes | None = b""  # the HTTP response head until the upgrade is done
        self.buf = b""
        self.frag: bytes | None = None
        self.mask = os.urandom(4)
        # fanout: set to the receiver on the clients that only count deliveries (see _count)
        self.counter: FanoutReceiver | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(  # type: ignore[union-attr]
            f"GET {SIO_PATH} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.head is not None:
            head = self.head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self.head = head
                return
            if b" 101 " not in head[: head.find(b"\r\n")]:
                self.lost(ConnectionError(f"upgrade refused: {head[:200]!r}"))
                self.transport.close()  # type: ignore[union-attr]
                return
            self.head = None
            data = head[end + 4 :]
        if self.counter is not None and self.frag is None:
            self._count(data)
        else:
            self._parse(data)

    def _count(self, data: bytes) -> None:
        """Count deliveries without decoding them: only frame headers are read.

        A counting client never makes a Python object per delivery: it walks the frames of the
        whole receive buffer (unfragmented text frames under 126 bytes, as deliveries are) and
        counts those whose payload starts with ``42["receive-message",``. Any other frame
        (a ping, a greeting, a longer or fragmented frame, a control frame) and everything
        after it go through :meth:`_parse`, the general path.
        """
        if self.buf:
            data = self.buf + data
        n = len(data)
        off = 0
        k = 0
        startswith = data.startswith
        while n - off >= 2:
            ln = data[off + 1]  # server frames are unmasked: this is the length
            if ln > 125 or data[off] != 0x81:
                self.buf = b""
                self._tally(k)
                self._parse(data[off:])
                return
            end = off + 2 + ln
            if end > n:
                break
            if startswith(DELIVERY, off + 2):
                k += 1
            else:
                self.on_message(data[off + 2 : end])
            off = end
        self.buf = data[off:] if off < n else b""
        self._tally(k)

    def _tally(self, k: int) -> None:
        r = self.counter
        if k and r is not None:
            r.total += k
            r.node_total[self.node] += k

    def _parse(self, data: bytes) -> None:
        """The general path: every frame, every packet decoded (``on_message``)."""
        if self.buf:
            data = self.buf + data
        n = len(data)
        off = 0
        on_message = self.on_message
        while n - off >= 2:
            b0 = data[off]
            ln = data[off + 1] & 0x7F
            h = off + 2
            if ln == 126:
                if n - off < 4:
                    break
                ln = (data[off + 2] << 8) | data[off + 3]
                h = off + 4
            elif ln == 127:
                if n - off < 10:
                    break
                ln = int.from_bytes(data[off + 2 : off + 10], "big")
                h = off + 10
            end = h + ln
            if end > n:
                break
            payload = data[h:end]
            off = end
            op = b0 & 0x0F
            if op == 1 or op == 2:
                if b0 & 0x80:
                    on_message(payload)
                else:
                    self.frag = payload
            elif op == 0:
                self.frag = (self.frag or b"") + payload
                if b0 & 0x80:
                    whole, self.frag = self.frag, None
                    on_message(whole)
            elif op == 9:
                self._frame(0x8A, payload)
            elif op == 8:
                self._frame(0x88, payload[:2])
                self.transport.close()  # type: ignore[union-attr]
                break
        self.buf = data[off:] if off < n else b""

    def _frame(self, first: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = bytes((first, 0x80 | n))
        elif n < 65536:
            head = bytes((first, 0xFE)) + n.to_bytes(2, "big")
        else:
            head = bytes((first, 0xFF)) + n.to_bytes(8, "big")
        key = (self.mask * ((n >> 2) + 1))[:n]
        masked = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
            n, "little"
        )
        if not self.closed:
            self.transport.write(head + self.mask + masked)  # type: ignore[union-attr]

    def _send_frame(self, payload: bytes) -> None:
        self._frame(0x81, payload)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class LibClient(Client):
    """The ``websockets`` package's asyncio client, for comparison with :class:`RawClient`."""

    def __init__(self) -> None:
        super().__init__()
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.sending: set[asyncio.Future[None]] = set()

    async def start(self, url: str) -> None:
        from websockets.asyncio.client import connect

        self.ws = await connect(
            url,
            compression=None,
            max_size=None,
            ping_interval=None,
            open_timeout=30,
            close_timeout=1,
        )
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                self.on_message(await self.ws.recv(decode=False))
        except Exception as exc:
            self.lost(exc)

    def _send_frame(self, payload: bytes) -> None:
        if not self.closed:
            # websockets sends a bytes-like as a binary frame; Engine.IO needs text frames.
            task = asyncio.ensure_future(self.ws.send(payload.decode()))
            self.sending.add(task)
            task.add_done_callback(self.sending.discard)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.ws is not None:
            self.ws.transport.close()


class Target:
    def __init__(self, url: str, ws: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.ws = ws

    async def client(self, timeout: float = 30.0) -> Client:
        """One connected Socket.IO client (its ``40`` arrived)."""
        loop = asyncio.get_running_loop()
        if self.ws == "raw":
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: RawClient(self.host, self.port), self.host, self.port
                ),
                timeout,
            )
            client: Client = proto
        else:
            client = LibClient()
            await asyncio.wait_for(client.start(f"ws://{self.host}:{self.port}{SIO_PATH}"), timeout)
        try:
            await asyncio.wait_for(asyncio.shield(client.ready), timeout)
        except BaseException:
            client.close()
            raise
        return client

    async def clients(
        self,
        n: int,
        concurrency: int = 100,
        room: str | None = None,
        timeout: float = 60.0,
        handshakes: list[float] | None = None,
    ) -> list[Client]:
        """``n`` connected clients, ``concurrency`` handshakes at a time; joined to ``room``.
        ``handshakes`` receives each one's seconds from its TCP connect to Socket.IO connected
        (not the time it waited for its turn)."""
        sem = asyncio.Semaphore(concurrency)
        out: list[Client] = []

        async def one() -> None:
            async with sem:
                t0 = now()
                c = await self.client()
                if handshakes is not None:
                    handshakes.append(now() - t0)
                out.append(c)
                if room is not None:
                    await asyncio.wait_for(c.call("join-room", {"room": room}), 30)

        try:
            await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), timeout)
        except BaseException:
            for c in out:
                c.close()
            raise
        return out


def close_all(clients: list[Client]) -> None:
    for c in clients:
        c.close()


# --------------------------------------------------------------------------------------------
# (A) fan-out


class FanoutReceiver:
    """Counts deliveries and records publish -> receive latencies.

    Exact mode (the probe, ``rest``, and every client with ``--sample 1``): each delivery is
    decoded, counted per message (``counts``) and timed. Counting mode (:meth:`start_counting`):
    only the sampled clients decode, and a message is *done* once it reached all of them
    (``done_upto``, which paces the closed loop); the others add to ``total`` by walking frame
    headers (:meth:`RawClient._count`). What was delivered is then counted in aggregate: the
    deliveries still owed for messages ``base_seq``.. are ``(seq - base_seq) * C - (total -
    base_total)``. Each client receives its messages in order, so this equals the per-message
    count as long as nothing is lost.
    """

    def __init__(self, clients: int, max_messages: int) -> None:
        self.c = clients
        self.counts = [0] * max_messages
        self.t_recv_last = [0.0] * max_messages
        self.latencies: list[float] = []
        self.by_node: tuple[list[float], list[float]] = ([], [])  # latencies per node (--url-b)
        self.node_total = [0, 0]
        self.record = True
        self.total = 0
        self.done_upto = 0  # messages 0..done_upto-1 reached every client
        self.waiter: asyncio.Future[None] | None = None
        self.bad = 0
        self.need = clients  # decoding clients a message must reach to be done
        self.base_seq = 0
        self.base_total = 0

    def start_counting(self, seq: int, counters: list[RawClient]) -> None:
        """From now on ``counters`` only count; every message before ``seq`` is delivered."""
        self.base_seq, self.base_total = seq, self.total
        self.need = self.c - len(counters)
        for cl in counters:
            cl.counter = self

    def pending(self, seq: int) -> int:
        """Counting mode: deliveries of messages base_seq..seq-1 not yet received."""
        return (seq - self.base_seq) * self.c - (self.total - self.base_total)

    def delivered_since(self, first: int) -> int:
        """Counting mode: deliveries received of messages ``first``.. (all before arrived)."""
        return max(0, self.total - self.base_total - (first - self.base_seq) * self.c)

    def __call__(self, client: Client, payload: bytes) -> None:
        if payload[:21] != DELIVERY:
            client.events += 1
            return
        if getattr(client, "counter", None) is not None:  # a counter's odd frame: count only
            self.total += 1
            self.node_total[client.node] += 1
            return
        t = now()
        try:
            # the text ends at its closing quote: an offset may follow it (recovery)
            text = payload[22:]
            seq_s, ts_s = text[: text.index(b'"')].split(b" ", 1)
            seq = int(seq_s)
            self.counts[seq] += 1
        except (ValueError, IndexError):
            self.bad += 1
            return
        self.total += 1
        node = client.node
        self.node_total[node] += 1
        if self.record:
            lat = t - float(ts_s)
            self.latencies.append(lat)
            self.by_node[node].append(lat)
        if self.counts[seq] == self.need:
            self.t_recv_last[seq] = t
            if seq >= self.done_upto:
                self.done_upto = seq + 1
                w = self.waiter
                if w is not None and not w.done():
                    w.set_result(None)


class Sweeper:
    """Reads the counting clients' sockets in one batch every ``period`` seconds.

    The event loop would read each socket as soon as it turns readable: at 1000 clients that is
    one wake-up, one ``recv`` and one Python callback per delivery. Swept every 100 ms by default
    (one ``epoll_wait`` for all of them, then one read per socket with data), each read carries
    every delivery that arrived meanwhile (measured: 20 ms sweeps cost about twice the CPU per
    delivery of 100 ms sweeps at 1000 clients). Their latency is not measured, so the lag costs
    nothing; the sampled clients stay on the event loop, and a sweep yields to them every 100
    reads. A sweep before each measured figure makes the counts current.
    """

    def __init__(self, period: float) -> None:
        self.period = period
        self.ep: select.epoll | None = None
        self.by_fd: dict[int, RawClient] = {}
        self.task: asyncio.Task[None] | None = None

    def start(self, clients: list[RawClient]) -> None:
        if not clients:
            return
        self.ep = select.epoll()
        for cl in clients:
            if cl.transport is None or cl.closed:
                continue
            fd = cl.transport.get_extra_info("socket").fileno()
            cl.transport.pause_reading()
            self.ep.register(fd, select.EPOLLIN)
            self.by_fd[fd] = cl
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self.ep is not None:
            await asyncio.sleep(self.period)
            ready = self._ready()
            for i in range(0, len(ready), 100):
                if i:  # let the sampled clients' reads in between: a sweep is not their latency
                    await asyncio.sleep(0)
                self._read(ready[i : i + 100])

    def sweep(self) -> None:
        """Read every counting socket with data now (before a figure is taken)."""
        self._read(self._ready())

    def _ready(self) -> list[tuple[int, int]]:
        return self.ep.poll(0, max(1, len(self.by_fd))) if self.ep is not None else []

    def _read(self, ready: list[tuple[int, int]]) -> None:
        read, by_fd = os.read, self.by_fd
        for fd, _ in ready:
            cl = by_fd.get(fd)
            if cl is None or self.ep is None:
                continue
            try:
                data = read(fd, 65536)
            except BlockingIOError:  # read meanwhile by a sweep before a figure
                continue
            except OSError as exc:
                data, err = b"", exc
            else:
                err = None
            if data:
                cl.data_received(data)
            else:  # closed by the server: stop watching it
                self.ep.unregister(fd)
                del by_fd[fd]
                cl.lost(err)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.ep is not None:
            self.ep.close()
            self.ep = None


def sample_stride(clients: int, sample: int) -> int:
    """Every ``stride``-th client decodes: 1 in ``sample``, but at least 5 clients (or all)."""
    if sample <= 1:
        return 1
    return max(1, min(sample, clients // 5))


def message_text(seq: int) -> str:
    return f"{seq} {now():.7f}"


async def fanout(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    c = args.clients
    max_messages = args.max_messages
    recv = FanoutReceiver(c, max_messages)
    split = args.url_b is not None
    t_conn = now()
    if split:  # half the room on node A (with the publisher), the rest on node B
        c_a = (c + 1) // 2
        on_a, on_b = await asyncio.gather(
            target.clients(c_a, args.concurrency, room=args.room, timeout=args.connect_timeout),
            Target(args.url_b, target.ws).clients(
                c - c_a, args.concurrency, room=args.room, timeout=args.connect_timeout
            ),
        )
        for cl in on_b:
            cl.node = 1
        clients = on_a + on_b
    else:
        clients = await target.clients(
            c, args.concurrency, room=args.room, timeout=args.connect_timeout
        )
    connect_s = now() - t_conn
    for cl in clients:
        cl.on_event = recv
    pub = await target.client()
    refused: list[bytes] = []

    def on_publisher_event(client: Client, payload: bytes) -> None:
        if payload.startswith(b'42["error"'):
            refused.append(payload)

    pub.on_event = on_publisher_event
    sweeper = Sweeper(args.sweep_ms / 1000)
    seq = 0
    out: dict[str, Any] = {"workload": "fanout", "clients": c, "connect_s": round(connect_s, 3)}
    if split:
        out["clients_by_node"] = [
            sum(cl.node == 0 for cl in clients),
            sum(cl.node == 1 for cl in clients),
        ]
    loop = asyncio.get_running_loop()

    def send(n: int) -> None:
        pub.emit("send-message", {"message": message_text(n), "roomID": args.room})

    try:
        # -- probe: one message reaches every client before anything is measured --------------
        # (a node subscribes to the cluster's channel only once its first client connected, so
        # the first messages of a fresh cluster may miss its clients)
        probe_end = now() + args.probe_timeout
        probes = 0
        while True:
            if now() > probe_end or probes >= args.max_probes:
                raise RuntimeError(
                    f"fanout: none of {probes} probe messages reached all {c} clients "
                    f"within {args.probe_timeout} s (best: {max(recv.counts[: max(seq, 1)])})"
                )
            send(seq)
            seq += 1
            probes += 1
            t_probe = now() + min(1.0, args.probe_timeout)
            while recv.done_upto < seq and now() < t_probe:
                await asyncio.sleep(0.01)
            if recv.done_upto >= seq:
                break
        out["probe_messages"] = probes
        # from here on only a sample of the clients decode (latency) and pace the closed loop;
        # the event loop stops reading the others, and a sweep reads them in batches
        stride = sample_stride(c, args.sample)
        counters = [cl for i, cl in enumerate(clients) if i % stride and isinstance(cl, RawClient)]
        recv.start_counting(seq, counters)
        sweeper.start(counters)
        out["sampled_clients"] = c - len(counters)

        def caught_up() -> bool:
            sweeper.sweep()
            return recv.pending(seq) <= 0

        # -- saturation: closed loop, a window of messages in flight -------------------------
        window = max(2, args.window_deliveries // c)
        recv.record = False
        stalled = False

        async def saturate(seconds: float) -> int:
            nonlocal seq, stalled
            end = now() + seconds
            while now() < end and seq < max_messages:
                while seq - recv.done_upto < window and seq < max_messages:
                    send(seq)
                    seq += 1
                recv.waiter = loop.create_future()
                try:
                    await asyncio.wait_for(recv.waiter, args.stall_timeout)
                except TimeoutError:
                    stalled = True
                    return seq
            return seq

        await saturate(args.warmup)
        sweeper.sweep()
        d0, n0 = recv.total, list(recv.node_total)
        recv.latencies, recv.by_node = [], ([], [])
        recv.record = True
        win = Window(args.server_pid)
        s0 = seq
        await saturate(args.duration)
        sweeper.sweep()
        d1, n1 = recv.total, list(recv.node_total)
        win.close()
        recv.record = False
        delivered = d1 - d0
        lat = recv.latencies
        out["saturation"] = {
            "window_messages": window,
            "messages": seq - s0,
            "messages_per_s": round((seq - s0) / win.wall, 1),
            "deliveries": delivered,
            "deliveries_per_s": round(delivered / win.wall, 1),
            "p50_ms": ms(pct(lat, 50)),
            "p99_ms": ms(pct(lat, 99)),
            "stalled": stalled,
            **win.report(delivered, "delivery"),
        }
        if split:
            out["saturation"]["deliveries_per_s_by_node"] = [
                round((n1[i] - n0[i]) / win.wall, 1) for i in (0, 1)
            ]
            out["saturation"]["p50_ms_by_node"] = [ms(pct(recv.by_node[i], 50)) for i in (0, 1)]
            out["saturation"]["p99_ms_by_node"] = [ms(pct(recv.by_node[i], 99)) for i in (0, 1)]
        # let the tail drain before the ladder; then count what never arrived
        deadline = now() + args.stall_timeout
        while not caught_up() and now() < deadline:
            await asyncio.sleep(0.01)
        sent = seq - s0
        out["saturation"]["delivered_frac"] = (
            round(recv.delivered_since(s0) / (sent * c), 4) if sent else None
        )
        out["saturation"]["refused"] = len(refused)

        # -- sustained: open-loop ladder of offered rates ---------------------------------------
        steps: list[dict[str, Any]] = []
        recv.record = True

        async def step(rate: float) -> dict[str, Any]:
            nonlocal seq
            msgs_per_s = rate / c
            n = max(args.min_step_messages, round(msgs_per_s * args.step_seconds))
            if seq + n > max_messages:
                return {"offered_per_s": rate, "skipped": "message budget spent"}
            first = seq
            recv.latencies, recv.by_node = [], ([], [])
            win = Window(args.server_pid)
            t0 = now()
            for i in range(n):
                due = t0 + i / msgs_per_s
                d = due - now()
                if d > 0:
                    await asyncio.sleep(d)
                send(seq)
                seq += 1
            send_s = now() - t0
            deadline = now() + args.grace
            while not caught_up() and now() < deadline:
                await asyncio.sleep(0.005)
            win.close()
            got = recv.delivered_since(first)
            lat = recv.latencies
            p99 = pct(lat, 99)
            frac = got / (n * c)
            # n messages take n intervals of 1/msgs_per_s (the last one's interval ends after it)
            achieved = n / (send_s + 1 / msgs_per_s) * c
            ok = frac >= 0.97 and p99 is not None and p99 <= 0.050 and achieved >= 0.9 * rate
            r = {
                "offered_per_s": rate,
                "achieved_per_s": round(achieved, 1),
                "messages": n,
                "delivered_frac": round(frac, 4),
                "p50_ms": ms(pct(lat, 50)),
                "p99_ms": ms(p99),
                "max_ms": ms(max(lat) if lat else None),
                "ok": ok,
                **win.report(got, "delivery"),
            }
            if split:
                r["p99_ms_by_node"] = [ms(pct(recv.by_node[i], 99)) for i in (0, 1)]
            return r

        best = 0.0
        first_fail: float | None = None
        for rate in args.ladder:
            if rate < c:  # less than one message a second: not a fan-out rate
                continue
            r = await step(float(rate))
            steps.append(r)
            if r.get("skipped"):
                break
            if r["ok"]:
                best = float(rate)
            else:
                first_fail = float(rate)
                break
            # settle: everything from this step delivered, or a short wait
            deadline = now() + 1.0
            while not caught_up() and now() < deadline:
                await asyncio.sleep(0.01)
        lo = best
        for _ in range(args.refine if first_fail is not None else 0):
            hi = first_fail
            mid = math.sqrt(lo * hi) if lo > 0 else hi / 2
            if mid < c or hi / max(lo, 1) < 1.15:
                break
            mid = float(round(mid, -2) if mid >= 1000 else round(mid))
            deadline = now() + 2.0
            while not caught_up() and now() < deadline:
                await asyncio.sleep(0.01)
            r = await step(mid)
            steps.append(r)
            if r.get("skipped"):
                break
            if r["ok"]:
                lo = best = max(best, mid)
            else:
                first_fail = mid
        out["sustained"] = {
            "best_per_s": best,
            "steps": steps,
            "criteria": ">=97% delivered, p99 <= 50 ms, offered rate achieved",
        }
        out["bad_payloads"] = recv.bad
        out["refused"] = len(refused)
        if refused:
            out["refused_example"] = refused[0][:300].decode(errors="replace")
    finally:
        sweeper.close()
        pub.close()
        close_all(clients)
    return out


# --------------------------------------------------------------------------------------------
# (B) echo


async def echo(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    k = args.clients
    clients = await target.clients(k, timeout=args.connect_timeout)
    sent_at: dict[Client, float] = {}
    rtts: list[float] = []
    state = {"acks": 0, "record": False, "stop": False}
    # encoded once: JSON encoding per event was ~2.4 of the ~5.4 us of Python per ack
    body = json.dumps(
        ["send-message", {"message": "ping", "roomID": args.room}], separators=(",", ":")
    ).encode()

    def fire(cl: Client) -> None:
        cl.next_id += 1
        sent_at[cl] = now()
        cl.emit_encoded(body, cl.next_id)

    def on_ack(cl: Client, ack_id: int, payload: bytes) -> None:
        t = now()
        if b'"ok":true' not in payload:
            state["bad"] = state.get("bad", 0) + 1
        state["acks"] += 1
        if state["record"]:
            rtts.append(t - sent_at[cl])
        if not state["stop"]:
            fire(cl)

    try:
        for cl in clients:
            cl.on_ack = on_ack
            fire(cl)
        await asyncio.sleep(args.warmup)
        a0 = state["acks"]
        state["record"] = True
        win = Window(args.server_pid)
        await asyncio.sleep(args.duration)
        a1 = state["acks"]
        win.close()
        state["record"] = False
        state["stop"] = True
        acks = a1 - a0
        return {
            "workload": "echo",
            "clients": k,
            "acks": acks,
            "acks_per_s": round(acks / win.wall, 1),
            "rtt_p50_ms": ms(pct(rtts, 50)),
            "rtt_p99_ms": ms(pct(rtts, 99)),
            "refused": state.get("bad", 0),
            **win.report(acks, "ack"),
        }
    finally:
        close_all(clients)


# --------------------------------------------------------------------------------------------
# (C) connections


async def connect(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    n = args.clients
    pid = args.server_pid
    rss0 = proc_rss_kb(pid)
    win = Window(pid)
    handshakes: list[float] = []
    clients = await target.clients(
        n, concurrency=args.concurrency, timeout=args.connect_timeout, handshakes=handshakes
    )
    win.close()
    await asyncio.sleep(args.settle)  # greetings delivered, buffers settled
    rss1 = proc_rss_kb(pid)
    alive = sum(not c.closed for c in clients)
    out: dict[str, Any] = {
        "workload": "connect",
        "clients": n,
        "alive": alive,
        "connect_s": round(win.wall, 3),
        "connects_per_s": round(n / win.wall, 1),
        "greetings": sum(c.events for c in clients),
        "handshake_p50_ms": ms(pct(handshakes, 50)),
        "handshake_p99_ms": ms(pct(handshakes, 99)),
        **win.report(n, "connection"),
    }
    if rss0 is not None and rss1 is not None:
        out.update(
            {
                "rss_before_kb": rss0,
                "rss_after_kb": rss1,
                "rss_per_conn_kb": round((rss1 - rss0) / n, 2),
            }
        )
    close_all(clients)
    await asyncio.sleep(0.2)
    return out


# --------------------------------------------------------------------------------------------
# (D) REST publish -> delivery


async def rest(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    c = args.clients
    recv = FanoutReceiver(c, args.messages + 1)
    clients = await target.clients(c, room=args.room, timeout=args.connect_timeout)
    for cl in clients:
        cl.on_event = recv
    reader, writer = await asyncio.open_connection(target.host, target.port)
    post_ms: list[float] = []
    last_ms: list[float] = []
    statuses: dict[int, int] = {}
    loop = asyncio.get_running_loop()
    try:
        win = Window(args.server_pid)
        for seq in range(args.messages):
            body = json.dumps({"message": message_text(seq)}).encode()
            t0 = now()
            writer.write(
                f"POST /rooms/{args.room}/messages HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status = int(head.split(b" ", 2)[1])
            statuses[status] = statuses.get(status, 0) + 1
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            post_ms.append(now() - t0)
            deadline = now() + args.stall_timeout
            while recv.counts[seq] < c and now() < deadline:
                recv.waiter = loop.create_future()
                try:
                    await asyncio.wait_for(recv.waiter, max(0.001, deadline - now()))
                except TimeoutError:
                    break
            if recv.counts[seq] == c:
                last_ms.append(recv.t_recv_last[seq] - t0)
            await asyncio.sleep(args.gap)
        win.close()
        deliveries = sum(recv.counts[: args.messages])
        lat = recv.latencies
        return {
            "workload": "rest",
            "clients": c,
            "messages": args.messages,
            "statuses": statuses,
            "delivered_frac": round(deliveries / (c * args.messages), 4),
            "post_p50_ms": ms(pct(post_ms, 50)),
            "delivery_p50_ms": ms(pct(lat, 50)),
            "delivery_p99_ms": ms(pct(lat, 99)),
            "last_p50_ms": ms(pct(last_ms, 50)),
            "last_p99_ms": ms(pct(last_ms, 99)),
            **win.report(deliveries, "delivery"),
        }
    finally:
        writer.close()
        close_all(clients)


# --------------------------------------------------------------------------------------------


WORKLOADS = {"fanout": fanout, "echo": echo, "connect": connect, "rest": rest}
DEFAULT_LADDER = [1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000, 400000]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="plugbus benchmark load generator (prints one JSON object)"
    )
    p.add_argument("workload", choices=sorted(WORKLOADS))
    p.add_argument("--url", default="http://127.0.0.1:3000")
    p.add_argument("--ws", choices=["raw", "websockets"], default="raw")
    p.add_argument("--server-pid", type=int, help="read this process's CPU and VmRSS from /proc")
    p.add_argument(
        "--cpu-pid",
        action="append",
        default=[],
        metavar="NAME=PID",
        help="also count this process's CPU as the server's (repeatable; e.g. node B, redis)",
    )
    p.add_argument(
        "--url-b", help="fanout: a second node of the same cluster; half the clients go there"
    )
    p.add_argument(
        "--probe-timeout",
        type=float,
        default=10.0,
        help="fanout: seconds for a probe message to reach every client before measuring",
    )
    p.add_argument("--max-probes", type=int, default=20, help="fanout: probe messages at most")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument(
        "--sweep-ms",
        type=float,
        default=100.0,
        help="fanout: the counting clients' sockets are read in one batch this often",
    )
    p.add_argument(
        "--sample",
        type=int,
        default=20,
        help="fanout: 1 in N clients decode deliveries (latency), at least 5; the others only "
        "count frames (1 = every client decodes)",
    )
    p.add_argument("--room", default=None, help="default: bench (echo: a room nobody is in)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds (fanout, echo)")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument(
        "--window-deliveries",
        type=int,
        default=10000,
        help="fanout saturation: deliveries in flight (window = this / clients messages)",
    )
    p.add_argument("--max-messages", type=int, default=200_000, help="fanout: messages at most")
    p.add_argument(
        "--ladder",
        type=lambda s: [int(x) for x in s.split(",")],
        default=DEFAULT_LADDER,
        help="fanout: offered deliveries/s to try, ascending",
    )
    p.add_argument("--step-seconds", type=float, default=3.0)
    p.add_argument(
        "--min-step-messages",
        type=int,
        default=3,
        help="fanout: a ladder step sends at least this many messages",
    )
    p.add_argument(
        "--grace", type=float, default=1.0, help="seconds a step waits for its last deliveries"
    )
    p.add_argument("--refine", type=int, default=2, help="fanout: bisection steps after the ladder")
    p.add_argument("--stall-timeout", type=float, default=5.0)
    p.add_argument("--connect-timeout", type=float, default=120.0)
    p.add_argument(
        "--concurrency",
        type=int,
        default=100,
        help="connect, fanout: handshakes in flight (fanout --url-b: per node)",
    )
    p.add_argument(
        "--settle", type=float, default=1.0, help="connect: seconds before reading VmRSS"
    )
    p.add_argument("--messages", type=int, default=30, help="rest: POSTs")
    p.add_argument("--gap", type=float, default=0.02, help="rest: seconds between POSTs")
    p.add_argument("--deadline", type=float, default=600.0, help="give up after this many seconds")
    return p


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    if args.room is None:
        args.room = "echo-nobody" if args.workload == "echo" else "bench"
    target = Target(args.url, args.ws)
    result = await asyncio.wait_for(WORKLOADS[args.workload](target, args), args.deadline)
    result["ws"] = args.ws
    return result


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for spec in args.cpu_pid:
        name, _, pid = spec.rpartition("=")
        EXTRA_PIDS[name or f"pid {pid}"] = int(pid)
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    try:
        result = uvloop.run(amain(args)) if uvloop is not None else asyncio.run(amain(args))
    except Exception as exc:
        import traceback

        traceback.print_exc()
        print(f"loadgen: error: {type(exc).__name__}: {str(exc)[:400]}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
