"""The admin view (issue #14 item 4) in a real browser: Debian's chromium driven by Playwright,
against a server with API keys and live clients; a screenshot is kept as a test artifact."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ARTIFACTS, Server, assert_problem
from test_browser_chat import CHROMIUM, CHROMIUM_ARGS

ADMIN_KEY = "admin-view-key-6e0b21"
READ_KEY = "read-only-key-1f9c3d"


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    assert Path(CHROMIUM).exists(), "chromium is not installed: scripts/test.sh installs it"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        await browser.close()


def keyed_config() -> dict:
    return {
        "plugins": {
            "settings": {
                "auth": {
                    "api_keys": [
                        {"name": "ops", "key": ADMIN_KEY, "scopes": ["admin"]},
                        {"name": "dash", "key": READ_KEY, "scopes": ["read"]},
                    ]
                },
                "moderation": {"blocked_words": ["darn"]},
            }
        }
    }


async def test_connections_lists_this_nodes_connections_for_admins_only(serve, connect) -> None:  # type: ignore[no-untyped-def]
    server: Server = serve(keyed_config())
    ws = await connect(server, transports=["websocket"], auth={"user": "zed"})
    poll = await connect(server, transports=["polling"])
    await ws.call("join-room", {"room": "lobby"})
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        assert_problem(await http.get("/connections"), 401, "unauthorized")
        read_only = await http.get("/connections", headers={"Authorization": f"Bearer {READ_KEY}"})
        assert_problem(read_only, 403, "insufficient_scope")
        listed = await http.get("/connections", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert listed.status_code == 200
    body = listed.json()
    assert body["count"] == 2
    by_sid = {c["sid"]: c for c in body["connections"]}
    zed = by_sid[ws.sio.get_sid("/")]
    assert zed["user_id"] == "zed" and zed["transport"] == "websocket"
    assert zed["rooms"] == ["lobby"] and zed["namespace"] == "/"
    assert by_sid[poll.sio.get_sid("/")]["transport"] == "polling"


async def test_the_admin_page_shows_the_node_in_chromium(
    serve, connect, chromium, record_artifact
) -> None:  # type: ignore[no-untyped-def]
    server: Server = serve(keyed_config())
    zed = await connect(server, transports=["websocket"], auth={"user": "zed"})
    amy = await connect(server, transports=["polling"], auth={"user": "amy"})
    await zed.call("join-room", {"room": "lobby"})
    await amy.call("join-room", {"room": "lobby"})
    refused = await zed.call("send-message", {"message": "darn it", "roomID": "lobby"})
    assert refused["error"]["code"] == "message_rejected"

    context = await chromium.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda err: page_errors.append(str(err)))
    response = await page.goto(server.url + "/admin")
    assert response is not None and response.status == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]
    # no key yet: the page asks for one, and shows nothing
    await page.wait_for_selector('#state[data-state="needs-key"]')
    assert await page.is_visible("#key-form")
    await page.fill("#key", READ_KEY)
    await page.click("#key-save")
    await page.wait_for_selector("#key-error >> text=admin")  # a read key is not enough
    await page.fill("#key", ADMIN_KEY)
    await page.click("#key-save")
    await page.wait_for_selector('#state[data-state="live"]')
    assert not await page.is_visible("#key-form")

    assert await page.text_content("#phase") == "ready"
    assert "2 connections" in (await page.text_content("#counters") or "")
    connections = await page.inner_text("#connections")
    assert zed.sio.get_sid("/") in connections and amy.sio.get_sid("/") in connections
    assert "zed" in connections and "polling" in connections and "websocket" in connections
    rooms = await page.inner_text("#rooms")
    assert "lobby" in rooms and "2" in rooms
    await page.click("#rooms tr >> text=lobby")
    await page.wait_for_selector("#members-title >> text=Members of lobby")
    members = await page.inner_text("#members")
    assert "zed" in members and "amy" in members
    plugins = await page.inner_text("#plugins")
    assert "moderation" in plugins and "plugbus_moderate" in plugins
    modlog = await page.inner_text("#modlog")
    assert "blocked_words" in modlog and "refuse" in modlog and "zed" in modlog
    # live: a client that leaves disappears at the next refresh
    await amy.sio.disconnect()
    deadline = time.monotonic() + 6
    while "amy" in await page.inner_text("#connections"):
        assert time.monotonic() < deadline, "the page did not refresh"
        await asyncio.sleep(0.2)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "admin-view.png"
    await page.screenshot(path=str(shot), full_page=True)
    record_artifact(shot)
    assert page_errors == []
    await context.close()


async def test_the_page_can_be_left_out(serve) -> None:  # type: ignore[no-untyped-def]
    server: Server = serve({"server": {"admin_page": False}})
    assert httpx.get(server.url + "/admin").status_code == 404
    assert httpx.get(server.url + "/connections").status_code == 200  # REST open: no keys
