"""Shared test fixtures: real plugbus servers on loopback ports, real Socket.IO clients.

They are thin layers over plugbus's own test kit (``plugbus.testing``, the pytest plugin that
plugin authors use), so that the kit is exercised by the whole suite:

- ``serve(config)`` starts ``plugbus serve`` in a child process — the kit's
  :class:`~plugbus.testing.PlugbusProcess`, forked from the kit's fork server
  (:func:`~plugbus.testing.fork_servers`) — with the embedded defaults, a free port and
  installed entry points off, waits until it serves, and stops it afterwards. Tests that need
  no process of their own (no log to read, no node to kill or restart) use the kit's in-process
  ``plugbus_server`` fixture instead, which starts in a fraction of the time.
- ``SocketClient`` is the kit's :class:`~plugbus.testing.PlugbusClient`: a real python-socketio
  AsyncClient that records every event it receives.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio

from plugbus.testing import PlugbusClient, PlugbusProcess, PlugbusServer, fork_servers

ROOT = Path(__file__).resolve().parent.parent
#: Files the tests leave for people to look at (screenshots); named in the test summary.
ARTIFACTS = ROOT / "test-artifacts"
_artifacts: list[str] = []

#: A running ``plugbus serve`` child process (the kit's class, under the suite's old name).
Server = PlugbusProcess

# The suite starts about 170 server processes; forked from one that has made plugbus's imports,
# each skips ~0.7 s of CPU (on 2 cores that is about a minute of the suite's wall time). The
# command's own start-up (`python -m plugbus ...`) is tested with subprocess in
# test_config_errors.py and test_testing_kit.py. PLUGBUS_TEST_FORK=0 turns it off.
if os.environ.get("PLUGBUS_TEST_FORK", "1") != "0":
    fork_servers()


@pytest.fixture
def record_artifact(request: pytest.FixtureRequest) -> Callable[[Path], None]:
    """``record_artifact(path)``: name a file in the summary at the end of the test run."""
    ARTIFACTS.mkdir(exist_ok=True)

    def record(path: Path) -> None:
        # A user property travels with the test's report, so that under pytest-xdist the
        # controller, which writes the summary, hears of files made in a worker.
        request.node.user_properties.append(("artifact", str(path)))

    return record


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        _artifacts.extend(value for key, value in report.user_properties if key == "artifact")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for path in _artifacts:
        terminalreporter.write_line(f"test artifact: {path}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def start_server(
    directory: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> Server:
    """Start plugbus with the embedded config overlaid by ``config``; wait until it serves.

    The kit's settings for a test server apply (a free port, ``log_level: warning``, pings of
    2 s and 5 s, a 2 s shutdown, entry points off). A start that fails raises
    :class:`~plugbus.testing.PlugbusExited` (a RuntimeError) carrying the server's output.
    """
    directory.mkdir(parents=True, exist_ok=True)
    return PlugbusProcess.start(directory, config=config, env=env)


def restart_server(server: Server, env: dict[str, str] | None = None) -> None:
    """Stop ``server`` and start it again on the same port with the same config."""
    server.restart(env)


#: Servers told to stop whose end nobody waited for yet (see :func:`retire`).
_retired: list[Server] = []


def retire(*servers: Server) -> None:
    """Stop servers without waiting for them: each is interrupted (SIGINT, it drains and
    exits on its own) and reaped when the session ends. A test's teardown then costs nothing,
    and the next test starts while the last one's servers wind down; each listens on a port
    of its own, so nothing waits on them."""
    for server in servers:
        server.interrupt()
    _retired.extend(servers)


def pytest_sessionfinish() -> None:
    for server in _retired:
        server.wait()  # kills what did not end in time
    _retired.clear()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Factory: ``serve(config_overrides, env=...)`` -> a running :class:`Server`."""
    servers: list[Server] = []

    def _serve(config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Server:
        server = start_server(tmp_path, config, env)
        servers.append(server)
        return server

    yield _serve
    retire(*servers)


def serve_together(
    serve: Callable[..., Server], *configs: dict[str, Any] | None, env: dict[str, str] | None = None
) -> list[Server]:
    """``serve`` each config side by side (a start is mostly a new interpreter's imports)."""
    with ThreadPoolExecutor(len(configs)) as pool:
        return list(pool.map(lambda config: serve(config, env), configs))


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server with the embedded default config, shared by a module's tests."""
    server = start_server(tmp_path_factory.mktemp("default"))
    yield server
    retire(server)


@pytest.fixture
async def js() -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await js(server)`` -> a :class:`jsclient.JsClient` (official socket.io-client)."""
    from jsclient import JsClient

    clients: list[JsClient] = []

    async def _start(server: Server) -> JsClient:
        client = await JsClient.start(server.url)
        clients.append(client)
        return client

    yield _start
    await asyncio.gather(*(client.close() for client in clients))


def assert_problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check one RFC 9457 problem+json response in plugbus's shape; return its body."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"urn:plugbus:error:{code}"
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert isinstance(body["details"], dict)
    assert body["instance"] == resp.request.url.raw_path.decode().split("?")[0]  # as sent, encoded
    return body


def assert_refused(ack: dict[str, Any], code: str) -> dict[str, Any]:
    """Check a refusing Socket.IO ack: ``{"ok": false, "error": {code, message, details}}``."""
    assert ack["ok"] is False, ack
    error = ack["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    return error


async def refused_connect(server: Server, **kwargs: Any) -> dict[str, Any]:
    """Connect and expect a refusal; return the ``connect_error`` payload ``{message, data}``
    (python-socketio's ConnectionError text does not carry it)."""
    client = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    client.on("connect_error", errors.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(server.url, wait_timeout=5, **kwargs)
    await client.shutdown()
    [error] = errors
    return error  # type: ignore[no-any-return]


_sentinels = itertools.count(1)


async def settle(
    server: Any, *clients: PlugbusClient, headers: dict[str, str] | None = None
) -> None:
    """Wait until everything ``server`` sent ``clients`` before this call has arrived, so that
    a following ``assert client.received(...) == []`` proves that nothing came — no sleep.

    A kit server (``plugbus_server``) sends its own sentinel event (``server.settle``). A
    ``serve`` process has no such back door: each client gets a direct message over REST
    (the relay plugin's ``POST /connections/{sid}/messages``; ``headers`` for its API key),
    which is taken out of ``client.events`` once it arrived. Either way the sentinel travels
    after whatever the test did before, on the same connection, whose packets keep their order.
    On a cluster, settle on the node that sent what must not arrive.
    """
    if isinstance(server, PlugbusServer):
        await server.settle(*clients)
        return
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=10) as http:
        for client in clients:
            token = f"sentinel {next(_sentinels)}"  # short: it passes max_length rules too
            seen = len(client.received("receive-message"))
            resp = await http.post(f"/connections/{client.sid}/messages", json={"message": token})
            assert resp.status_code == 200, resp.text
            while True:
                seen += 1
                message = (await client.wait_for("receive-message", seen))[-1]
                # an envelope (relay.envelope: true) carries the message inside
                if token in (message, isinstance(message, dict) and message.get("message")):
                    break
            client.events.remove(("receive-message", message))


async def wait_disconnected(client: PlugbusClient, timeout: float = 5) -> None:
    """Wait until the server has closed ``client``'s connection."""
    await client.wait_disconnected(timeout=timeout)


#: ``PLUGBUS_TEST_REDIS_AOF=1`` runs every test's redis-server with the append-only file on
#: (``appendfsync everysec``, as docs/deployment.md advises), ``always`` to fsync every write.
REDIS_AOF = os.environ.get("PLUGBUS_TEST_REDIS_AOF", "")


@dataclass
class RedisServer:
    """A real redis-server on a free loopback port, in a temporary directory.

    ``appendonly`` turns Redis's append-only file on (in ``directory``, which a restart keeps),
    with ``appendfsync`` as given; ``args`` are more redis-server options (``--replicaof``,
    TLS). Without AOF nothing is saved (``--save ""``): a restart starts empty.
    """

    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None
    appendonly: bool = REDIS_AOF not in ("", "0")
    appendfsync: str = REDIS_AOF if REDIS_AOF in ("always", "no") else "everysec"
    args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *words: str) -> str:
        """One command over plain TCP (redis-cli), its reply as text."""
        exe = shutil.which("redis-cli")
        assert exe, "redis-cli is not installed: scripts/test.sh installs redis-server"
        result = subprocess.run(
            [exe, "-h", "127.0.0.1", "-p", str(self.port), *words],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return result.stdout.strip()

    def start(self) -> None:
        """Start it and wait until it answers PING; on a first start, a port taken in the
        meantime (by another test worker) means a new port."""
        if self.proc is not None:  # started before: clients know this port, keep it
            if not self._start_once():
                raise RuntimeError(f"redis-server did not start again on port {self.port}")
            return
        for _ in range(3):
            if self._start_once():
                return
            self.port = free_port()
        raise RuntimeError("redis-server did not start (three ports tried)")

    def _start_once(self) -> bool:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed: scripts/test.sh installs it"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                self.appendfsync,
                "--dir",
                str(self.directory),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # could not bind
            # PING, not a bare connect: the port must be this redis-server's, not a stranger's
            with socket.socket() as s:
                s.settimeout(1)
                try:
                    s.connect(("127.0.0.1", self.port))
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return True
                except OSError:
                    pass
            time.sleep(0.01)
        self.proc.kill()
        self.proc.wait(5)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush or save anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, *, crash: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL when ``crash``) and start again on the same port."""
        if crash:
            self.kill()
        else:
            self.stop()
        self.start()


@pytest.fixture
def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test (started and stopped by the test's own fixture).

    Indirect parameters are :class:`RedisServer` fields:
    ``@pytest.mark.parametrize("redis_server", [{"appendonly": True}], indirect=True)``.
    """
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(free_port(), directory, **getattr(request, "param", {}))
    server.start()
    yield server
    server.stop()


class SocketClient(PlugbusClient):
    """The test kit's client (:class:`plugbus.testing.PlugbusClient`), with this suite's
    ``wait_for(event, count, timeout)`` taking its timeout by position too."""

    async def wait_for(self, event: str, count: int = 1, timeout: float = 5.0) -> list[Any]:
        return await super().wait_for(event, count, timeout=timeout)


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await connect(server, transports=[...], auth=..., headers=...)`` ->
    :class:`SocketClient`, for a ``serve`` process or a kit server alike (anything with
    ``url``). The clients are disconnected side by side when the test ends."""
    clients: list[SocketClient] = []

    async def _connect(server: Any, wait_welcome: bool = False, **kwargs: Any) -> SocketClient:
        client = await SocketClient.connect(server.url, **kwargs)
        clients.append(client)
        if wait_welcome:
            await client.wait_for("welcome")
        return client

    yield _connect
    await asyncio.gather(*(client.disconnect() for client in clients), return_exceptions=True)
