"""Start :class:`~plugbus.testing.PlugbusProcess` children from a fork server.

A fresh ``python -m plugbus serve`` spends most of its start-up importing FastAPI, uvicorn,
python-socketio, redis-py and plugbus itself (about 0.7 s of CPU on a 2-core machine, against
0.2 s for everything else up to serving). A suite that starts a hundred servers pays that a
hundred times. :func:`fork_servers` has later children forked from one server process that
made those imports once — multiprocessing's ``forkserver`` start method with those modules
preloaded — so each child starts with them already in memory.

The child is still a separate process with its own PID that runs ``plugbus serve``'s own entry
(``plugbus.api.cli.main(["serve", "--config", PATH])``), with the environment, ``PYTHONPATH``
entries, working directory and output file a ``python -m plugbus serve`` child would get; it
can be signalled, killed and restarted the same way. What it does not exercise is the
interpreter's start-up and the ``-m`` entry itself: a test about those starts the command with
:mod:`subprocess` (this suite's ``tests/test_config_errors.py`` does).

Linux and other platforms with ``fork`` only; elsewhere :func:`fork_servers` raises.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from multiprocessing.context import ForkServerContext, ForkServerProcess
from typing import Protocol

#: Imported once by the fork server: what ``plugbus serve`` imports before it serves.
PRELOAD = (
    "plugbus.api.cli",
    "plugbus.api.app",
    "plugbus.plugins.auth",
    "plugbus.plugins.welcome",
    "plugbus.plugins.rooms",
    "plugbus.plugins.relay",
    "plugbus.plugins.moderation",
    "plugbus.plugins.webhooks",
    "uvicorn",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.websockets_sansio_impl",
    "uvloop",
    "redis.asyncio",
)


class ServerProcess(Protocol):
    """What :class:`~plugbus.testing.PlugbusProcess` and tests use of a child process: the
    part of :class:`subprocess.Popen`'s interface that a forked child offers too."""

    pid: int

    @property
    def returncode(self) -> int | None:
        """The exit status once it has ended (minus the signal number when a signal ended
        it), else None."""

    def poll(self) -> int | None:
        """The exit status if it has ended, else None; does not wait."""

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the end and return the exit status.

        :raises subprocess.TimeoutExpired: still running after ``timeout`` seconds."""

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process (nothing when it has ended)."""

    def kill(self) -> None:
        """Send SIGKILL."""


class ForkedServe:
    """A ``plugbus serve`` child forked from the fork server, behind :class:`ServerProcess`."""

    def __init__(self, process: ForkServerProcess) -> None:
        self._process = process
        self.pid: int = process.pid or 0

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired("plugbus serve (forked)", timeout or 0.0)
        return code

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


_context: ForkServerContext | None = None


def fork_servers(enabled: bool = True) -> None:
    """From now on (``enabled``), start :class:`~plugbus.testing.PlugbusProcess` children from a
    fork server that has imported :data:`PRELOAD` once; with ``enabled=False``, as fresh
    ``python -m plugbus serve`` processes again (the default). Call it once per test process,
    e.g. from a session fixture or ``conftest.py``; the fork server starts on first use.

    :raises RuntimeError: the platform has no ``fork`` (the fork server needs it).
    """
    global _context
    if not enabled:
        _context = None
        return
    if "forkserver" not in multiprocessing.get_all_start_methods():
        raise RuntimeError("plugbus.testing.fork_servers needs a platform with fork (Linux)")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    _context = context


def forking() -> bool:
    """True when :func:`fork_servers` is on."""
    return _context is not None


def start(config_path: str, log_path: str, env: Mapping[str, str]) -> ForkedServe:
    """Fork ``plugbus serve --config config_path`` with ``env`` as its whole environment, its
    output appended to ``log_path``, in this process's working directory."""
    if _context is None:
        raise RuntimeError("fork_servers() is off")
    process = _context.Process(
        target=_serve,
        args=(config_path, log_path, dict(env), os.getcwd()),
        name="plugbus serve",
        daemon=False,
    )
    process.start()
    return ForkedServe(process)


def _serve(config_path: str, log_path: str, env: dict[str, str], cwd: str) -> None:
    """The child: become what ``python -m plugbus serve --config config_path`` would be, then
    run its entry. Runs in the forked process."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    # PYTHONPATH entries come first, as a fresh interpreter puts them before site-packages.
    entries = [e for e in env.get("PYTHONPATH", "").split(os.pathsep) if e]
    sys.path[:0] = [e for e in entries if e not in sys.path]
    # A fresh interpreter starts with these; the fork server ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from plugbus.api.cli import main

    code = main(["serve", "--config", config_path])
    sys.stdout.flush()
    sys.stderr.flush()
    raise SystemExit(code)
