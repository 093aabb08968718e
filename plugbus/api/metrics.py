"""Prometheus metrics at ``GET /metrics``, exposed by the maintained ``prometheus-client``.

The hot paths only add to plain integers and dicts (an event's outcome, a publish's deliveries
and bytes); everything else — connections by transport and namespace, sessions, the wire's
refusals and forced closes by reason, readiness — is read when Prometheus scrapes, by a
collector of this module, so a scrape costs the scraper and an event costs one dict update.
Histograms (REST latency, hook durations) use prometheus-client's own types.

Label values are bounded: event names are those registered (anything else counts as
``(unknown)``), routes are path templates, reasons and outcomes come from fixed lists; never a
room, a sid or a user.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plugbus.core import Bus
from plugbus.core.backend import REDIS_BOUNDS
from plugbus.core.hooks import TIMING_BOUNDS

from .problems import install_problem_handlers
from .rest_door import require_scope

#: an error code -> the outcome label of ``plugbus_events_total``
_OUTCOMES = {
    "invalid_payload": "invalid",
    "unknown_event": "invalid",
    "rate_limited": "rate_limited",
    "internal_error": "error",
    "dropped": "dropped",
}
UNKNOWN_EVENT = "(unknown)"


def outcome_of(error: dict[str, Any] | None) -> str:
    """``ok``, ``invalid``, ``rate_limited``, ``error``, or ``refused`` (a rule, a permission,
    moderation: every other refusal)."""
    if error is None:
        return "ok"
    return _OUTCOMES.get(error.get("code", ""), "refused")


class Metrics:
    """One node's metrics: counters the doors add to, and the registry ``/metrics`` exposes.

    :param bus: the node's bus (connections, registered events, backend).
    :param sio: the Socket.IO server (its manager maps connections to Engine.IO sessions;
        its engine counts sessions, refusals and forced closes).
    :param lifecycle: the node's lifecycle (readiness phase).
    :param time_hooks: time every hook implementation call (``plugbus_hook_seconds``).
    """

    def __init__(self, bus: Bus, sio: Any, lifecycle: Any, *, time_hooks: bool = True) -> None:
        self.bus = bus
        #: per (hook, plugin) timings; None when metrics are off, so hooks run untimed
        self.hook_timings = bus.hooks.time_implementations() if time_hooks else None
        self.sio = sio
        self.engine = sio.eio
        self.lifecycle = lifecycle
        #: (door, event, outcome) -> count
        self.events: dict[tuple[str, str, str], int] = {}
        self.deliveries = 0
        self.delivered_bytes = 0
        self.recovered_sessions = 0
        self.replayed_packets = 0
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(self))
        self.rest_seconds = Histogram(
            "plugbus_rest_request_seconds",
            "REST requests by route template, method and status, and how long they took.",
            ["route", "method", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )

    def event(
        self,
        door: str,
        name: Any,
        error: dict[str, Any] | None,
        namespace: str,
        *,
        known: bool | None = None,
    ) -> None:
        """Count one event received at ``door`` ("socket" or "rest") and its outcome;
        ``known`` says whether ``name`` is a registered event in ``namespace`` when the caller
        looked it up already (None: looked up here)."""
        if known is None:
            known = isinstance(name, str) and self.bus.events.get(name, namespace) is not None
        if not known:
            name = UNKNOWN_EVENT
        key = (door, name, "ok" if error is None else outcome_of(error))
        self.events[key] = self.events.get(key, 0) + 1

    def delivered(self, recipients: int, size: int) -> None:
        """Count one publish's deliveries on this node: recipients and bytes written."""
        self.deliveries += recipients
        self.delivered_bytes += recipients * size

    def recovered(self, replayed: int) -> None:
        """Count one session recovered on this node and the packets replayed to it."""
        self.recovered_sessions += 1
        self.replayed_packets += replayed


def _buckets(bounds: tuple[float, ...], per_bucket: list[int]) -> list[tuple[str, int]]:
    """Cumulative ``(le, count)`` pairs from counts per bucket (the last one unbounded)."""
    cumulative, out = 0, []
    for bound, n in zip((*bounds, float("inf")), per_bucket, strict=True):
        cumulative += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return out


class _Collector(Collector):
    """What is read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Any]:
        m = self.m
        connections = GaugeMetricFamily(
            "plugbus_connections",
            "Live Socket.IO connections on this node by transport and namespace.",
            labels=["transport", "namespace"],
        )
        by: dict[tuple[str, str], int] = {}
        sessions = m.engine.sessions
        manager = m.sio.manager
        for connection in m.bus.connections():
            eio_sid = manager.eio_sid_from_sid(connection.sid, connection.namespace)
            session = sessions.get(eio_sid) if eio_sid is not None else None
            key = (session.transport if session is not None else "unknown", connection.namespace)
            by[key] = by.get(key, 0) + 1
        for (transport, namespace), count in sorted(by.items()):
            connections.add_metric([transport, namespace], count)
        yield connections
        yield GaugeMetricFamily(
            "plugbus_sessions",
            "Open Engine.IO sessions on this node, including those not yet in a namespace.",
            value=len(sessions),
        )
        handshakes = CounterMetricFamily(
            "plugbus_handshakes",
            "Engine.IO sessions opened, by transport.",
            labels=["transport"],
        )
        for transport, count in sorted(m.engine.handshakes.items()):
            handshakes.add_metric([transport], count)
        yield handshakes
        refusals = CounterMetricFamily(
            "plugbus_wire_refusals",
            "Handshakes refused and sessions closed by the server, by reason "
            "(session_limit, draining, forbidden_origin, protocol_violation, slow_consumer, "
            "connect_timeout, payload_too_large, overlapping_poll).",
            labels=["reason"],
        )
        for reason, count in sorted(m.engine.report.counters.items()):
            refusals.add_metric([reason], count)
        yield refusals
        events = CounterMetricFamily(
            "plugbus_events",
            "Events received, by door (socket, rest), event name and outcome "
            "(ok, invalid, refused, rate_limited, error, dropped).",
            labels=["door", "event", "outcome"],
        )
        for (door, name, outcome), count in sorted(m.events.items()):
            events.add_metric([door, name, outcome], count)
        yield events
        yield CounterMetricFamily(
            "plugbus_deliveries",
            "Event packets written to clients on this node (one per recipient).",
            value=m.deliveries,
        )
        yield CounterMetricFamily(
            "plugbus_delivered_bytes",
            "Bytes of event packets written to clients on this node.",
            value=m.delivered_bytes,
        )
        hooks = HistogramMetricFamily(
            "plugbus_hook_seconds",
            "Hook implementation calls by hook and plugin, and how long each took (awaited "
            "implementations: until they returned).",
            labels=["hook", "plugin"],
        )
        for (hook, plugin), (_calls, total, per_bucket) in sorted(
            (m.hook_timings.stats if m.hook_timings is not None else {}).items()
        ):
            hooks.add_metric([hook, plugin], _buckets(TIMING_BOUNDS, per_bucket), total)
        yield hooks
        yield CounterMetricFamily(
            "plugbus_recovered_sessions",
            "Sessions recovered on this node (connection state recovery).",
            value=m.recovered_sessions,
        )
        yield CounterMetricFamily(
            "plugbus_replayed_packets",
            "Event packets replayed to recovered sessions on this node.",
            value=m.replayed_packets,
        )
        yield from self._redis()
        for counter in list(m.bus.counters.by_name.values()):
            family = CounterMetricFamily(
                f"plugbus_{counter.name}", counter.help, labels=list(counter.labels)
            )
            for values, count in sorted(counter.values.items()):
                family.add_metric(list(values), count)
            yield family
        ready = GaugeMetricFamily(
            "plugbus_phase",
            "1 for the phase this node is in (starting, ready, draining, stopping).",
            labels=["phase"],
        )
        for phase in ("starting", "ready", "draining", "stopping"):
            ready.add_metric([phase], 1 if m.lifecycle.phase.value == phase else 0)
        yield ready

    def _redis(self) -> Iterator[Any]:
        """The backend's Redis round trips and failures (all zero with ``memory``, so that
        dashboards and alerts need no special case)."""
        stats = self.m.bus.backend.stats
        seconds = HistogramMetricFamily(
            "plugbus_redis_seconds",
            "Calls to Redis for stores, presence, cluster operations and pub/sub, and how "
            "long each took (waiting for a pooled connection included; none with the memory "
            "backend).",
        )
        seconds.add_metric([], _buckets(REDIS_BOUNDS, stats.buckets), stats.seconds)
        yield seconds
        errors = CounterMetricFamily(
            "plugbus_redis_errors",
            "Failed calls to Redis, by kind (connection, timeout, response, wrongtype, other).",
            labels=["kind"],
        )
        for kind, count in sorted(stats.errors.items()):
            errors.add_metric([kind], count)
        yield errors


def metrics_router(bus: Bus, metrics: Metrics) -> APIRouter:
    """``GET /metrics`` (the ``metrics`` scope when API keys are on)."""
    router = APIRouter()

    @router.get(
        "/metrics",
        tags=["server"],
        summary="Prometheus metrics of this node",
        dependencies=[require_scope(bus, "metrics")],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def scrape() -> Response:
        """This node's metrics in Prometheus' text format (every metric is per node: scrape
        each node). Needs the ``metrics`` scope (or ``admin``) when API keys are on."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def metrics_app(bus: Bus, metrics: Metrics) -> FastAPI:
    """The app of ``server.metrics.port``: ``/metrics`` and nothing else."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    install_problem_handlers(app)
    app.include_router(metrics_router(bus, metrics))
    return app


class RestMetricsMiddleware:
    """Times every REST request and counts it by route template, method and status (pure
    ASGI; the route template is read after routing, so a path's variables never become
    labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "(unmatched)"
            self.metrics.rest_seconds.labels(template, scope["method"], str(status)).observe(
                time.perf_counter() - start
            )
