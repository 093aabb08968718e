"""The built-in chat page in a real browser: Debian's chromium, driven by Playwright."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from conftest import ARTIFACTS, ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright

    assert Path(CHROMIUM).exists(), "chromium is not installed: scripts/test.sh installs it"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        await browser.close()


async def open_chat(browser, server, name: str, room: str):
    context = await browser.new_context(viewport={"width": 800, "height": 700})
    page = await context.new_page()
    await page.goto(server.url + "/")
    await page.wait_for_selector('#state[data-state="connected"]')
    await page.fill("#name", name)
    await page.fill("#room", room)
    await page.click("#join")
    await page.wait_for_selector(f"#log li.system >> text=joined {room}")
    return page


async def say(page, text: str) -> None:
    await page.fill("#message", text)
    await page.click("#send")


async def test_two_browsers_chat_rest_escaping_and_refusals(
    plugbus_server, browser, record_artifact
):
    server = await plugbus_server(settings={"moderation": {"blocked_words": ["forbidden"]}})
    alice = await open_chat(browser, server, "alice", "lobby")
    bob = await open_chat(browser, server, "bob", "lobby")
    assert await alice.text_content("#log li.system") == "Welcome to server"

    await say(alice, "hi bob")
    await bob.wait_for_selector("#log li.message >> text=hi bob")
    assert await bob.text_content("#log li.message .who") == "alice: "
    await say(bob, "hi alice")
    await alice.wait_for_selector("#log li.message >> text=hi alice")

    async with httpx.AsyncClient(base_url=server.url) as http:
        resp = await http.post("/rooms/lobby/messages", json={"message": "from the back end"})
    assert resp.status_code == 200
    for page in (alice, bob):
        await page.wait_for_selector("#log li.message >> text=from the back end")

    html = '<b id="injected">bold</b><img src=x onerror="document.title=\'pwned\'">'
    await say(alice, html)
    await bob.wait_for_selector('#log li.message >> text=<b id="injected">')
    assert await bob.locator("#injected").count() == 0
    assert await bob.locator("#log img").count() == 0
    assert await bob.title() == "plugbus chat"
    assert html in await bob.inner_text("#log")

    await say(alice, "this is forbidden")
    refusal = await alice.wait_for_selector("#log li.refused")
    assert await refusal.text_content() == "refused: message contains a blocked word"
    await say(alice, "after the refusal")
    await bob.wait_for_selector("#log li.message >> text=after the refusal")
    assert "forbidden" not in await bob.inner_text("#log")

    shot = ARTIFACTS / "chat-page.png"
    await bob.screenshot(path=str(shot), full_page=True)
    record_artifact(shot)
    assert shot.stat().st_size > 10_000


async def test_chat_page_loads_socketio_client_from_plugbus_itself(default_server):
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        page = await http.get("/")
        script = await http.get("/static/socket.io.min.js")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="static/socket.io.min.js"></script>' in page.text
    assert "//cdn" not in page.text and "https://" not in page.text
    npm_file = (
        ROOT
        / "tests"
        / "interop"
        / "node_modules"
        / "socket.io-client"
        / "dist"
        / "socket.io.min.js"
    )
    assert script.status_code == 200
    assert script.content == npm_file.read_bytes(), (
        "api/static/socket.io.min.js differs from the pinned npm package"
    )


async def test_chat_page_can_be_switched_off(plugbus_server):
    server = await plugbus_server(config={"server": {"chat_page": False}})
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/")).status_code == 404
        assert (await http.get("/static/socket.io.min.js")).status_code == 404
        assert (await http.get("/health")).status_code == 200
