"""The REST door: health, plugin introspection, OpenAPI, and events sent as a server."""

from __future__ import annotations

import re

import httpx


async def test_health_counts_connections_and_names_plugins(default_server, connect):
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        before = (await http.get("/health")).json()
        await connect(default_server, wait_welcome=True)
        after = (await http.get("/health")).json()
    assert before["status"] == "ok" and before["server"] == "plugbus"
    assert before["plugins"] == ["auth", "welcome", "rooms", "relay", "moderation"]
    assert after["connections"] == before["connections"] + 1


async def test_plugins_lists_source_version_and_hooks(default_server):
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        plugins = (await http.get("/plugins")).json()
    relay = next(p for p in plugins if p["name"] == "relay")
    assert relay["source"] == "builtin"
    assert relay["version"] == "0.1.0"
    assert relay["target"] == "plugbus.plugins.relay:RelayPlugin"
    assert relay["hooks"] == ["plugbus_handle_event", "plugbus_register_events", "plugbus_routes"]


async def test_openapi_documents_plugin_routes_with_their_models(default_server):
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        spec = (await http.get("/openapi.json")).json()
        docs = await http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    post = spec["paths"]["/rooms/{room}/messages"]["post"]
    assert post["tags"] == ["relay"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/RoomMessage"
    )
    assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/Delivered"
    )
    assert [p["name"] for p in post["parameters"]] == ["room"]
    assert {"/health", "/plugins", "/events/{event}"} <= set(spec["paths"])


async def test_events_door_runs_the_same_pipeline_as_sockets(default_server, connect):
    member = await connect(default_server, wait_welcome=True)
    await member.call("join-room", {"room": "generic"})
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        resp = await http.post(
            "/events/send-message", json={"message": "via events", "roomID": "generic"}
        )
    body = resp.json()
    assert body == {
        "ok": True,
        "data": {"id": body["data"]["id"], "room": "generic", "recipients": 1},
    }
    assert re.fullmatch(r"[0-9a-f]{32}", body["data"]["id"])
    assert await member.wait_for("receive-message") == ["via events"]


async def test_cors_preflight_allows_the_configured_methods(default_server):
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        resp = await http.options(
            "/rooms/r/messages",
            headers={"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST"},
        )
        assert resp.status_code == 200
        assert resp.headers["access-control-allow-origin"] in ("*", "http://localhost:5173")
        assert "POST" in resp.headers["access-control-allow-methods"]
        poll = await http.get(
            "/socket.io/",
            params={"EIO": "4", "transport": "polling"},
            headers={"Origin": "http://localhost:5173"},
        )
        assert poll.status_code == 200
        assert poll.headers["access-control-allow-origin"] == "http://localhost:5173"
