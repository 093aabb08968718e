"""The child-process server: :class:`PlugbusProcess`, ``python -m plugbus serve`` on a free port."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from plugbus.testing import fork_server
from plugbus.testing.client import PlugbusClient
from plugbus.testing.server_config import _kit_config, _target

#: What uvicorn logs when the port it was given is taken (by another process since the kit
#: found it free); the kit then starts again on another port.
_PORT_TAKEN = "address already in use"


class PlugbusExited(RuntimeError):
    """``plugbus serve`` exited (or did not answer) before it served.

    The message is the process's whole output, so a test can look for what ``plugbus
    serve`` printed, e.g. a configuration error naming the plugin and the key.

    :ivar returncode: the exit status, or None when it was still running (a start-up timeout).
    :ivar output: what the process wrote to stdout and stderr.
    """

    def __init__(self, returncode: int | None, output: str) -> None:
        what = f"plugbus exited with {returncode}" if returncode is not None else "plugbus hung"
        super().__init__(f"{what}:\n{output}")
        self.returncode = returncode
        self.output = output


class PlugbusProcess:
    """plugbus run by ``python -m plugbus serve`` in a child process, on a loopback port.

    The in-process :class:`PlugbusServer` is quicker to start and can be inspected; a process
    is what to use when the test is about the process itself: what ``plugbus serve`` writes
    to its log, a node that is killed or restarted, a plugin package installed for the child
    only. Start one with ``await plugbus_server.spawn(...)`` (stopped when the test ends), or
    with :meth:`start` from a fixture of any scope (its caller stops it).

    The child imports what the test process can import: its ``PYTHONPATH`` is the test's own
    ``PYTHONPATH`` entries from ``env`` followed by the test process's ``sys.path`` entries that
    are not part of the Python installation (the tests' directory, the project).

    :ivar url: ``http://127.0.0.1:PORT``.
    :ivar port: the port.
    :ivar config_path: the config file it runs with.
    :ivar log_path: the file that receives its stdout and stderr (see :meth:`log`).
    :ivar proc: the ``subprocess.Popen`` of ``python -m plugbus serve`` (with
        :func:`~plugbus.testing.fork_servers` on, a forked child with the same interface).
    :ivar clients: the clients connected with :meth:`client` (disconnected by :meth:`aclose`).
    """

    def __init__(
        self, config_path: Path, log_path: Path, data: Mapping[str, Any], env: Mapping[str, str]
    ) -> None:
        server = data["server"]
        self.port: int = server["port"]
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = config_path
        self.log_path = log_path
        self.clients: list[PlugbusClient] = []
        self._env = dict(env)
        self._namespace: str = server.get("namespaces", ["/"])[0]
        self._transports: list[str] = list(server.get("transports", ["polling", "websocket"]))
        self._socketio_path: str = server.get("socketio_path", "socket.io")
        self._shutdown_timeout: float = server.get("shutdown_timeout", 10)
        self.proc: fork_server.ServerProcess = self._popen(self._env)

    @classmethod
    def start(
        cls,
        directory: Path,
        *,
        plugins: Mapping[str, str | type | ModuleType] | None = None,
        builtins: Sequence[str] | None = None,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        config: Mapping[str, Any] | None = None,
        entry_points: bool = False,
        disabled: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = 20.0,
    ) -> PlugbusProcess:
        """Write a config into ``directory``, start ``plugbus serve`` with it and return once
        ``GET /health`` answers. The arguments are :meth:`PlugbusServerFactory.__call__`'s;
        ``env`` is the child's environment on top of the test's (whose own ``PLUGBUS_*``
        variables are left out). This call blocks: from a coroutine, run it in a thread.

        :raises PlugbusExited: it exited first (a bad config: the message is its output), or
            did not serve within ``timeout`` seconds (it is killed then).
        """
        modules = {name: _target(name, plugin) for name, plugin in (plugins or {}).items()}
        for attempt in range(3):
            port = _free_port()
            data = _kit_config(
                port, modules, builtins, settings or {}, config or {}, entry_points, disabled
            )
            config_path = directory / f"plugbus-{port}.yaml"
            config_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
            server = cls(config_path, directory / f"plugbus-{port}.log", data, env or {})
            try:
                server._wait_until_serving(timeout)
            except PlugbusExited as exc:
                if _PORT_TAKEN in exc.output and attempt < 2:
                    continue
                raise
            return server
        raise AssertionError("unreachable")  # pragma: no cover

    def _popen(self, env: Mapping[str, str]) -> fork_server.ServerProcess:
        child_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PLUGBUS_")}
        child_env.update(env)
        entries = [e for e in env.get("PYTHONPATH", "").split(os.pathsep) if e]
        child_env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*entries, *_own_sys_path()]))
        if fork_server.forking():
            return fork_server.start(str(self.config_path), str(self.log_path), child_env)
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "plugbus", "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env,
            )

    def _wait_until_serving(self, timeout: float) -> None:
        # uvicorn opens its socket only once start-up (plugbus_startup) is done, so a cheap
        # connect poll finds the moment; /health then confirms it is plugbus that answers.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PlugbusExited(self.proc.returncode, self.log())
            with socket.socket() as probe:
                if (
                    probe.connect_ex(("127.0.0.1", self.port)) == 0
                    and self._listening_here()
                    and self._healthy()
                ):
                    return
            time.sleep(0.01)
        self.kill()
        raise PlugbusExited(None, f"no answer within {timeout} s\n{self.log()}")

    def _listening_here(self) -> bool:
        """True when the socket listening on the port is this child's. Another process (a test
        running beside this one) may take the port between the kit finding it free and the
        child binding it, and would answer /health in its place; the child then fails to bind
        and exits. On Linux the listening socket's inode is looked up among the child's file
        descriptors; elsewhere this cannot be told and the answer is True."""
        try:
            with open("/proc/net/tcp", encoding="ascii") as table:
                rows = [line.split() for line in table.readlines()[1:]]
            fds = os.listdir(f"/proc/{self.proc.pid}/fd")
        except OSError:
            return True
        listening = {
            f"socket:[{row[9]}]"
            for row in rows
            if row[3] == "0A" and int(row[1].rsplit(":", 1)[1], 16) == self.port
        }
        for fd in fds:
            try:
                if os.readlink(f"/proc/{self.proc.pid}/fd/{fd}") in listening:
                    return True
            except OSError:
                continue
        return False

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def log(self) -> str:
        """Everything the process wrote to stdout and stderr so far (all its runs)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    async def client(
        self,
        *,
        transports: Sequence[str] | None = None,
        auth: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        namespace: str | None = None,
    ) -> PlugbusClient:
        """Connect a new real Socket.IO client, as :meth:`PlugbusServer.client` does (the
        namespace, transports and path come from the config file)."""
        client = await PlugbusClient.connect(
            self.url,
            namespace=namespace or self._namespace,
            transports=transports or self._transports,
            auth=auth,
            headers=headers,
            socketio_path=self._socketio_path,
            timeout=timeout,
        )
        self.clients.append(client)
        return client

    def interrupt(self) -> None:
        """Send SIGINT (as Ctrl-C does: plugbus drains and runs ``plugbus_shutdown``) and
        return at once; :meth:`wait` for the end. Interrupt several, then wait for each, to
        stop them side by side."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the process has ended and return its exit status; kill it when it is
        still running after ``timeout`` seconds (default: its ``shutdown_timeout`` + 5)."""
        try:
            return self.proc.wait(self._shutdown_timeout + 5 if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.kill()  # which waits for the end
            return self.proc.wait(0)

    def stop(self) -> None:
        """Stop the process (SIGINT, then SIGKILL if it does not end in time). Harmless when
        it has already ended."""
        self.interrupt()
        self.wait()

    def kill(self) -> None:
        """End the process with SIGKILL: no drain, no ``plugbus_shutdown``, no goodbye."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def restart(self, env: Mapping[str, str] | None = None) -> None:
        """Stop the process and start it again with the same config, on the same port (its
        output goes on in the same log). ``env`` replaces the environment it was started with.

        :raises PlugbusExited: the new process did not serve.
        """
        self.stop()
        if env is not None:
            self._env = dict(env)
        self.proc = self._popen(self._env)
        self._wait_until_serving(20.0)

    async def aclose(self) -> None:
        """Disconnect the clients (side by side) and stop the process without blocking the
        event loop. What ``plugbus_server.spawn`` does at the end of the test."""
        clients, self.clients = self.clients, []
        await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)
        self.interrupt()
        await asyncio.to_thread(self.wait)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _own_sys_path() -> list[str]:
    """The test process's ``sys.path`` entries that a fresh interpreter would not have."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return [
        entry
        for entry in sys.path
        if entry
        and os.path.isdir(entry)
        and not any(os.path.realpath(entry).startswith(prefix + os.sep) for prefix in prefixes)
    ]
