"""The reliability suite of issue #15: generated input against a real server, bounded in time.

* schemathesis over ``/openapi.json`` — with no API keys, and with keys (admin, publish-only):
  no 5xx, every error is problem+json in plugbus's shape, and every status is one the
  document lists for that operation;
* hypothesis over every registered client event, through both doors (Socket.IO with an ack,
  and ``POST /events/{event}``): adversarial payloads — lone surrogates, huge numbers, deep
  nesting, wrong types, unknown fields — get the ack or the error shape, never
  ``internal_error``, while a canary in another room keeps receiving, promptly.

Each test runs a fixed number of examples (``max_examples``) with no database, so a run costs
the same every time and stays well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import socketio
from conftest import retire, start_server
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

ADMIN_KEY = "fuzz-admin-key-0c5b"
PUBLISH_KEY = "fuzz-publish-key-7a21"
KEYS = [
    {"name": "ops", "key": ADMIN_KEY, "scopes": ["admin"]},
    {"name": "backend", "key": PUBLISH_KEY, "scopes": ["publish"]},
]
PROBLEM_MEMBERS = {"type", "title", "status", "detail", "instance", "code", "details"}
# No shrinking: a failure is reported as generated, and a run's cost stays bounded (shrinking
# an example that waits for a missing ack took minutes).
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


# -- REST: schemathesis over the OpenAPI document ------------------------------------------------


@pytest.fixture(scope="module")
def rest_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One server with REST open, one with API keys (rate limits off, so that every generated
    request reaches its route rather than a 429)."""
    no_limits = {"server": {"limits": {"rest_publish_per_key": 0, "rest_publish_per_address": 0}}}
    open_server = start_server(tmp_path_factory.mktemp("fuzz-open"), no_limits)
    keyed = start_server(
        tmp_path_factory.mktemp("fuzz-keys"),
        {**no_limits, "plugins": {"settings": {"auth": {"api_keys": KEYS}}}},
    )
    yield {"open": open_server, "keys": keyed}
    retire(open_server, keyed)


def check_response(case: Any, response: Any) -> None:
    """No 5xx; the status is documented for the operation; errors are plugbus problems."""
    where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    assert response.status_code < 500, where
    documented = case.operation.definition.raw["responses"]
    assert str(response.status_code) in documented, f"undocumented status: {where}"
    if response.status_code >= 400:
        content_type = {k.lower(): v for k, v in response.headers.items()}.get("content-type", [""])
        assert content_type[0].startswith("application/problem+json"), where
        body = response.json()
        assert set(body) >= PROBLEM_MEMBERS, where
        assert body["status"] == response.status_code, where
        assert body["code"] != "internal_error", where


@pytest.mark.parametrize(
    "door,key",
    [("open", None), ("keys", ADMIN_KEY), ("keys", PUBLISH_KEY)],
    ids=["no-keys", "admin-key", "publish-key"],
)
def test_schemathesis_finds_no_5xx_and_only_documented_problems(rest_servers, door, key):
    server = rest_servers[door]
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    seen: set[int] = set()

    @FUZZ
    @given(
        case=schema.as_strategy(generation_mode=GenerationMode.POSITIVE)
        | schema.as_strategy(generation_mode=GenerationMode.NEGATIVE)
    )
    def fuzz(case: Any) -> None:
        # case.headers may carry a generated Authorization: the key under test wins
        response = case.call(base_url=server.url, headers=headers, timeout=10)
        seen.add(response.status_code)
        check_response(case, response)

    fuzz()
    assert "Traceback" not in server.log()
    # the run reached past authentication: successes and validation errors were both seen
    assert any(200 <= s < 300 for s in seen) and 422 in seen, seen


def test_a_request_without_a_key_is_a_documented_401(rest_servers):
    """The keyed server refuses a keyless caller on every scoped route the same way."""
    server = rest_servers["keys"]
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")

    @settings(FUZZ, max_examples=40)
    @given(case=schema.as_strategy())
    def fuzz(case: Any) -> None:
        case.headers = {
            k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"
        }
        response = case.call(base_url=server.url, timeout=10)
        check_response(case, response)
        if case.operation.definition.raw.get("security"):
            assert response.status_code in (401, 422), response.text

    fuzz()


# -- events: hypothesis through both doors, with a canary ------------------------------------------


class LoopThread:
    """An event loop in a thread: hypothesis drives a synchronous test, and the Socket.IO
    clients live in this loop across its examples."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 15) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


#: Values that broke or could break a parser, an encoder or a handler.
SURROGATES = st.sampled_from(["\ud800", "\udfff", "a\udbffb", "\ud83d", "ok\udc00"])
# Integers up to 61 digits: python-engineio's decoder, which the wire falls back to past 64
# bits, refuses more than 100 digits, and what it refuses is the wire's (malformed frames).
HUGE_NUMBERS = st.one_of(
    st.integers(min_value=-(2**200), max_value=2**200),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 1e308, -1e308, 5e-324]),
)
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    HUGE_NUMBERS,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    SURROGATES,
    st.text(alphabet="\u202e\u200b\ufeff/*?[", max_size=8),
)


def deep(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"d": value}
    return value


VALUES = st.one_of(
    st.recursive(
        LEAVES,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    ),
    st.integers(min_value=100, max_value=400).map(deep),
)


def payloads(fields: list[str]) -> st.SearchStrategy[Any]:
    """Objects with the event's own fields (and sometimes others) holding any value, or no
    object at all."""
    keys = st.sampled_from(fields) if fields else st.text(max_size=8)
    return st.one_of(
        st.dictionaries(st.one_of(keys, st.text(max_size=8), SURROGATES), VALUES, max_size=4),
        st.fixed_dictionaries(dict.fromkeys(fields, VALUES)) if fields else st.just({}),
        VALUES,
    )


@pytest.fixture(scope="module")
def event_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = start_server(
        tmp_path_factory.mktemp("fuzz-events"),
        {
            "server": {
                "limits": {
                    "events_per_second": 0,
                    "rest_publish_per_key": 0,
                    "rest_publish_per_address": 0,
                }
            }
        },
    )
    yield server
    retire(server)


def event_fields(server: Any) -> dict[str, list[str]]:
    """Every registered client event with its payload's field names, from the server itself."""
    with httpx.Client(base_url=server.url, timeout=10) as http:
        known = http.get("/events/-/schema").json()["details"]["known"]
        out = {}
        for name in known:
            schema = http.get(f"/events/{name}/schema").json()
            if schema["direction"] == "client-to-server":
                out[name] = sorted(schema["payload"].get("properties", {}))
    return out


def test_every_event_through_both_doors_gets_an_ack_or_the_error_shape(event_server):
    server = event_server
    fields = event_fields(server)
    assert {"join-room", "send-message", "room-members", "broadcast"} <= set(fields)
    loop = LoopThread()
    sender = socketio.AsyncClient(reconnection=False)
    canary = socketio.AsyncClient(reconnection=False)
    pinger = socketio.AsyncClient(reconnection=False)
    canary_got: dict[int, float] = {}

    async def on_message(data: Any = None) -> None:
        if isinstance(data, dict) and isinstance(data.get("canary"), int):
            canary_got[data["canary"]] = time.monotonic()

    canary.on("receive-message", on_message)
    sent_at: dict[int, float] = {}

    async def setup() -> None:
        for client in (sender, canary, pinger):
            await client.connect(server.url, wait_timeout=5)
        assert (await canary.call("join-room", {"room": "canary-room"}, timeout=5))["ok"]

    async def ping(seq: int) -> None:
        sent_at[seq] = time.monotonic()
        ack = await pinger.call(
            "send-message", {"message": {"canary": seq}, "roomID": "canary-room"}, timeout=5
        )
        assert ack["ok"], ack

    loop.run(setup())
    http = httpx.Client(base_url=server.url, timeout=10)
    examples = 0

    @settings(FUZZ, max_examples=200)
    @given(data=st.data())
    def fuzz(data: Any) -> None:
        nonlocal examples
        name = data.draw(st.sampled_from(sorted(fields)), label="event")
        payload = data.draw(payloads(fields[name]), label="payload")
        ack = loop.run(sender.call(name, payload, timeout=5))
        assert isinstance(ack, dict) and isinstance(ack.get("ok"), bool), ack
        if ack["ok"]:
            assert "data" in ack, ack
        else:
            assert set(ack["error"]) == {"code", "message", "details"}, ack
            assert ack["error"]["code"] != "internal_error", (name, payload, ack)
        body = json.dumps(payload)  # the stdlib writes surrogates and huge numbers as they are
        resp = http.post(
            f"/events/{name}", content=body, headers={"content-type": "application/json"}
        )
        assert resp.status_code < 500, (name, payload, resp.text)
        if resp.status_code >= 400:
            assert resp.headers["content-type"].startswith("application/problem+json"), resp.text
            assert resp.json()["code"] != "internal_error", resp.text
        examples += 1
        if examples % 20 == 0:
            loop.run(ping(examples))

    try:
        fuzz()
        loop.run(ping(-1))
        deadline = time.monotonic() + 5
        while len(canary_got) < len(sent_at) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(canary_got) == set(sent_at), (sorted(sent_at), sorted(canary_got))
        latencies = [canary_got[s] - sent_at[s] for s in sent_at]
        assert max(latencies) < 1.0, latencies
        assert sender.connected and canary.connected
    finally:
        http.close()

        async def teardown() -> None:
            for client in (sender, canary, pinger):
                if client.connected:
                    await client.disconnect()

        loop.run(teardown())
        loop.stop()
    assert examples >= 100
    assert "Traceback" not in server.log()


def test_bodies_beyond_the_json_parsers_reach_are_clear_rest_errors(event_server):
    """Nesting deeper than a JSON parser recurses, and an integer longer than Python converts
    (4,300 digits), are refused as 4xx problems at both REST entrances."""
    deep_text = "[" * 100_000 + "]" * 100_000
    bodies = [
        '{"message": ' + deep_text + ', "roomID": "r"}',
        '{"message": ' + "[" * 1_000 + "]" * 1_000 + ', "roomID": "r"}',
        '{"message": ' + "9" * 5_000 + ', "roomID": "r"}',
    ]
    with httpx.Client(base_url=event_server.url, timeout=10) as http:
        for text in bodies:
            for path in ("/events/send-message", "/rooms/r/messages"):
                resp = http.post(path, content=text, headers={"content-type": "application/json"})
                assert 400 <= resp.status_code < 500, (path, text[:40], resp.text)
                assert resp.headers["content-type"].startswith("application/problem+json")
