"""Room history over both doors: pages, cursors, join rules, removal, limits."""

from __future__ import annotations

import httpx
from conftest import assert_problem, assert_refused

SAM_TOKEN = "sam-token-0123456789"
BOB_TOKEN = "bob-token-0123456789"
CLOSED = {
    "plugins": {
        "settings": {
            "auth": {
                "mode": "static",
                "tokens": [
                    {"token": SAM_TOKEN, "user_id": "sam", "roles": ["staff"]},
                    {"token": BOB_TOKEN, "user_id": "bob"},
                ],
                "rooms_default": "open",
                "rooms": [{"pattern": "staff-*", "roles": ["staff"]}],
            }
        }
    }
}


async def post(http: httpx.AsyncClient, room: str, message: object) -> None:
    resp = await http.post(f"/rooms/{room}/messages", json={"message": message})
    assert resp.status_code == 200, resp.text


async def test_rest_pages_through_a_rooms_history_with_a_cursor(serve):
    server = serve({"plugins": {"settings": {"rooms": {"history_page_max": 3}}}})
    async with httpx.AsyncClient(base_url=server.url) as http:
        for i in range(5):
            await post(http, "h", f"m{i}")
        await post(http, "other", "elsewhere")
        await post(http, "h", {"structured": True})
        first = (await http.get("/rooms/h/messages", params={"limit": 50})).json()
        assert [m["args"] for m in first["messages"]] == [["m0"], ["m1"], ["m2"]]  # page max 3
        assert first["room"] == "h" and first["next"] == first["messages"][-1]["id"]
        assert {m["event"] for m in first["messages"]} == {"receive-message"}
        second = (await http.get("/rooms/h/messages", params={"after": first["next"]})).json()
        assert [m["args"] for m in second["messages"]] == [["m3"], ["m4"], [{"structured": True}]]
        assert second["next"] is None  # the last page
        last = second["messages"][-1]["id"]
        third = (await http.get("/rooms/h/messages", params={"after": last})).json()
        assert third == {"room": "h", "messages": [], "next": None}
        ids = [m["id"] for m in first["messages"] + second["messages"]]
        keys = [tuple(map(int, i.split("-"))) for i in ids]
        assert keys == sorted(keys) and len(set(keys)) == 6
        assert all(m["ts"].endswith("Z") for m in first["messages"])
        bad = await http.get("/rooms/h/messages", params={"after": "yesterday"})
        assert_problem(bad, 422, "invalid_payload")
        assert (await http.get("/rooms/empty/messages")).json()["messages"] == []


async def test_the_socket_event_answers_the_same_page_and_follows_join_rules(serve, connect):
    server = serve(CLOSED)
    client = await connect(server, auth={"token": BOB_TOKEN})
    async with httpx.AsyncClient(base_url=server.url) as http:
        await post(http, "lobby", "hello")
        await post(http, "staff-room", "secret")
        rest = (await http.get("/rooms/lobby/messages")).json()
    ack = await client.call("room-history", {"room": "lobby"})
    assert ack == {"ok": True, "data": rest}, ack
    refused = await client.call("room-history", {"room": "staff-room"})
    assert_refused(refused, "forbidden_room")
    staff = await connect(server, auth={"token": SAM_TOKEN})
    ok = await staff.call("room-history", {"room": "staff-room", "limit": 1})
    assert [m["args"] for m in ok["data"]["messages"]] == [["secret"]]


async def test_a_removed_message_is_gone_from_history(serve):
    server = serve()
    async with httpx.AsyncClient(base_url=server.url) as http:
        for text in ("keep", "spam", "keep too"):
            await post(http, "mod", text)
        page = (await http.get("/rooms/mod/messages")).json()
        spam = page["messages"][1]["id"]
        resp = await http.delete(f"/rooms/mod/messages/{spam}")
        assert resp.json() == {"room": "mod", "id": spam, "removed": True}
        assert_problem(await http.delete(f"/rooms/mod/messages/{spam}"), 404, "not_found")
        after = (await http.get("/rooms/mod/messages")).json()
        assert [m["args"][0] for m in after["messages"]] == ["keep", "keep too"]


async def test_history_limits_per_room(serve):
    server = serve(
        {
            "server": {
                "history": {"rooms": {"tiny": {"max_messages": 2}, "off-*": {"max_messages": 0}}}
            }
        }
    )
    async with httpx.AsyncClient(base_url=server.url) as http:
        for i in range(4):
            await post(http, "tiny", f"t{i}")
            await post(http, "off-topic", f"o{i}")
        tiny = (await http.get("/rooms/tiny/messages")).json()
        assert [m["args"][0] for m in tiny["messages"]] == ["t2", "t3"]
        assert (await http.get("/rooms/off-topic/messages")).json()["messages"] == []


async def test_history_is_shared_by_every_node(serve, redis_server):
    config = {"server": {"backend": redis_server.url}}
    a, b = serve(config), serve(config)
    async with httpx.AsyncClient() as http:
        assert (
            await http.post(f"{a.url}/rooms/both/messages", json={"message": "on A"})
        ).status_code == 200
        assert (
            await http.post(f"{b.url}/rooms/both/messages", json={"message": "on B"})
        ).status_code == 200
        pages = [(await http.get(f"{n.url}/rooms/both/messages")).json() for n in (a, b)]
    assert pages[0] == pages[1]
    assert [m["args"][0] for m in pages[0]["messages"]] == ["on A", "on B"]


async def test_entries_in_the_older_one_field_form_are_still_read(serve, redis_server, connect):
    # Streams and the feed written before entries had their five fields ("e": the whole event
    # as JSON) survive an upgrade in Redis: a node still delivers and pages them.
    import time

    from redis import asyncio as aioredis

    from plugbus.core.history import pack

    node = serve({"server": {"backend": redis_server.url}})
    client = await connect(node, wait_welcome=True)
    await client.call("join-room", {"room": "old"})
    raw = pack("/", "receive-message", ("written before", {"n": 1}), "old", "room", None)
    entry_id = f"{int(time.time() * 1000) + 1000}-1"  # after anything the node has delivered
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        await redis.xadd("plugbus:history:1:/:r:old", {"e": raw}, id=entry_id)
        await redis.xadd("plugbus:history:feed", {"e": raw}, id=entry_id)
    finally:
        await redis.aclose()
    # two arguments: the client records them as one list
    assert await client.wait_for("receive-message") == [["written before", {"n": 1}]]
    async with httpx.AsyncClient(base_url=node.url) as http:
        page = (await http.get("/rooms/old/messages")).json()
    assert [(m["id"], m["args"]) for m in page["messages"]] == [
        (entry_id, ["written before", {"n": 1}])
    ]
