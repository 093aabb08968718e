"""Prometheus metrics (issue #14 item 1): scraped from a real server and read with the
official parser (``prometheus_client.parser``), after real traffic over both doors."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
import websockets
from conftest import Server, assert_problem, free_port
from prometheus_client.parser import text_string_to_metric_families

ADMIN_KEY = "metrics-admin-key-0d3e"
METRICS_KEY = "metrics-scrape-key-7c1a"
PUBLISH_KEY = "metrics-publish-key-58b2"


def scrape(server: Server, port: int | None = None, key: str | None = None) -> dict[str, Any]:
    """``{(sample name, frozenset(labels)): value}`` of one scrape, via the official parser."""
    url = f"http://127.0.0.1:{port or server.port}/metrics"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = httpx.get(url, headers=headers, timeout=5)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=")
    out: dict[Any, float] = {}
    for family in text_string_to_metric_families(resp.text):
        assert family.documentation, f"{family.name} has no help text"
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_traffic_on_both_doors_shows_in_the_metrics(serve, connect) -> None:  # type: ignore[no-untyped-def]
    server = serve(
        {
            "server": {"limits": {"events_per_second": 5, "event_burst": 6}},
            "plugins": {"settings": {"moderation": {"blocked_words": ["darn"]}}},
        }
    )
    ws = await connect(server, transports=["websocket"], auth={"user": "user-ivy-31"})
    poll = await connect(server, transports=["polling"])
    await ws.call("join-room", {"room": "room-metrics-77"})
    await poll.call("join-room", {"room": "room-metrics-77"})
    assert (await ws.call("send-message", {"message": "hi", "roomID": "room-metrics-77"}))["ok"]
    await poll.wait_for("receive-message")
    bad = await poll.call("send-message", {"roomID": "room-metrics-77"})
    assert bad["error"]["code"] == "invalid_payload"
    refused = await poll.call("send-message", {"message": "darn", "roomID": "room-metrics-77"})
    assert refused["error"]["code"] == "message_rejected"
    unknown = await poll.call("no-such-event-x1", {})
    assert unknown["error"]["code"] == "unknown_event"
    limited = [await ws.call("room-members", {"room": "room-metrics-77"}) for _ in range(12)]
    assert any(not r["ok"] and r["error"]["code"] == "rate_limited" for r in limited)
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        sent = await http.post("/rooms/room-metrics-77/messages", json={"message": "rest"})
        assert sent.status_code == 200
        assert (await http.post("/events/send-message", json={"roomID": "r"})).status_code == 422
        assert (await http.get("/rooms/room-metrics-77")).status_code == 200
    # a protocol violation on a raw websocket: the wire closes it and counts it
    async with websockets.connect(
        f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket"
    ) as raw:
        await raw.recv()
        await raw.send("4xyz")
        with contextlib_suppress():
            await asyncio.wait_for(raw.recv(), 2)

    m = scrape(server)
    assert value(m, "plugbus_connections", transport="websocket", namespace="/") == 1
    assert value(m, "plugbus_connections", transport="polling", namespace="/") == 1
    assert value(m, "plugbus_sessions") >= 2
    assert value(m, "plugbus_handshakes_total", transport="websocket") >= 2
    assert value(m, "plugbus_handshakes_total", transport="polling") >= 1
    sock = {"door": "socket"}
    assert value(m, "plugbus_events_total", **sock, event="send-message", outcome="ok") == 1
    assert value(m, "plugbus_events_total", **sock, event="send-message", outcome="invalid") == 1
    assert value(m, "plugbus_events_total", **sock, event="send-message", outcome="refused") == 1
    assert value(m, "plugbus_events_total", **sock, event="(unknown)", outcome="invalid") == 1
    assert (
        value(m, "plugbus_events_total", **sock, event="room-members", outcome="rate_limited") >= 1
    )
    rest = {"door": "rest", "event": "send-message"}
    assert value(m, "plugbus_events_total", **rest, outcome="invalid") == 1
    # the message over Socket.IO reached 2 members, the REST one 2 more
    assert value(m, "plugbus_deliveries_total") >= 4
    assert value(m, "plugbus_delivered_bytes_total") > 4 * len('42["receive-message","hi"]') - 1
    assert (
        value(
            m,
            "plugbus_rest_request_seconds_count",
            route="/rooms/{room}",
            method="GET",
            status="200",
        )
        == 1
    )
    assert (
        value(
            m,
            "plugbus_rest_request_seconds_count",
            route="/rooms/{room}/messages",
            method="POST",
            status="200",
        )
        == 1
    )
    assert value(m, "plugbus_wire_refusals_total", reason="protocol_violation") == 1
    # moderation counts its decision by rule and action (through bus.counter)
    decisions = "plugbus_moderation_decisions_total"
    assert value(m, decisions, rule="blocked_words", action="refuse") == 1
    assert value(m, "plugbus_phase", phase="ready") == 1
    assert value(m, "plugbus_phase", phase="draining") == 0
    # every send-message went through moderation's plugbus_moderate and relay's handler
    moderated = value(m, "plugbus_hook_seconds_count", hook="plugbus_moderate", plugin="moderation")
    assert moderated >= 3
    handled = value(m, "plugbus_hook_seconds_count", hook="plugbus_handle_event", plugin="relay")
    assert handled >= 1
    inf = value(
        m, "plugbus_hook_seconds_bucket", hook="plugbus_moderate", plugin="moderation", le="+Inf"
    )
    assert inf == moderated
    assert value(m, "plugbus_hook_seconds_sum", hook="plugbus_moderate", plugin="moderation") > 0
    # bounded labels: no room, sid or user id ever becomes a label value
    label_values = {v for (_, labels) in m for (_, v) in labels}
    for private in ("room-metrics-77", "user-ivy-31", ws.sio.get_sid("/"), poll.sio.get_sid("/")):
        assert private not in label_values
    assert not any("room-metrics-77" in v for v in label_values)


def contextlib_suppress() -> Any:
    import contextlib

    return contextlib.suppress(websockets.ConnectionClosed, TimeoutError)


def keyed(**server: Any) -> dict[str, Any]:
    return {
        "server": server,
        "plugins": {
            "settings": {
                "auth": {
                    "api_keys": [
                        {"name": "ops", "key": ADMIN_KEY, "scopes": ["admin"]},
                        {"name": "prometheus", "key": METRICS_KEY, "scopes": ["metrics"]},
                        {"name": "backend", "key": PUBLISH_KEY, "scopes": ["publish"]},
                    ]
                }
            }
        },
    }


def test_with_api_keys_metrics_need_the_metrics_scope(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(keyed())
    assert_problem(httpx.get(server.url + "/metrics"), 401, "unauthorized")
    publish = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {PUBLISH_KEY}"})
    assert_problem(publish, 403, "insufficient_scope")
    assert value(scrape(server, key=METRICS_KEY), "plugbus_phase", phase="ready") == 1
    assert value(scrape(server, key=ADMIN_KEY), "plugbus_phase", phase="ready") == 1
    # the metrics key is for scraping only
    other = httpx.get(server.url + "/rooms", headers={"Authorization": f"Bearer {METRICS_KEY}"})
    assert_problem(other, 403, "insufficient_scope")


def test_metrics_on_their_own_port_only(serve) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    server = serve(keyed(metrics={"port": port}))
    assert httpx.get(server.url + "/metrics").status_code == 404
    assert value(scrape(server, port=port, key=METRICS_KEY), "plugbus_phase", phase="ready") == 1
    assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 401
    assert httpx.get(f"http://127.0.0.1:{port}/rooms").status_code == 404
    # the metrics server stops with the node
    server.proc.send_signal(signal.SIGINT)
    server.proc.wait(10)
    try:
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
        raise AssertionError("the metrics port still answers after the node stopped")
    except httpx.TransportError:
        pass


def test_metrics_can_be_switched_off(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve({"server": {"metrics": {"enabled": False}}})
    assert httpx.get(server.url + "/metrics").status_code == 404


def text_scrape(text: str) -> dict[Any, float]:
    out: dict[Any, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


async def test_recovered_sessions_and_replayed_packets_are_counted(plugbus_server) -> None:  # type: ignore[no-untyped-def]
    server = await plugbus_server()
    alice = await server.client(recovery=True)
    bob = await server.client()
    for c in (alice, bob):
        await c.call("join-room", {"room": "metrics-recovery"})
    await bob.call("send-message", {"message": "one", "roomID": "metrics-recovery"})
    await alice.wait_for("receive-message")
    await server.drop(alice)
    for text in ("two", "three", "four"):
        await bob.call("send-message", {"message": text, "roomID": "metrics-recovery"})
    back = await server.reconnect(alice)
    assert back.recovered
    assert await back.wait_for("receive-message", 3) == ["two", "three", "four"]
    m = text_scrape((await server.http.get("/metrics")).text)
    assert value(m, "plugbus_recovered_sessions_total") == 1
    assert value(m, "plugbus_replayed_packets_total") == 3


async def test_redis_round_trips_and_errors(serve, connect, redis_server) -> None:  # type: ignore[no-untyped-def]
    server = serve({"server": {"backend": redis_server.url}})
    client = await connect(server)
    assert (await client.call("join-room", {"room": "metrics-redis"}))["ok"]
    m = scrape(server)
    calls = value(m, "plugbus_redis_seconds_count")
    assert calls >= 2  # presence: the connection, then the membership
    assert value(m, "plugbus_redis_seconds_bucket", le="+Inf") == calls
    assert 0 < value(m, "plugbus_redis_seconds_sum") < calls  # round trips well under 1 s
    assert value(m, "plugbus_redis_errors_total", kind="connection") == 0
    redis_server.stop()
    # presence lives in Redis: listing the rooms fails while it is away, and is counted
    resp = httpx.get(server.url + "/rooms", timeout=15)
    assert resp.status_code == 503, resp.text
    m = scrape(server)
    assert value(m, "plugbus_redis_errors_total", kind="connection") >= 1
    assert value(m, "plugbus_redis_seconds_count") > calls
