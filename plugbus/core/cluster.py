"""Run an operation on the node that holds a connection.

With a shared backend, a REST call to any node may name a connection that lives on another:
a server-side join, a leave, a kick. :meth:`Cluster.on_owner` runs the operation where the
connection is — locally when it is here, otherwise over a Redis pub/sub channel every node
listens to, waiting for the owner's answer (an error comes back as the same
:class:`PlugbusError`). Plugins register their operations by name, so a plugin's own checks
run on the owner as they would for a local call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .errors import InternalError, NotFound, PlugbusError

if TYPE_CHECKING:
    from .bus import Bus

log = logging.getLogger("plugbus.cluster")

Operation = Callable[[dict[str, Any]], Awaitable[Any]]


class Cluster:
    """Operations by connection id, wherever the connection lives.

    :param timeout: seconds to wait for the owner's answer.
    """

    def __init__(self, bus: Bus, timeout: float = 5.0) -> None:
        self._bus = bus
        self._ops: dict[str, Operation] = {}
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._serving: set[asyncio.Task[None]] = set()
        self._timeout = timeout

    def register(self, name: str, operation: Operation) -> None:
        """Make ``operation`` (called with a JSON-able payload that names ``sid``) runnable
        from any node under ``name``. Register in ``plugbus_startup`` or earlier."""
        self._ops[name] = operation

    async def on_owner(self, sid: str, name: str, payload: dict[str, Any]) -> Any:
        """Run operation ``name`` on the node holding connection ``sid``.

        :return: what the operation returned (JSON-able).
        :raises NotFound: no node holds ``sid``.
        :raises PlugbusError: the operation's own refusal, or a timeout (504).
        """
        payload = {**payload, "sid": sid}
        if self._bus.connection(sid) is not None:
            return await self._ops[name](payload)
        if self._task is None or not await self._bus.presence.is_connected(sid):
            raise NotFound(f"no connection with id {sid!r}", details={"sid": sid})
        request_id = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._redis.publish(
                self._channel("ops"),
                json.dumps(
                    {
                        "id": request_id,
                        "op": name,
                        "payload": payload,
                        "reply": self._bus.backend.node_id,
                    }
                ),
            )
            answer = await asyncio.wait_for(future, self._timeout)
        except TimeoutError:
            raise PlugbusError(
                f"the node holding {sid!r} did not answer in time",
                code="node_timeout",
                status=504,
                details={"sid": sid},
            ) from None
        finally:
            self._pending.pop(request_id, None)
        if "error" in answer:
            err = answer["error"]
            raise PlugbusError(
                err["message"], code=err["code"], status=err["status"], details=err["details"]
            )
        return answer.get("result")

    # -- wiring -------------------------------------------------------------------------------

    @property
    def _redis(self) -> Any:
        return self._bus.backend.redis

    def _channel(self, *parts: str) -> str:
        return self._bus.backend.key("cluster", *parts)

    async def start(self) -> None:
        """Listen for operations and answers (shared backend only)."""
        if self._bus.backend.shared:
            self._task = asyncio.create_task(self._listen(), name="plugbus-cluster")

    async def stop(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _listen(self) -> None:
        replies = self._channel("reply", self._bus.backend.node_id)
        while True:  # survive Redis restarts: subscribe again after an error
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel("ops"), replies)
                async for message in pubsub.listen():
                    data = json.loads(message["data"])
                    if message["channel"] == replies:
                        future = self._pending.get(data["id"])
                        if future is not None and not future.done():
                            future.set_result(data)
                    elif self._bus.connection(data["payload"].get("sid", "")) is not None:
                        # held until done: the loop keeps only weak references to tasks
                        task = asyncio.create_task(self._serve(data))
                        self._serving.add(task)
                        task.add_done_callback(self._serving.discard)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster channel lost (%s); subscribing again", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _serve(self, request: dict[str, Any]) -> None:
        answer: dict[str, Any] = {"id": request["id"]}
        operation = self._ops.get(request["op"])
        try:
            if operation is None:
                raise InternalError(f"unknown cluster operation {request['op']!r}")
            answer["result"] = await operation(request["payload"])
        except PlugbusError as exc:
            answer["error"] = {**exc.to_dict(), "status": exc.status}
        except Exception:
            log.exception("cluster operation %s failed", request["op"])
            err = InternalError("internal error on the node holding the connection")
            answer["error"] = {**err.to_dict(), "status": err.status}
        with contextlib.suppress(Exception):
            await self._redis.publish(self._channel("reply", request["reply"]), json.dumps(answer))
