"""The REST door: plugbus's own routes, and the routes plugins contribute.

Plugin routes arrive as framework-free :class:`~plugbus.core.Route` objects; each becomes a
FastAPI endpoint whose signature names its path parameters and body model, so FastAPI
validates the body and the OpenAPI document shows both models.
"""

from __future__ import annotations

import inspect
import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, JsonValue

from plugbus.core import (
    Bus,
    InvalidPayload,
    NotAllowed,
    NotFound,
    Origin,
    PlugbusError,
    Principal,
    RateLimited,
    Route,
    RouteRequest,
)
from plugbus.core.contract import asyncapi_document, event_schemas
from plugbus.core.events import LONE_SURROGATE, find_lone_surrogate
from plugbus.core.ratelimit import TokenBucket

_PATH_PARAM = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)(?::[^}]*)?}")


class Readiness(BaseModel):
    """``GET /ready``."""

    status: str = Field(
        description='"ready", or why not (starting, draining, stopping, the '
        "shared backend unreachable)."
    )
    phase: str = Field(description="starting | ready | draining | stopping.")


class Health(BaseModel):
    """``GET /health``."""

    status: str = Field(description='"ok" while the server serves.')
    server: str = Field(description="server.name from the config.")
    connections: int = Field(description="Live Socket.IO connections on this node.")
    sessions: int = Field(
        description="Open Engine.IO sessions on this node, including those that "
        "have not joined a namespace yet."
    )
    plugins: list[str] = Field(description="Loaded plugin names.")
    wire: dict[str, Any] = Field(
        description="The wire: the websocket writer setting and the path "
        "it takes (and why, where it falls back), connections "
        "per path, forced closes by reason, and every "
        "private seam into another library with its verified "
        "and installed version."
    )
    backend: dict[str, Any] = Field(
        description='The shared-state backend: `kind` ("memory" or "redis") and, for Redis, '
        'its URL (password masked) and `reply_parser`: "hiredis" (redis-py\'s C parser) or '
        '"python" (the slower fallback, also logged as a warning at start-up); '
        "`overlapping_appends`: `on`, whether a websocket connection's next event may start "
        "while the ones before it wait for their appends, and `unavailable_reason` when not "
        "(also logged at start-up)."
    )


class PluginDescription(BaseModel):
    """One loaded plugin."""

    name: str
    source: str = Field(description='"builtin", "entry point" or "module".')
    version: str | None
    target: str = Field(description="What was imported: module[:Class].")
    hooks: list[str]


class EventResult(BaseModel):
    """The ack of an event sent over REST."""

    ok: bool = True
    data: JsonValue = Field(None, description="What the handling plugin acknowledged.")


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def check_scope(principal: Principal | None, scope: str, what: str = "route") -> None:
    """Refuse (403 ``insufficient_scope``) a caller whose key lacks ``scope``; a None principal
    means REST authentication is off and passes."""
    if principal is not None and scope not in principal.scopes:
        raise NotAllowed(
            f"this API key ({principal.name}) lacks the {scope!r} scope this {what} needs",
            code="insufficient_scope",
            details={"required": scope, "key": principal.name},
        )


def require_scope(bus: Bus, scope: str | None, limiter: PublishLimiter | None = None) -> Any:
    """A dependency that lets a request through when its caller holds ``scope``.

    Asks ``plugbus_authenticate_request``; when no plugin answers, REST authentication is off
    and everyone is let through. The principal is left in ``request.state.principal``. With
    ``scope`` None the caller is only authenticated (the route checks a scope of its own).
    With a ``limiter`` the request also counts against its key's and its address's publishing
    rate (after authentication, so that an unauthenticated flood costs no bucket).
    """

    async def dependency(
        request: Request, _credentials: HTTPAuthorizationCredentials | None = Security(_bearer)
    ) -> Principal | None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        principal = await bus.hooks.authenticate_request(headers, bus)
        request.state.principal = principal
        if scope is not None:
            check_scope(principal, scope)
        if limiter is not None:
            client = request.scope.get("client")
            limiter.take(
                principal.name if principal is not None else None, client[0] if client else None
            )
        return principal

    return Depends(dependency)


class PublishLimiter:
    """Token buckets for REST publishing: one per API key and one per client address
    (``server.limits.rest_publish_per_key``, ``rest_publish_per_address``, ``rest_publish_burst``;
    0 switches a rate off). Past either, the request is refused with 429 and ``Retry-After``.

    Buckets of callers that went quiet are forgotten once there are many, so that requests from
    ever new addresses cannot grow the table without bound.
    """

    MAX_BUCKETS = 10_000

    def __init__(self, per_key: float, per_address: float, burst: int) -> None:
        self.per_key = per_key
        self.per_address = per_address
        self.burst = float(burst)
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def take(self, key: str | None, address: str | None) -> None:
        """Count one request.

        :raises RateLimited: the key's or the address's rate is spent.
        """
        for kind, name, rate in (
            ("key", key, self.per_key),
            ("address", address, self.per_address),
        ):
            if name is None or not rate:
                continue
            bucket = self._buckets.get((kind, name))
            if bucket is None:
                if len(self._buckets) >= self.MAX_BUCKETS:
                    self._prune()
                bucket = self._buckets[(kind, name)] = TokenBucket(rate, self.burst)
            wait = bucket.take()
            if wait:
                shown = name if kind == "key" else "your address"
                raise RateLimited(
                    f"too many REST publishing requests from {shown}: at most {rate:g} per second "
                    f"(bursts of {self.burst:g}); retry in {wait:.2f} s",
                    details={
                        "retry_after": round(wait, 3),
                        "limit": rate,
                        "per": kind,
                        "setting": f"server.limits.rest_publish_per_{kind}",
                    },
                )

    def _prune(self) -> None:
        now = time.monotonic()
        full = [k for k, b in self._buckets.items() if b.full(now)]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.MAX_BUCKETS:  # all busy: forget the oldest half
            for k in list(self._buckets)[: self.MAX_BUCKETS // 2]:
                del self._buckets[k]


def core_router(
    bus: Bus, wire: Any, limiter: PublishLimiter | None = None, lifecycle: Any = None
) -> APIRouter:
    """The routes every plugbus server has, whatever its plugins.

    :param wire: the socket server's Engine.IO server (its ``report`` and ``sessions`` feed
        ``/health``).
    :param limiter: REST publishing's rate limits.
    :param lifecycle: the node's :class:`~plugbus.api.lifecycle.Lifecycle` (``/ready``).
    """
    router = APIRouter()

    @router.get(
        "/ready",
        response_model=Readiness,
        tags=["server"],
        summary="Readiness: 200 while this node should get traffic",
        responses={
            503: {
                "description": "Starting, draining, stopping, or the shared backend "
                "does not answer (application/problem+json, code not_ready)."
            }
        },
    )
    async def ready() -> Readiness:
        """200 while the node is ready and its shared backend answers a PING within a second;
        503 (``not_ready``) while it starts, drains or stops, or while Redis is unreachable.
        Point a load balancer's or Kubernetes' readiness probe here, and the liveness probe at
        ``/health``."""
        ok, why = await lifecycle.readiness()
        if not ok:
            raise PlugbusError(
                f"not ready: {why}",
                code="not_ready",
                status=503,
                details={"phase": lifecycle.phase.value},
            )
        return Readiness(status="ready", phase=lifecycle.phase.value)

    @router.get("/health", response_model=Health, tags=["server"], summary="Liveness and counts")
    async def health() -> Health:
        return Health(
            status="ok",
            server=bus.server_name,
            connections=bus.connection_count,
            sessions=len(wire.sessions),
            plugins=[p.name for p in bus.plugins],
            wire=wire.report.as_dict(),
            backend=(
                bus.backend.report()
                if (overlap := bus.append_overlap()) is None
                else {**bus.backend.report(), "overlapping_appends": overlap}
            ),
        )

    @router.get(
        "/plugins",
        response_model=list[PluginDescription],
        tags=["server"],
        dependencies=[require_scope(bus, "read")],
        summary="Loaded plugins with source, version and hooks",
        description=scope_note("read"),
    )
    async def plugins() -> list[dict[str, Any]]:
        return [p.as_dict() for p in bus.plugins]

    @router.get(
        "/asyncapi.json",
        tags=["events"],
        summary="The Socket.IO event contract as an AsyncAPI 3 document",
    )
    async def asyncapi(request: Request) -> dict[str, Any]:
        base = str(request.base_url).rstrip("/")
        return asyncapi_document(bus, version=request.app.version, server_url=base)

    namespace_query = Query(
        None,
        description="The Socket.IO namespace the event belongs to (default: the first of "
        "server.namespaces).",
    )

    @router.get(
        "/events/{event}/schema",
        tags=["events"],
        summary="JSON Schema of one event's payload and ack",
    )
    async def event_schema(event: str, namespace: str | None = namespace_query) -> dict[str, Any]:
        ns = bus.check_namespace(namespace) if namespace is not None else bus.default_namespace
        schemas = event_schemas(bus, ns)
        if event not in schemas:
            raise NotFound(
                f"no event named {event!r}",
                details={"event": event, "namespace": ns, "known": sorted(schemas)},
            )
        return {"name": event, "namespace": ns, **schemas[event]}

    @router.post(
        "/events/{event}",
        response_model=EventResult,
        tags=["events"],
        dependencies=[require_scope(bus, None, limiter)],
        summary="Send any registered event through the pipeline, as a server",
    )
    async def send_event(
        request: Request,
        event: str,
        payload: dict[str, JsonValue],
        namespace: str | None = namespace_query,
    ) -> EventResult:
        """The generic door: the body is the event's payload — the object of its named
        fields, also for events clients send with positional arguments — validated against
        the schema its plugin registered in ``namespace``; moderation and handling are the
        same as over Socket.IO. Each event declares the API-key scope it needs here
        (``publish`` for messages, ``read`` for ``room-members``, ``admin`` unless its plugin
        says otherwise). Events that act on the sender's own connection (``join-room``) are
        refused here."""
        event_cls = bus.events.get(event, namespace)
        if event_cls is not None:
            check_scope(
                getattr(request.state, "principal", None), event_cls.rest_scope, f"event ({event})"
            )
        metrics = getattr(request.app.state, "metrics", None)
        try:
            result = await bus.dispatch(
                event, payload, bus.context(Origin.REST, namespace=namespace)
            )
        except PlugbusError as exc:
            if metrics is not None:
                metrics.event("rest", event, exc.to_dict(), namespace or bus.default_namespace)
            raise
        if metrics is not None:
            metrics.event("rest", event, None, namespace or bus.default_namespace)
        # a plain-ack event's handler may answer several values (a tuple): a JSON array here
        return EventResult(data=list(result) if isinstance(result, tuple) else result)

    return router


def add_plugin_routes(app: FastAPI, bus: Bus, limiter: PublishLimiter | None = None) -> None:
    """Mount every route from ``plugbus_routes``; those that need the ``publish`` scope count
    against ``limiter``."""
    for plugin_name, route in bus.hooks.routes(bus):
        limited = limiter if route.scope == "publish" else None
        app.add_api_route(
            route.path,
            _endpoint(route, bus),
            methods=[route.method.upper()],
            response_model=route.response,
            status_code=route.status_code,
            summary=route.summary or None,
            description=describe_route(route),
            tags=list(route.tags) or [plugin_name],
            name=f"{plugin_name}:{route.method.lower()} {route.path}",
            dependencies=[require_scope(bus, route.scope, limited)]
            if route.scope is not None
            else None,
        )


def scope_note(scope: str | None) -> str:
    """What a route's OpenAPI description says about the API-key scope it needs."""
    if scope is None:
        return "Open to every caller: no API key is asked for."
    return (
        f"Needs an API key with the `{scope}` scope once REST callers are checked (an "
        "authentication plugin answers `plugbus_authenticate_request`, as the `auth` plugin "
        "does when it has `api_keys`); open to every caller until then."
    )


def describe_route(route: Route) -> str:
    """A plugin route's OpenAPI description: its handler's docstring, then its scope."""
    doc = inspect.cleandoc(route.handler.__doc__ or "")
    return f"{doc}\n\n{scope_note(route.scope)}" if doc else scope_note(route.scope)


def _endpoint(route: Route, bus: Bus) -> Any:
    """Build an endpoint whose signature tells FastAPI the path params and body model."""
    names = _PATH_PARAM.findall(route.path)
    params = [inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request)]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=str) for n in names]
    if route.body is not None:
        params.append(
            inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, annotation=route.body)
        )
    if route.query is not None:
        params.append(
            inspect.Parameter(
                "query_params",
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[route.query, Query()],
            )
        )

    async def endpoint(**kwargs: Any) -> Any:
        request: Request = kwargs.pop("request")
        body = kwargs.pop("body", None)
        query_params = kwargs.pop("query_params", None)
        if body is not None:
            _refuse_lone_surrogates(body)
        req = RouteRequest(
            bus=bus,
            path_params={n: kwargs[n] for n in names},
            query=dict(request.query_params),
            body=body,
            headers={k.lower(): v for k, v in request.headers.items()},
            principal=getattr(request.state, "principal", None),
            params=query_params,
        )
        result = route.handler(req)
        if inspect.isawaitable(result):
            result = await result
        return result

    endpoint.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    endpoint.__doc__ = route.handler.__doc__
    return endpoint


def _refuse_lone_surrogates(body: BaseModel) -> None:
    """Refuse a body with a lone surrogate in any string (422 ``invalid_payload``): JSON allows
    ``"\\ud800"``, but no UTF-8 encoder does, so the text could be neither delivered, logged
    nor stored in Redis."""
    lone = find_lone_surrogate(body.model_dump(mode="python"))
    if lone is not None:
        raise InvalidPayload(
            f"invalid request: body.{lone}: {LONE_SURROGATE}",
            details={
                "errors": [
                    {"loc": f"body.{lone}", "message": LONE_SURROGATE, "type": "string_unicode"}
                ]
            },
        )
