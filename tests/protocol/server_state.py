"""The one place where the conformance tests read plugbus's own state (``eio_raw`` speaks only
the wire): a test that must know a request is pending at the server — the order in which two
TCP connections reach it cannot be seen from the client side — runs on an in-process server of
the test kit (``plugbus_server``, whose ``server.app`` is there to be inspected) and waits for
that state instead of sleeping and hoping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds (it reads the server's state in this process)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.005)


def session(server: Any, sid: str) -> Any:
    """Engine.IO session ``sid`` of a test-kit server, or None once it is gone."""
    return server.app.sio.eio.session_of(sid)


def get_pending(server: Any, sid: str) -> Callable[[], bool]:
    """A condition: session ``sid`` holds a long-polling GET waiting for packets."""
    return lambda: (s := session(server, sid)) is not None and s.poll is not None
