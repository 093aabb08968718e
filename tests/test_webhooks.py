"""The webhooks plugin (issue #14 item 5) against a real HTTP receiver: an aiohttp server in
the test, on a free loopback port, with plugbus running as a real child process (one, or two
on one Redis). Signatures are checked with the verification function docs/plugins/webhooks.md
shows, run as it is written there."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from conftest import RedisServer, free_port, serve_together
from test_metrics import scrape, value

from plugbus.core.config import DEFAULT_BUILTINS

SECRET = "webhook-test-secret-4f1d"
PAGE = Path(__file__).resolve().parent.parent / "docs" / "plugins" / "webhooks.md"


def documented_verify() -> Callable[..., bool]:
    """The ``verify`` function of the page's one Python block."""
    blocks = re.findall(r"^```python\n(.*?)^```$", PAGE.read_text(encoding="utf-8"), re.M | re.S)
    assert len(blocks) == 1, "webhooks.md should show one Python block: the verification"
    module = types.ModuleType("webhooks_md")
    exec(compile(blocks[0], str(PAGE), "exec"), module.__dict__)
    return module.verify  # type: ignore[no-any-return]


class Receiver:
    """A webhook receiver: records every request; answers as ``behaviour`` says."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        #: (arrival time, headers, raw body) of every request
        self.requests: list[tuple[float, dict[str, str], bytes]] = []
        self.verified: list[bool] = []
        self.verify = documented_verify()
        #: how many requests to answer 500 before answering 200
        self.fail_first = 0
        #: while set, requests wait for it to clear (a receiver that hangs)
        self.hang = asyncio.Event()
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((time.monotonic(), dict(request.headers), body))
        self.verified.append(self.verify(SECRET.encode(), request.headers, body))
        self.arrived.set()
        if self.hang.is_set():
            await self.release.wait()
        if len(self.requests) <= self.fail_first:
            return web.Response(status=500, text="try again")
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self.handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        out = [json.loads(body) for _, _, body in self.requests]
        return [e for e in out if kind is None or e["type"] == kind]

    async def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"receiver got: {self.events()}"
            await asyncio.sleep(0.02)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def hooked(receiver: Receiver, **settings: Any) -> dict[str, Any]:
    return {
        "plugins": {
            "builtins": [*DEFAULT_BUILTINS, "webhooks"],
            "settings": {
                "webhooks": {"urls": [receiver.url], "secret": SECRET, **settings},
            },
        }
    }


async def test_events_arrive_signed_as_documented(serve, connect, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    server = serve(
        hooked(receiver, events=["room.occupied", "room.vacated", "member.added",
                                 "member.removed", "message.published"])
    )  # fmt: skip
    alice = await connect(server, auth={"user": "alice-77", "name": "Alice"})
    bob = await connect(server)
    assert (await alice.call("join-room", {"room": "hook-room"}))["ok"]
    assert (await bob.call("join-room", {"room": "hook-room"}))["ok"]
    sent = await alice.call("send-message", {"message": "hi there", "roomID": "hook-room"})
    assert sent["ok"]
    assert (await alice.call("leave-room", {"room": "hook-room"}))["ok"]
    await bob.disconnect()
    await receiver.wait(lambda: len(receiver.events("room.vacated")) == 1)

    kinds = [e["type"] for e in receiver.events()]
    assert kinds == [
        "room.occupied",
        "member.added",
        "member.added",
        "message.published",
        "member.removed",
        "member.removed",
        "room.vacated",
    ]
    assert all(receiver.verified), "a signature does not verify with the documented recipe"
    first = receiver.events()[1]
    assert first["room"] == "hook-room" and first["namespace"] == "/"
    assert first["member"] == {"sid": alice.sid, "user": "alice-77", "name": "Alice"}
    published = receiver.events("message.published")[0]["message"]
    assert published == {
        "id": sent["data"]["id"],
        "from": alice.sid,
        "user": "alice-77",
        "message": "hi there",
    }
    _, headers, body = receiver.requests[0]
    assert headers["X-Plugbus-Event"] == "room.occupied"
    assert headers["X-Plugbus-Attempt"] == "1"
    assert headers["X-Plugbus-Delivery"] == json.loads(body)["id"]
    # a tampered body, another secret, or an old timestamp do not verify
    assert not receiver.verify(SECRET.encode(), headers, body + b" ")
    assert not receiver.verify(b"another secret", headers, body)
    stale = {**headers, "X-Plugbus-Timestamp": str(int(time.time()) - 3600)}
    assert not receiver.verify(SECRET.encode(), stale, body)
    m = scrape(server)
    assert value(m, "plugbus_webhook_deliveries_total", outcome="delivered") == 7
    # the secret is nowhere in what the node says about itself
    plugins = httpx.get(server.url + "/plugins", timeout=5)
    assert plugins.status_code == 200 and "webhooks" in plugins.text
    assert SECRET not in plugins.text and SECRET not in server.log()


async def test_a_failing_receiver_gets_retries_with_growing_delays(
    serve, connect, receiver: Receiver
) -> None:  # type: ignore[no-untyped-def]
    receiver.fail_first = 3
    server = serve(
        hooked(
            receiver,
            events=["room.occupied"],
            retry={"attempts": 5, "initial_delay_s": 0.2, "factor": 2.0, "max_delay_s": 5},
        )
    )
    client = await connect(server)
    assert (await client.call("join-room", {"room": "retry-room"}))["ok"]
    await receiver.wait(lambda: len(receiver.requests) == 4)
    attempts = [h["X-Plugbus-Attempt"] for _, h, _ in receiver.requests]
    assert attempts == ["1", "2", "3", "4"]
    assert len({h["X-Plugbus-Delivery"] for _, h, _ in receiver.requests}) == 1
    assert all(receiver.verified)
    times = [t for t, _, _ in receiver.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 0.2 s, 0.4 s, 0.8 s: each delay twice the one before (give or take the machine's load)
    assert gaps[0] >= 0.18, gaps
    assert gaps[1] >= 1.6 * gaps[0] and gaps[2] >= 1.6 * gaps[1], gaps
    await asyncio.sleep(0.2)
    m = scrape(server)
    assert value(m, "plugbus_webhook_retries_total") == 3
    assert value(m, "plugbus_webhook_deliveries_total", outcome="delivered") == 1
    assert value(m, "plugbus_webhook_deliveries_total", outcome="failed") == 0


async def test_a_hanging_receiver_does_not_slow_messages(
    serve, connect, receiver: Receiver
) -> None:  # type: ignore[no-untyped-def]
    receiver.hang.set()
    server = serve(hooked(receiver, events=["message.published"], timeout_s=10, queue_size=500))
    client = await connect(server)
    assert (await client.call("join-room", {"room": "echo-room"}))["ok"]
    assert (await client.call("send-message", {"message": "first", "roomID": "echo-room"}))["ok"]
    await asyncio.wait_for(receiver.arrived.wait(), 5)  # the receiver holds it, and hangs
    rtts = []
    for i in range(30):
        started = time.perf_counter()
        ack = await client.call("send-message", {"message": f"m{i}", "roomID": "echo-room"})
        assert ack["ok"]
        await client.wait_for("receive-message", count=i + 2)
        rtts.append(time.perf_counter() - started)
    # every echo is a webhook queued behind the hanging one; none waits for it (10 s timeout)
    assert max(rtts) < 1.0, rtts
    assert len(receiver.requests) == 1, "the sender should still be waiting on the first"


async def test_a_full_queue_drops_the_oldest_and_counts_them(
    serve, connect, receiver: Receiver
) -> None:  # type: ignore[no-untyped-def]
    receiver.hang.set()
    server = serve(hooked(receiver, events=["message.published"], queue_size=3))
    client = await connect(server)
    assert (await client.call("join-room", {"room": "q-room"}))["ok"]
    assert (await client.call("send-message", {"message": "m0", "roomID": "q-room"}))["ok"]
    await asyncio.wait_for(receiver.arrived.wait(), 5)  # m0 is in flight, held
    for i in range(1, 10):
        assert (await client.call("send-message", {"message": f"m{i}", "roomID": "q-room"}))["ok"]
    m = scrape(server)
    assert value(m, "plugbus_webhook_deliveries_total", outcome="dropped") == 6
    receiver.hang.clear()
    receiver.release.set()
    await receiver.wait(lambda: len(receiver.requests) == 4)
    messages = [e["message"]["message"] for e in receiver.events()]
    assert messages == ["m0", "m7", "m8", "m9"]  # the oldest waiting ones went
    await asyncio.sleep(0.3)
    assert len(receiver.requests) == 4
    m = scrape(server)
    assert value(m, "plugbus_webhook_deliveries_total", outcome="delivered") == 4


async def test_two_nodes_on_redis_say_occupied_and_vacated_once(
    serve, connect, receiver: Receiver, redis_server: RedisServer
) -> None:  # type: ignore[no-untyped-def]
    config = hooked(receiver)
    config["server"] = {"backend": redis_server.url}
    a, b = serve_together(serve, config, config)
    clients = [await connect(node) for node in (a, b, a, b, a, b)]
    # everyone joins at once, on both nodes
    joined = await asyncio.gather(*(c.call("join-room", {"room": "shared"}) for c in clients))
    assert all(r["ok"] for r in joined)
    await receiver.wait(lambda: len(receiver.events("member.added")) == 6)
    # then everyone leaves at once: half by leave-room, half by disconnecting
    await asyncio.gather(
        *(c.call("leave-room", {"room": "shared"}) for c in clients[:3]),
        *(c.disconnect() for c in clients[3:]),
    )
    await receiver.wait(lambda: len(receiver.events("member.removed")) == 6)
    await receiver.wait(lambda: len(receiver.events("room.vacated")) >= 1)
    await asyncio.sleep(0.5)  # a second notice from the other node would have come by now
    assert len(receiver.events("room.occupied")) == 1, receiver.events()
    assert len(receiver.events("room.vacated")) == 1, receiver.events()
    nodes = {e["node"] for e in receiver.events("member.added")}
    assert len(nodes) == 2, "each node sends its own members' events"
    assert all(receiver.verified)
    # the room can be occupied again
    again = await connect(b)
    assert (await again.call("join-room", {"room": "shared"}))["ok"]
    await receiver.wait(lambda: len(receiver.events("room.occupied")) == 2)


def test_settings_are_checked_at_start_up(tmp_path: Path) -> None:
    from plugbus.core import ConfigError, load_config, load_plugins

    def fails(settings: dict[str, Any]) -> str:
        path = tmp_path / "config.yaml"
        path.write_text(
            json.dumps(
                {
                    "plugins": {
                        "builtins": ["rooms", "webhooks"],
                        "entry_points": False,
                        "settings": {"webhooks": settings},
                    }
                }
            )
        )
        with pytest.raises(ConfigError) as err:
            load_plugins(load_config(path))
        return str(err.value)

    assert "a secret is needed" in fails({"urls": ["http://127.0.0.1:9/x"]})
    assert "plugins.settings.webhooks.urls" in fails({"urls": ["not a url"], "secret": "s"})
    assert "urls[0]: URL scheme should be 'http' or 'https'" in fails(
        {"urls": ["ftp://example.com/x"], "secret": "s"}
    )
    assert "plugins.settings.webhooks.events" in fails({"events": ["room.exploded"]})
    assert "plugins.settings.webhooks.queue_size" in fails({"queue_size": 0})
    assert "top-secret-value" not in fails(
        {"urls": ["http://127.0.0.1:9/x"], "secret": "top-secret-value", "timeout_s": -1}
    )
