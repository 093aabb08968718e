"""A node's life as a load balancer sees it: starting, ready, draining, stopping.

``GET /ready`` answers 200 only while the node is ready *and* its shared backend answers;
``GET /health`` stays liveness. On SIGTERM (``plugbus serve``) a node with
``server.drain_seconds`` > 0 drains before it stops:

1. it reports not-ready at once and refuses new Engine.IO sessions (503), so the balancer
   stops sending clients and those that come anyway retry elsewhere;
2. it closes its sessions a few at a time, spread evenly over the drain window, each with a
   plain Engine.IO close (a websocket close frame, or the CLOSE packet on long-polling) and no
   Socket.IO DISCONNECT — which official clients treat as a lost transport and reconnect at
   once, to another node, rather than as a kick-out that ends the session for good;
3. then uvicorn's graceful shutdown finishes in-flight REST requests and event handlers
   (``server.shutdown_timeout``) and the lifespan runs ``plugbus_shutdown``.

A second SIGTERM, or SIGINT, stops at once as before.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from plugbus.core import Bus

log = logging.getLogger("plugbus.lifecycle")

#: how often the drain closes its next few sessions
_DRAIN_TICK = 0.05


class Phase(StrEnum):
    """Where a node is in its life."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"


class Lifecycle:
    """The phase of one node, its readiness, and the drain.

    :param bus: the node's bus (its backend is probed for readiness).
    :param engine: the Engine.IO server whose sessions the drain closes.
    :param drain_seconds: the window over which sessions are closed (0: no drain).
    """

    def __init__(self, bus: Bus, engine: Any, drain_seconds: float) -> None:
        self.bus = bus
        self.engine = engine
        self.drain_seconds = drain_seconds
        self.phase = Phase.STARTING
        self.drained = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def started(self) -> None:
        """Called at the end of the lifespan's start-up: the node is ready."""
        self._loop = asyncio.get_running_loop()
        self.phase = Phase.READY

    def stopping(self) -> None:
        """Called when the lifespan shuts down."""
        self.phase = Phase.STOPPING

    async def readiness(self, timeout: float = 1.0) -> tuple[bool, str]:
        """(ready, why): not ready while starting, draining or stopping, or while the shared
        backend does not answer within ``timeout`` seconds."""
        if self.phase is not Phase.READY:
            return False, f"the node is {self.phase.value}"
        problem = await self.bus.backend.unreachable(timeout)
        if problem is not None:
            return False, f"the shared backend is unreachable: {problem}"
        return True, "ready"

    def drain_then(self, stop: Callable[[], None]) -> bool:
        """Begin the drain (safe to call from a signal handler) and call ``stop`` when it is
        done.

        :return: False when there is nothing to drain for (no window, or not ready): the
            caller stops at once.
        """
        if self.drain_seconds <= 0 or self.phase is not Phase.READY or self._loop is None:
            return False
        self.phase = Phase.DRAINING
        self.engine.draining = True
        self._loop.call_soon_threadsafe(self._begin, stop)
        return True

    def _begin(self, stop: Callable[[], None]) -> None:
        self._task = asyncio.get_running_loop().create_task(self._drain(stop))

    async def _drain(self, stop: Callable[[], None]) -> None:
        sessions = list(self.engine.sessions.values())
        log.info(
            "draining: not ready; closing %d sessions over %g s so that clients reconnect "
            "elsewhere",
            len(sessions),
            self.drain_seconds,
        )
        try:
            # evenly spaced batches across the window: one session per step when there are
            # few, a step every tick when there are many
            steps = max(1, min(len(sessions), math.floor(self.drain_seconds / _DRAIN_TICK)))
            per_step = math.ceil(len(sessions) / steps)
            pause = self.drain_seconds / steps
            while sessions:
                batch, sessions = sessions[:per_step], sessions[per_step:]
                for session in batch:
                    # recoverable: with a shared backend the client resumes on another node
                    session.close("server shutting down")
                    self.drained += 1
                if sessions:
                    await asyncio.sleep(pause)
            log.info("drained %d sessions; stopping", self.drained)
        finally:
            stop()
