"""A third-party plugin written from docs/plugins/ alone works: tests/fixture_plugins/polls.py
keeps shared state in its store, raises its own errors on both doors, has its list fields and
nested models moderated, checks room membership and runs text through moderation by hand —
in-process with the test kit, and on two real nodes sharing Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from plugbus.testing import PlugbusServerFactory

TESTS = Path(__file__).resolve().parent
POLLS = {"polls": "fixture_plugins.polls:PollsPlugin"}
MODERATION = {"moderation": {"blocked_words": ["darn"], "max_length": 20}}


@pytest.fixture(autouse=True)
def importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))


def poll(room: str = "lobby", **over: Any) -> dict[str, Any]:
    return {
        "room": room,
        "question": "tea?",
        "options": [{"label": "yes"}, {"label": "no", "note": "never"}],
        **over,
    }


async def test_a_plugins_error_has_its_code_and_status_on_both_doors(
    plugbus_server: PlugbusServerFactory,
) -> None:
    server = await plugbus_server(plugins=POLLS)
    ann = await server.client(transports=["websocket"])
    await ann.call("join-room", {"room": "lobby"})
    created = await ann.call("create-poll", poll())
    assert created["ok"] is True, created
    poll_id = created["data"]["id"]
    assert (await ann.call("vote", {"poll": poll_id, "option": 1}))["data"] == {"votes": 1}
    assert (await server.http.post("/events/close-poll", json={"poll": poll_id})).status_code == 200

    refused = await ann.call("vote", {"poll": poll_id, "option": 0})
    assert refused == {
        "ok": False,
        "error": {
            "code": "poll_closed",
            "message": "this poll is closed",
            "details": {"event": "vote", "poll": poll_id},
        },
    }
    over_rest = await server.http.post("/events/vote", json={"poll": poll_id, "option": 0})
    assert over_rest.status_code == 409
    assert over_rest.headers["content-type"].startswith("application/problem+json")
    body = over_rest.json()
    assert body["code"] == "poll_closed" and body["details"] == {"poll": poll_id}
    missing = await server.http.get("/polls/nope")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


async def test_room_membership_is_checked(plugbus_server: PlugbusServerFactory) -> None:
    server = await plugbus_server(plugins=POLLS)
    outsider = await server.client(transports=["websocket"])
    refused = await outsider.call("create-poll", poll("private"))
    assert refused["error"]["code"] == "not_allowed"
    assert refused["error"]["details"] == {"event": "create-poll", "room": "private"}


async def test_strings_inside_list_fields_and_nested_models_are_moderated(
    plugbus_server: PlugbusServerFactory,
) -> None:
    server = await plugbus_server(plugins=POLLS, settings=MODERATION)
    ann = await server.client(transports=["websocket"])
    await ann.call("join-room", {"room": "lobby"})
    blocked = await ann.call(
        "create-poll", poll(options=[{"label": "yes"}, {"label": "no", "note": "darn it"}])
    )
    assert blocked["error"]["code"] == "message_rejected"
    assert blocked["error"]["details"]["field"] == "options.1.note"
    too_long = await ann.call("create-poll", poll(options=[{"label": "x" * 21}, {"label": "y"}]))
    assert too_long["error"]["code"] == "message_rejected"
    assert too_long["error"]["details"]["field"] == "options.0.label"
    assert (await ann.call("create-poll", poll()))["ok"] is True


async def test_masking_reaches_into_a_list_item(plugbus_server: PlugbusServerFactory) -> None:
    settings = {
        "moderation": {
            "blocked_words": ["darn"],
            "rules": {"blocked_words": {"action": "mask"}},
        }
    }
    server = await plugbus_server(plugins=POLLS, settings=settings)
    ann = await server.client(transports=["websocket"])
    await ann.call("join-room", {"room": "lobby"})
    ack = await ann.call(
        "create-poll",
        poll(options=[{"label": "darn yes"}, {"label": "no", "note": "darn, darn"}]),
    )
    assert ack["ok"] is True, ack
    assert [o["label"] for o in ack["data"]["options"]] == ["**** yes", "no"]
    assert ack["data"]["options"][1]["note"] == "****, ****"


async def test_moderate_text_gives_the_decision(plugbus_server: PlugbusServerFactory) -> None:
    server = await plugbus_server(plugins=POLLS, settings=MODERATION)
    bus = server.bus
    assert (await bus.moderate_text("fine")).action == "pass"
    refused = await bus.moderate_text("darn")
    assert refused.action == "refuse" and refused.text is None
    assert refused.error is not None and refused.error.code == "message_rejected"
    assert (await bus.moderate_text("x" * 30)).action == "refuse"

    ann = await server.client(transports=["websocket"])
    await ann.call("join-room", {"room": "lobby"})
    poll_id = (await ann.call("create-poll", poll()))["data"]["id"]
    bad = await server.http.post(f"/polls/{poll_id}/question", params={"question": "darn?"})
    assert bad.status_code == 403 and bad.json()["code"] == "message_rejected"
    good = await server.http.post(f"/polls/{poll_id}/question", params={"question": "coffee?"})
    assert good.json()["question"] == "coffee?"


async def test_moderate_text_masks_and_drops(plugbus_server: PlugbusServerFactory) -> None:
    mask = {
        "moderation": {"blocked_words": ["darn"], "rules": {"blocked_words": {"action": "mask"}}}
    }
    server = await plugbus_server(plugins=POLLS, settings=mask)
    masked = await server.bus.moderate_text("oh darn")
    assert (masked.action, masked.text) == ("mask", "oh ****")
    drop = {
        "moderation": {"blocked_words": ["darn"], "rules": {"blocked_words": {"action": "drop"}}}
    }
    server = await plugbus_server(plugins=POLLS, settings=drop)
    dropped = await server.bus.moderate_text("oh darn")
    assert dropped.action == "drop" and dropped.text is None and "blocked" in dropped.reason


async def test_polls_work_across_two_nodes_with_redis(serve: Any, redis_server: Any) -> None:
    config = {
        "server": {"backend": redis_server.url},
        "plugins": {"modules": POLLS, "settings": MODERATION},
    }
    env = {"PYTHONPATH": str(TESTS)}
    a, b = serve(config, env=env), serve(config, env=env)
    async with httpx.AsyncClient(base_url=a.url) as on_a, httpx.AsyncClient(base_url=b.url) as on_b:
        created = (await on_a.post("/events/create-poll", json=poll())).json()
        poll_id = created["data"]["id"]
        assert (await on_b.post("/events/vote", json={"poll": poll_id, "option": 0})).json()[
            "data"
        ] == {"votes": 1}
        assert (await on_a.post("/events/vote", json={"poll": poll_id, "option": 0})).json()[
            "data"
        ] == {"votes": 2}
        assert (await on_b.get(f"/polls/{poll_id}")).json()["votes"] == [2, 0]
        await on_b.post("/events/close-poll", json={"poll": poll_id})
        closed = await on_a.post("/events/vote", json={"poll": poll_id, "option": 1})
        assert closed.status_code == 409 and closed.json()["code"] == "poll_closed"


async def test_strings_inside_a_structured_relay_message_are_moderated(
    plugbus_server: PlugbusServerFactory,
) -> None:
    server = await plugbus_server(settings=MODERATION)
    ann = await server.client(transports=["websocket"])
    await ann.call("join-room", {"room": "lobby"})
    sent = {"message": {"text": "oh darn", "n": 1}, "roomID": "lobby"}
    refused = await ann.call("send-message", sent)
    assert refused["error"]["code"] == "message_rejected"
    assert refused["error"]["details"]["field"] == "message.text"
    ok = await ann.call("send-message", {"message": {"text": "fine", "n": 1}, "roomID": "lobby"})
    assert ok["ok"] is True
