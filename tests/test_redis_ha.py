"""Redis high availability and durable state: Sentinel failover, TLS, and AOF persistence.

Every Redis here is a real process on a loopback port: redis-server primaries and replicas,
and sentinels (Debian's ``redis-sentinel``, which scripts/test.sh installs, or
``redis-server --sentinel``). plugbus nodes are real ``plugbus serve`` processes (failover) or
the kit's in-process server (TLS, persistence), with real Socket.IO and HTTP clients.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RedisServer, free_port, serve_together

from plugbus.core.redis_url import mask_url, parse_redis_url

SERVICE = "plugbus"

# -- the URL ------------------------------------------------------------------------------------


def test_a_sentinel_url_is_read_in_python_socketios_form():
    target = parse_redis_url(
        "redis+sentinel://ops:s3cret@10.0.0.1:26379,sentinel-b:26380/2/main"
        "?socket_timeout=2.5&sentinel_password=other"
    )
    assert target.sentinel
    assert target.sentinels == (("10.0.0.1", 26379), ("sentinel-b", 26380))
    assert (target.service, target.db) == ("main", 2)
    assert target.options == {
        "username": "ops",
        "password": "s3cret",
        "db": 2,
        "socket_timeout": 2.5,
    }
    assert target.sentinel_options == {"password": "other"}
    assert target.masked == (
        "redis+sentinel://ops:***@10.0.0.1:26379,sentinel-b:26380/2/main"
        "?socket_timeout=2.5&sentinel_password=***"
    )
    assert target.hide("AuthenticationError: s3cret / other") == "AuthenticationError: *** / ***"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://:pw@h:26379/main", "the path is /db/service_name"),
        ("redis+sentinel://:pw@h:26379/0/", "the path is /db/service_name"),
        ("redis+sentinel://:pw@h/0/main", "each sentinel is host:port"),
        ("redis+sentinel://:pw@h:1,:2/0/main", "each sentinel is host:port"),
        (
            "redis+sentinel://:pw@h:1/0/main?socket_timeout=soon",
            "invalid value for 'socket_timeout'",
        ),
        ("valkey://:pw@h:1/0", "the scheme must be one of"),
    ],
)
def test_a_url_plugbus_cannot_use_is_refused_with_its_password_masked(url, says):
    with pytest.raises(ValueError, match=says) as info:
        parse_redis_url(url)
    assert "pw" not in str(info.value).replace("***", "")


def test_passwords_in_the_query_are_masked_too():
    url = "rediss://:a@h:6380/0?ssl_cert_reqs=required&ssl_password=b&ssl_ca_certs=/x/ca.pem"
    assert mask_url(url) == (
        "rediss://:***@h:6380/0?ssl_cert_reqs=required&ssl_password=***&ssl_ca_certs=/x/ca.pem"
    )
    assert set(parse_redis_url(url).secrets) == {"a", "b"}


# -- Sentinel -----------------------------------------------------------------------------------


def _reply_to_ping(port: int, context: ssl.SSLContext | None = None) -> bytes:
    """What the server on ``port`` answers a PING (over TLS with ``context``); b"" if nothing."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
            if context is None:
                raw.sendall(b"PING\r\n")
                return raw.recv(16)
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16)
    except OSError:
        return b""


@dataclass
class SentinelProcess:
    """One sentinel watching ``SERVICE`` (its config file is its own: sentinels rewrite it)."""

    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, primary: int, quorum: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary} {quorum}\n"
            # short, so that the test's failover takes seconds (production: 5-30 s)
            f"sentinel down-after-milliseconds {SERVICE} 500\n"
            f"sentinel failover-timeout {SERVICE} 3000\n"
        )
        exe = shutil.which("redis-sentinel")
        if exe:
            command = [exe, str(conf)]
        else:
            server = shutil.which("redis-server")
            assert server, "redis-server is not installed: scripts/test.sh installs it"
            command = [server, str(conf), "--sentinel"]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _reply_to_ping(self.port).startswith(b"+PONG"):
            assert self.proc.poll() is None, "the sentinel exited at start-up"
            assert time.monotonic() < deadline, "the sentinel did not answer PING in 10 s"
            time.sleep(0.02)

    def ask(self, *words: str) -> str:
        cli = shutil.which("redis-cli")
        assert cli
        result = subprocess.run(
            [cli, "-p", str(self.port), *words], capture_output=True, text=True, timeout=10
        )
        return result.stdout.strip()

    def master_info(self) -> dict[str, str]:
        lines = self.ask("SENTINEL", "MASTER", SERVICE).splitlines()
        return dict(zip(lines[::2], lines[1::2], strict=False))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@dataclass
class SentinelSetup:
    primary: RedisServer
    replica: RedisServer
    sentinels: list[SentinelProcess]

    def url(self, *, dead_first: int | None = None) -> str:
        hosts = [f"127.0.0.1:{s.port}" for s in self.sentinels]
        if dead_first is not None:
            hosts.insert(0, f"127.0.0.1:{dead_first}")
        return f"redis+sentinel://{','.join(hosts)}/0/{SERVICE}"

    def primary_port(self) -> int:
        return int(self.sentinels[0].ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE).split()[1])


def _wait(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Any:
    """A primary, one replica and three sentinels (quorum 2) on loopback ports."""
    primary = RedisServer(free_port(), tmp_path / "primary")
    replica = RedisServer(free_port(), tmp_path / "replica")
    sentinels = [SentinelProcess(free_port(), tmp_path / f"sentinel{i}") for i in range(3)]
    started: list[Any] = []
    try:
        primary.directory.mkdir()
        primary.start()
        started.append(primary)
        replica.directory.mkdir()
        replica.args = ("--replicaof", "127.0.0.1", str(primary.port))
        replica.start()
        started.append(replica)
        _wait(
            "the replica's link to the primary",
            lambda: "master_link_status:up" in replica.command("INFO", "replication"),
            10,
        )
        for sentinel in sentinels:
            sentinel.start(primary.port, quorum=2)
            started.append(sentinel)
        # A failover needs the sentinels to know each other (hello messages, every 2 s) and
        # the replica (the primary's INFO)
        _wait(
            "sentinels seeing each other and the replica",
            lambda: all(
                s.master_info().get("num-other-sentinels") == "2"
                and s.master_info().get("num-slaves") == "1"
                for s in sentinels
            ),
            15,
        )
        yield SentinelSetup(primary, replica, sentinels)
    finally:
        for process in reversed(started):
            process.stop()


async def promoted(sentinel_port: int, old_primary: int) -> float:
    """When the sentinel names another primary than ``old_primary`` (polled every 20 ms)."""
    from redis.asyncio import Redis

    sentinel = Redis(port=sentinel_port, socket_timeout=1)
    try:
        while True:
            _host, port = await sentinel.execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE
            )
            if int(port) != old_primary:
                return time.monotonic()
            await asyncio.sleep(0.02)
    finally:
        await sentinel.aclose()


async def test_two_nodes_follow_a_sentinel_failover(serve, sentinel_setup, connect):
    """Primary killed mid-stream: the replica is promoted, both nodes follow it, publishes are
    acked again within 15 s of the kill, and every acked message is in the promoted primary's
    history (none was lost with the old primary)."""
    setup = sentinel_setup
    # A dead sentinel first in the list: a node skips it for the next one.
    config = {"server": {"backend": setup.url(dead_first=free_port()), "presence_ttl": 3}}
    a, b = serve_together(serve, config, config)
    sub_a = await connect(a, wait_welcome=True)
    sub_b = await connect(b, wait_welcome=True)
    publisher = await connect(a, wait_welcome=True)
    for sub in (sub_a, sub_b):
        assert (await sub.call("join-room", {"room": "ha"}))["ok"] is True

    acked: dict[str, float] = {}  # message -> when its ack came
    refused: list[tuple[float, str]] = []
    killed_at: list[float] = []
    stop = asyncio.Event()

    async def publish() -> None:
        n = 0
        while not stop.is_set():
            message = f"m{n}"
            n += 1
            try:
                ack = await publisher.call(
                    "send-message", {"message": message, "roomID": "ha"}, timeout=5
                )
            except TimeoutError:
                refused.append((time.monotonic(), "no ack in 5 s"))
                continue
            if ack["ok"]:
                acked[message] = time.monotonic()
            else:
                refused.append((time.monotonic(), ack["error"]["code"]))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(publish())
    try:
        _deadline = time.monotonic() + 10
        while len(acked) < 25:
            assert time.monotonic() < _deadline, f"no steady publishing before the kill: {refused}"
            await asyncio.sleep(0.05)
        old_primary = setup.primary.port
        setup.primary.kill()
        killed_at.append(time.monotonic())
        watcher = asyncio.create_task(promoted(setup.sentinels[0].port, old_primary))
        # Publishing again: 25 acks after the kill, and for 6 s after the first of them.
        deadline = killed_at[0] + 30

        def after_kill() -> list[float]:
            return sorted(t for t in acked.values() if t > killed_at[0])

        while len(after_kill()) < 25 or after_kill()[-1] - after_kill()[0] < 6:
            assert time.monotonic() < deadline, (
                f"publishes not acked after the failover: {refused[-5:]}"
            )
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    promoted_after = await asyncio.wait_for(watcher, 10) - killed_at[0]
    first_after = min(t for t in acked.values() if t > killed_at[0])
    assert setup.primary_port() == setup.replica.port != old_primary
    assert "role:master" in setup.replica.command("INFO", "replication")
    back_after = first_after - killed_at[0]
    assert back_after < 15, back_after

    # The promoted primary's history holds every acked message: with asynchronous
    # replication on loopback nothing acked was still waiting to reach the replica.
    stored: list[str] = []
    async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
        after = None
        while True:
            params: dict[str, Any] = {"limit": 100}
            if after is not None:
                params["after"] = after
            page = (await http.get("/rooms/ha/messages", params=params)).json()
            stored += [m["args"][0] for m in page["messages"]]
            if not page["messages"]:
                break
            after = page["messages"][-1]["id"]
        assert (await http.get("/ready")).status_code == 200
    lost = sorted(set(acked) - set(stored), key=lambda m: int(m[1:]))
    assert lost == [], f"acked but not in the promoted primary's history: {lost}"
    # Delivery: whatever arrived, arrived once and in order, and everything acked reached both
    # nodes' subscribers — each node's feed reads on from its last offset on the promoted
    # primary (checked below, after the tail arrived).
    settled = first_after + 3
    tail = sorted((m for m, t in acked.items() if t >= settled), key=lambda m: int(m[1:]))
    assert len(tail) >= 10, tail
    for sub in (sub_a, sub_b):
        await sub.wait_for("receive-message", 1)
        deadline = time.monotonic() + 10
        while not set(tail) <= set(sub.received("receive-message")):
            assert time.monotonic() < deadline, (
                f"not delivered after the failover: {tail}, "
                f"{'A' if sub is sub_a else 'B'} got {sub.received('receive-message')}\n"
                f"node A:\n{a.log()}\nnode B:\n{b.log()}"
            )
            await asyncio.sleep(0.05)
        got = [m for m in sub.received("receive-message") if m in acked]
        assert len(got) == len(set(got)), "a message was delivered twice"
        assert got == sorted(got, key=lambda m: int(m[1:])), "out of order"
    missed = {
        name: len(set(acked) - set(sub.received("receive-message")))
        for name, sub in (("node A", sub_a), ("node B", sub_b))
    }
    assert missed == {"node A": 0, "node B": 0}, f"acked but not delivered: {missed}"
    # when node B's subscriber got messages again: the first acked message of the delivered
    # run that reaches the end
    delivered_b = set(sub_b.received("receive-message"))
    run = sorted(acked, key=lambda m: int(m[1:]))
    while run and run[-1] in delivered_b and len(run) > 1 and run[-2] in delivered_b:
        run.pop()
    resumed = acked[run[-1]] - killed_at[0]
    print(
        f"\nfailover: {len(acked)} acked, {len(refused)} refused "
        f"({sorted({why for _, why in refused})}); the sentinels promoted the replica "
        f"{promoted_after:.2f} s after the kill, publishes were acked again after "
        f"{back_after:.2f} s; node B delivered every acked message from "
        f"{'the start' if not missed['node B'] else f'{resumed:.2f} s after the kill'}; "
        f"lost from history: {len(lost)}; acked but not delivered: {missed}"
    )


# -- TLS ----------------------------------------------------------------------------------------


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plugbus test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.pem", directory / "redis.pem", directory / "redis.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def tls_redis(tmp_path: Path) -> Any:
    """redis-server speaking only TLS (no plain port), with a password; and its CA file."""
    ca, cert, key = _certificates(tmp_path)
    port = free_port()
    exe = shutil.which("redis-server")
    assert exe
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "hunter2",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    context = ssl.create_default_context(cafile=str(ca))
    try:
        deadline = time.monotonic() + 10
        # unauthenticated PING: -NOAUTH, which is an answer all the same
        while not _reply_to_ping(port, context).startswith(b"-NOAUTH"):
            assert proc.poll() is None and time.monotonic() < deadline, "no TLS redis-server"
            time.sleep(0.02)
        yield port, ca
    finally:
        proc.terminate()
        proc.wait(10)


async def test_rediss_with_the_ca_in_the_url_carries_rooms_and_history(plugbus_server, tls_redis):
    port, ca = tls_redis
    url = f"rediss://:hunter2@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    a = await plugbus_server(config={"server": {"backend": url}})
    b = await plugbus_server(config={"server": {"backend": url}})
    alice = await a.client()
    bob = await b.client()
    for client in (alice, bob):
        assert (await client.call("join-room", {"room": "tls"}))["ok"] is True
    ack = await alice.call("send-message", {"message": "over TLS", "roomID": "tls"})
    assert ack["ok"] is True, ack
    assert await bob.wait_for("receive-message") == ["over TLS"]  # through Redis, node to node
    page = (await b.http.get("/rooms/tls/messages")).json()
    assert [m["args"] for m in page["messages"]] == [["over TLS"]]


def _serve_and_fail(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text(f"server:\n  backend: '{url}'\n")
    return subprocess.run(
        [sys.executable, "-m", "plugbus", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rediss_refuses_a_certificate_its_ca_did_not_sign(tmp_path, tls_redis):
    port, _ca = tls_redis
    # Another CA: the server's certificate does not verify, and start-up stops.
    (tmp_path / "other").mkdir()
    other, _, _ = _certificates(tmp_path / "other")
    url = f"rediss://:hunter2@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={other}"
    result = _serve_and_fail(tmp_path, url)
    assert result.returncode == 2, result.stderr
    assert (
        f"server.backend: cannot reach Redis at rediss://:***@127.0.0.1:{port}/0?" in result.stderr
    )
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_a_sentinel_that_knows_no_such_primary_stops_start_up(tmp_path):
    """Start-up asks the sentinels; none answering means exit 2, the password masked."""
    dead = free_port()
    result = _serve_and_fail(tmp_path, f"redis+sentinel://:hunter2@127.0.0.1:{dead}/0/{SERVICE}")
    assert result.returncode == 2, result.stderr
    assert (
        f"server.backend: cannot reach Redis at redis+sentinel://:***@127.0.0.1:{dead}/0/{SERVICE}"
        in result.stderr
    )
    assert f"No master found for '{SERVICE}'" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


# -- persistence --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("redis_server", "kept"),
    [({"appendonly": True, "appendfsync": "everysec"}, True), ({"appendonly": False}, False)],
    indirect=["redis_server"],
    ids=["aof-everysec", "no-persistence"],
)
async def test_bans_and_room_history_outlive_a_redis_crash_only_with_aof(
    plugbus_server, redis_server, kept
):
    """redis-server killed (SIGKILL, no chance to save) and started again on the same port
    and directory: with ``appendonly yes`` the ban and the room's history are still there;
    without persistence both are gone."""
    server = await plugbus_server(config={"server": {"backend": redis_server.url}})
    ban = await server.http.post(
        "/moderation/bans", json={"kind": "address", "value": "192.0.2.7", "reason": "spam"}
    )
    assert ban.status_code == 201, ban.text
    for text in ("first", "second"):
        sent = await server.http.post("/rooms/lobby/messages", json={"message": text})
        assert sent.status_code == 200, sent.text

    redis_server.restart(crash=True)

    async def answered(path: str) -> Any:
        deadline = time.monotonic() + 10
        while True:  # the node's connections to the old process fail once, then reconnect
            resp = await server.http.get(path)
            if resp.status_code == 200:
                return resp.json()
            assert time.monotonic() < deadline, resp.text
            await asyncio.sleep(0.1)

    bans = await answered("/moderation/bans")
    history = await answered("/rooms/lobby/messages")
    if kept:
        assert [b["id"] for b in bans] == [ban.json()["id"]]
        assert [m["args"] for m in history["messages"]] == [["first"], ["second"]]
    else:
        assert bans == []
        assert history["messages"] == []


# -- waiting for replicas -------------------------------------------------------------------------


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Any:
    """A primary and one replica linked to it, on loopback ports."""
    primary = RedisServer(free_port(), tmp_path / "primary")
    replica = RedisServer(free_port(), tmp_path / "replica")
    started: list[RedisServer] = []
    try:
        for server in (primary, replica):
            server.directory.mkdir()
        primary.start()
        started.append(primary)
        replica.args = ("--replicaof", "127.0.0.1", str(primary.port))
        replica.start()
        started.append(replica)
        _wait(
            "the replica's link to the primary",
            lambda: "master_link_status:up" in replica.command("INFO", "replication"),
            10,
        )
        yield primary, replica
    finally:
        for server in reversed(started):
            server.stop()


async def test_with_backend_replicas_a_publish_is_acked_only_once_a_replica_has_it(
    plugbus_server, primary_and_replica
):
    """``backend_replicas: 1``: with the replica up, publishes over both doors are acked and
    the replica holds them; with it stopped, each is refused with backend_unavailable within
    the timeout and a little, never acked."""
    primary, replica = primary_and_replica
    server = await plugbus_server(
        config={
            "server": {
                "backend": primary.url,
                "backend_replicas": 1,
                "backend_replica_timeout": 0.2,
            }
        }
    )
    client = await server.client()
    await client.call("join-room", {"room": "wait"})
    sent = await server.http.post("/rooms/wait/messages", json={"message": "rest"})
    assert sent.status_code == 200, sent.text
    ack = await client.call("send-message", {"message": "socket", "roomID": "wait"})
    assert ack["ok"] is True, ack
    stream = replica.command("KEYS", "plugbus:history:*:/:r:wait").split()
    assert len(stream) == 1
    assert replica.command("XLEN", stream[0]) == "2"  # both on the replica when acked

    replica.stop()
    _wait(
        "the primary to see its replica gone",
        lambda: "connected_slaves:0" in primary.command("INFO", "replication"),
        10,
    )
    started = time.monotonic()
    refused = await server.http.post("/rooms/wait/messages", json={"message": "unconfirmed"})
    took = time.monotonic() - started
    assert refused.status_code == 503, refused.text
    problem = refused.json()
    assert problem["code"] == "backend_unavailable"
    assert problem["details"] == {"backend": "redis", "replicas": 0, "wanted": 1}
    assert took < 1.5, f"the refusal took {took:.2f} s"
    ack = await client.call("send-message", {"message": "unconfirmed too", "roomID": "wait"})
    assert ack["ok"] is False and ack["error"]["code"] == "backend_unavailable", ack


def test_backend_replicas_need_a_redis_backend():
    from pydantic import ValidationError

    from plugbus.core.config import ServerSettings

    with pytest.raises(ValidationError, match="backend_replicas needs a Redis backend"):
        ServerSettings(backend="memory", backend_replicas=1)
    with pytest.raises(ValidationError, match="backend_replica_timeout"):
        ServerSettings(backend="redis://127.0.0.1:6379/0", backend_replica_timeout=2)
