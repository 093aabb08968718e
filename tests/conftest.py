"""Shared test fixtures: real plugbus servers on loopback ports, real Socket.IO clients.

``serve(config)`` starts ``python -m plugbus serve`` in a subprocess with a config written
for the test (the embedded defaults, a free port, installed entry points off unless asked),
waits until ``/health`` answers, and stops it afterwards. ``SocketClient`` wraps
python-socketio's real AsyncClient and records every event it receives.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio
import yaml

ROOT = Path(__file__).resolve().parent.parent
#: Files the tests leave for people to look at (screenshots); named in the test summary.
ARTIFACTS = ROOT / "test-artifacts"
_artifacts: list[Path] = []


@pytest.fixture
def record_artifact() -> Callable[[Path], None]:
    """``record_artifact(path)``: name a file in the summary at the end of the test run."""
    ARTIFACTS.mkdir(exist_ok=True)
    return _artifacts.append


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


@dataclass
class Server:
    """A running plugbus subprocess."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]
    config_path: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(
    directory: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> Server:
    """Start plugbus with the embedded config overlaid by ``config``; wait until it serves."""
    port = free_port()
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    # Short pings: python-engineio's polling client waits up to one ping interval to disconnect.
    base = deep_merge(
        base,
        {
            "server": {
                "port": port,
                "log_level": "warning",
                "ping_interval": 2,
                "ping_timeout": 5,
                "shutdown_timeout": 2,
            },
            "plugins": {"entry_points": False},
        },
    )
    merged = deep_merge(base, config or {})
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / f"config-{port}.yaml"
    config_path.write_text(yaml.safe_dump(merged))
    log_path = directory / f"server-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "plugbus", "serve", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    server = Server(f"http://127.0.0.1:{port}", port, proc, config_path, log_path)
    _wait_until_serving(server)
    return server


def restart_server(server: Server, env: dict[str, str] | None = None) -> None:
    """Stop ``server`` and start it again on the same port with the same config."""
    server.stop()
    with server.log_path.open("ab") as log:
        server.proc = subprocess.Popen(
            [sys.executable, "-m", "plugbus", "serve", "--config", str(server.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    _wait_until_serving(server)


def _wait_until_serving(server: Server) -> None:
    proc = server.proc
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"plugbus exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"plugbus did not start within 20 s:\n{server.log()}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Factory: ``serve(config_overrides, env=...)`` -> a running :class:`Server`."""
    servers: list[Server] = []

    def _serve(config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Server:
        server = start_server(tmp_path, config, env)
        servers.append(server)
        return server

    yield _serve
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server with the embedded default config, shared by a module's tests."""
    server = start_server(tmp_path_factory.mktemp("default"))
    yield server
    server.stop()


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
    for client in clients:
        await client.close()


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


async def wait_disconnected(client: SocketClient, timeout: float = 5) -> None:
    """Wait until the server has closed ``client``'s connection."""
    for _ in range(int(timeout / 0.05)):
        if not client.sio.connected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the client is still connected")


@dataclass
class RedisServer:
    """A real redis-server on a free loopback port, in a temporary directory."""

    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
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
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test (started and stopped by the test's own fixture)."""
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


@dataclass
class SocketClient:
    """A real python-socketio AsyncClient that records every event it receives."""

    sio: socketio.AsyncClient
    events: list[tuple[str, Any]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def received(self, event: str) -> list[Any]:
        return [data for name, data in self.events if name == event]

    async def wait_for(self, event: str, count: int = 1, timeout: float = 5.0) -> list[Any]:
        """Wait until ``event`` arrived ``count`` times; return its payloads."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.received(event)) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(
                    f"{event!r} arrived {len(self.received(event))} times, "
                    f"wanted {count}; got {self.events!r}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass
        return self.received(event)

    async def call(self, event: str, *data: Any, timeout: float = 5.0) -> Any:
        return (
            await self.sio.call(event, data[0] if len(data) == 1 else data, timeout=timeout)
            if data
            else await self.sio.call(event, timeout=timeout)
        )

    async def emit(self, event: str, data: Any) -> None:
        await self.sio.emit(event, data)


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await connect(server, transports=[...], auth=...)`` -> :class:`SocketClient`."""
    clients: list[SocketClient] = []

    async def _connect(server: Server, wait_welcome: bool = False, **kwargs: Any) -> SocketClient:
        client = SocketClient(socketio.AsyncClient(reconnection=False))

        async def record(event: str, data: Any = None) -> None:
            client.events.append((event, data))
            client._changed.set()

        client.sio.on("*", record)
        await client.sio.connect(server.url, wait_timeout=5, **kwargs)
        clients.append(client)
        if wait_welcome:
            await client.wait_for("welcome")
        return client

    yield _connect
    for client in clients:
        if client.sio.connected:
            await client.sio.disconnect()
