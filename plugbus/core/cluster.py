"""Run an operation on the node that holds a connection.

With a shared backend, a REST call to any node may name a connection that lives on another:
a server-side join, a leave, a kick. :meth:`Cluster.on_owner` runs the operation where the
connection is — locally when it is here, otherwise through the pub/sub of core's own store
(``cluster``: channel ``ops``, which every node listens to, and ``reply:<node>``), waiting for
the owner's answer (an error comes back as the same :class:`PlugbusError`). Plugins register
their operations by name in ``plugbus_startup``, so a plugin's own checks run on the owner as
they would for a local call.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .errors import InternalError, NotFound, PlugbusError

if TYPE_CHECKING:
    from .bus import Bus
    from .store import Store, Subscription

log = logging.getLogger("plugbus.cluster")

Operation = Callable[[dict[str, Any]], Awaitable[Any]]


class Cluster:
    """Operations by connection id, wherever the connection lives.

    :param store: core's ``cluster`` store (its pub/sub carries requests and answers).
    :param timeout: seconds to wait for the owner's answer.
    """

    def __init__(self, bus: Bus, store: Store, timeout: float = 5.0) -> None:
        self._bus = bus
        self._store = store
        self._ops: dict[str, Operation] = {}
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._subscriptions: list[Subscription] = []
        self._timeout = timeout

    def register(self, name: str, operation: Operation) -> None:
        """Make ``operation`` (called with a JSON-able payload that names ``sid``) runnable
        from any node under ``name``. Register in ``plugbus_startup`` or earlier.

        :raises ValueError: ``name`` is registered already.
        """
        if name in self._ops:
            raise ValueError(f"cluster operation {name!r} is registered already")
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
        if not self._subscriptions or not await self._bus.presence.is_connected(sid):
            raise NotFound(f"no connection with id {sid!r}", details={"sid": sid})
        request_id = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._store.publish(
                "ops",
                {"id": request_id, "op": name, "payload": payload, "reply": self._bus.node_id},
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

    async def start(self) -> None:
        """Listen for operations and answers (shared backend only)."""
        if self._store.shared:
            self._subscriptions = [
                await self._store.subscribe("ops", self._request),
                await self._store.subscribe(f"reply:{self._bus.node_id}", self._answer),
            ]

    async def stop(self) -> None:
        """Stop listening."""
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.close()

    def _answer(self, data: dict[str, Any]) -> None:
        future = self._pending.get(data.get("id", ""))
        if future is not None and not future.done():
            future.set_result(data)

    async def _request(self, request: dict[str, Any]) -> None:
        if self._bus.connection(request.get("payload", {}).get("sid", "")) is None:
            return  # another node's connection
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
        try:
            await self._store.publish(f"reply:{request['reply']}", answer)
        except PlugbusError:
            log.warning("could not answer cluster operation %s (store unavailable)", request["op"])
