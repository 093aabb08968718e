"""The welcome plugin: templated greetings on connect, per-room greetings on join, greetings
changed at run time over REST, and refusals of bad templates — real servers, real clients."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from conftest import assert_problem, retire, settle

from plugbus import ConfigError

TESTS = Path(__file__).resolve().parent
DEFAULT_GREETINGS = {
    "greeting": "Welcome to server",
    "room_greetings": {},
    "default_room_greeting": "",
}
TEMPLATED = {
    "server": {"name": "bus-1"},
    "plugins": {
        "modules": {"ident": "fixture_plugins.claimed_identity:IdentityPlugin"},
        "settings": {
            "welcome": {
                "greeting": "Hi {user}, this is {server} ({sid}) {{literally}}",
                "room_greetings": {"lobby": "Welcome to {room}, {user}!", "quiet": ""},
                "default_room_greeting": "You joined {room} on {server} as {sid}",
                "room_event": "room-welcome",
            }
        },
    },
}


@pytest.fixture(scope="module")
def templated_server(tmp_path_factory):
    """Templated greetings, room greetings as ``room-welcome``, and identities."""
    from conftest import start_server

    server = start_server(
        tmp_path_factory.mktemp("templated"), TEMPLATED, env={"PYTHONPATH": str(TESTS)}
    )
    yield server
    retire(server)


# -- the connection greeting ------------------------------------------------------------------


async def test_default_greeting_is_the_seeds_and_joins_add_none(default_server, connect):
    client = await connect(default_server)
    assert await client.wait_for("welcome") == ["Welcome to server"]
    assert (await client.call("join-room", {"room": "no-greeting"}))["ok"] is True
    await settle(default_server, client)
    assert client.received("welcome") == ["Welcome to server"]


async def test_greeting_template_without_identity_uses_the_sid(templated_server, connect):
    client = await connect(templated_server)
    sid = client.sio.get_sid()
    assert await client.wait_for("welcome") == [f"Hi {sid}, this is bus-1 ({sid}) {{literally}}"]


@pytest.mark.parametrize(
    ("auth", "user"),
    [({"user_id": "u-1", "name": "Ada"}, "Ada"), ({"user_id": "u-2"}, "u-2")],
    ids=["name", "user-id"],
)
async def test_greeting_template_names_the_user(templated_server, connect, auth, user):
    client = await connect(templated_server, auth=auth)
    sid = client.sio.get_sid()
    assert await client.wait_for("welcome") == [f"Hi {user}, this is bus-1 ({sid}) {{literally}}"]


@pytest.mark.parametrize(
    ("settings", "key", "fragment"),
    [
        (
            {"greeting": "Hi {nme}"},
            "plugins.settings.welcome.greeting",
            "unknown template variable {nme}",
        ),
        (
            {"greeting": "Hi {room}"},
            "plugins.settings.welcome.greeting",
            "unknown template variable {room}",
        ),
        ({"greeting": "Hi {"}, "plugins.settings.welcome.greeting", "not a valid template"),
        (
            {"greeting": "Hi {sid!r}"},
            "plugins.settings.welcome.greeting",
            "format spec or conversion",
        ),
        (
            {"greeting": "Hi {sid.__class__}"},
            "plugins.settings.welcome.greeting",
            "unknown template variable",
        ),
        (
            {"room_greetings": {"lobby": "In {rom}"}},
            "plugins.settings.welcome.room_greetings.lobby",
            "unknown template variable {rom}",
        ),
        (
            {"default_room_greeting": "{}"},
            "plugins.settings.welcome.default_room_greeting",
            "unknown template variable {}",
        ),
        ({"room_event": ""}, "plugins.settings.welcome.room_event", "at least 1 character"),
    ],
    ids=[
        "typo",
        "room-in-greeting",
        "stray-brace",
        "conversion",
        "attribute",
        "room-greeting",
        "default-room-greeting",
        "empty-room-event",
    ],
)
async def test_bad_templates_stop_start_up_naming_the_key(plugbus_server, settings, key, fragment):
    with pytest.raises(ConfigError) as info:
        await plugbus_server(settings={"welcome": settings})
    message = str(info.value)
    assert "plugin 'welcome'" in message and key in message
    assert fragment in message


# -- room greetings ---------------------------------------------------------------------------


async def test_room_greetings_are_sent_to_the_joiner_after_it_joined(templated_server, connect):
    ada = await connect(templated_server, auth={"user_id": "u-ada", "name": "Ada"})
    other = await connect(templated_server)
    await ada.wait_for("welcome")
    await other.call("join-room", {"room": "lobby"})
    sid = ada.sio.get_sid()
    assert (await ada.call("join-room", {"room": "lobby"}))["data"]["joined"] is True
    assert await ada.wait_for("room-welcome") == ["Welcome to lobby, Ada!"]
    assert (await ada.call("join-room", {"room": "elsewhere"}))["ok"] is True
    assert (await ada.wait_for("room-welcome", count=2))[
        1
    ] == f"You joined elsewhere on bus-1 as {sid}"
    # An empty template means no greeting for that room; a repeated join greets nobody again.
    assert (await ada.call("join-room", {"room": "quiet"}))["data"]["joined"] is True
    assert (await ada.call("join-room", {"room": "lobby"}))["data"]["joined"] is False
    await settle(templated_server, ada, other)
    assert len(ada.received("room-welcome")) == 2
    # Only the joiner is greeted, and only as room_event.
    assert other.received("room-welcome") == [f"Welcome to lobby, {other.sio.get_sid()}!"]
    assert len(ada.received("welcome")) == 1


async def test_server_side_join_over_rest_sends_the_room_greeting(templated_server, connect):
    client = await connect(templated_server, auth={"user_id": "u-rest"})
    async with httpx.AsyncClient(base_url=templated_server.url) as http:
        assert (await http.put(f"/rooms/lobby/members/{client.sio.get_sid()}")).json()[
            "joined"
        ] is True
    assert await client.wait_for("room-welcome") == ["Welcome to lobby, u-rest!"]


# -- GET and PUT /welcome ---------------------------------------------------------------------


async def test_get_welcome_shows_the_greetings_in_use(default_server, templated_server):
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        assert (await http.get("/welcome")).json() == DEFAULT_GREETINGS
    async with httpx.AsyncClient(base_url=templated_server.url) as http:
        assert (await http.get("/welcome")).json() == {
            key: TEMPLATED["plugins"]["settings"]["welcome"][key] for key in DEFAULT_GREETINGS
        }


async def test_put_welcome_changes_greetings_at_run_time(plugbus_server, connect):
    server = await plugbus_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        resp = await http.put("/welcome", json={"greeting": "Hello {user} from {server}"})
        assert resp.status_code == 200
        assert resp.json() == {**DEFAULT_GREETINGS, "greeting": "Hello {user} from {server}"}
        first = await connect(server)
        assert await first.wait_for("welcome") == [f"Hello {first.sio.get_sid()} from plugbus"]

        resp = await http.put(
            "/welcome",
            json={
                "room_greetings": {"lobby": "In {room}"},
                "default_room_greeting": "Joined {room}",
            },
        )
        assert resp.json() == {
            "greeting": "Hello {user} from {server}",
            "room_greetings": {"lobby": "In {room}"},
            "default_room_greeting": "Joined {room}",
        }
        await first.call("join-room", {"room": "lobby"})
        await first.call("join-room", {"room": "hall"})
        assert await first.wait_for("welcome", count=3) == [
            f"Hello {first.sio.get_sid()} from plugbus",
            "In lobby",
            "Joined hall",
        ]

        # Keys left out or null stay; room_greetings is replaced as a whole; "" switches off.
        resp = await http.put(
            "/welcome",
            json={
                "greeting": None,
                "room_greetings": {"hall": "Hall!"},
                "default_room_greeting": "",
            },
        )
        assert resp.json() == {
            "greeting": "Hello {user} from {server}",
            "room_greetings": {"hall": "Hall!"},
            "default_room_greeting": "",
        }
        assert (await http.get("/welcome")).json() == resp.json()
        await first.call("leave-room", {"room": "lobby"})
        await first.call("join-room", {"room": "lobby"})
        await settle(server, first)
        assert len(first.received("welcome")) == 3


@pytest.mark.parametrize(
    ("body", "loc", "fragment"),
    [
        ({"greeting": "Hi {nme}"}, "body.greeting", "unknown template variable {nme}"),
        ({"room_greetings": {"lobby": "{user:>9}"}}, "body.room_greetings.lobby", "format spec"),
        (
            {"default_room_greeting": "In {room"},
            "body.default_room_greeting",
            "not a valid template",
        ),
        ({"greting": "typo"}, "body.greting", "Extra inputs are not permitted"),
        ({"greeting": 5}, "body.greeting", "valid string"),
    ],
    ids=["unknown-variable", "format-spec", "stray-brace", "unknown-key", "wrong-type"],
)
async def test_put_welcome_refuses_bad_templates_and_changes_nothing(
    default_server, body, loc, fragment
):
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        problem = assert_problem(
            await http.put("/welcome", json={"greeting": "fine {sid}", **body}),
            422,
            "invalid_payload",
        )
        assert [e["loc"] for e in problem["details"]["errors"]] == [loc]
        assert fragment in problem["details"]["errors"][0]["message"]
        assert loc in problem["detail"]
        assert (await http.get("/welcome")).json() == DEFAULT_GREETINGS


async def test_openapi_documents_the_welcome_routes_with_models(default_server):
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        spec = (await http.get("/openapi.json")).json()
    get, put = spec["paths"]["/welcome"]["get"], spec["paths"]["/welcome"]["put"]
    assert get["tags"] == put["tags"] == ["welcome"]
    ok = get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/Greetings")
    assert put["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/GreetingsUpdate"
    )
    assert set(spec["components"]["schemas"]["GreetingsUpdate"]["properties"]) == set(
        DEFAULT_GREETINGS
    )


async def test_rest_scopes_reading_needs_read_and_changing_admin(plugbus_server):
    keys = [
        {"name": "reader", "key": "read-key", "scopes": ["read"]},
        {"name": "ops", "key": "admin-key", "scopes": ["admin"]},
    ]
    server = await plugbus_server(settings={"auth": {"api_keys": keys}})
    reader, ops = ({"authorization": f"Bearer {key}"} for key in ("read-key", "admin-key"))
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/welcome")).status_code == 401
        assert (await http.get("/welcome", headers=reader)).json() == DEFAULT_GREETINGS
        body = assert_problem(
            await http.put("/welcome", json={"greeting": "x"}, headers=reader),
            403,
            "insufficient_scope",
        )
        assert body["details"]["required"] == "admin"
        assert (await http.put("/welcome", json={"greeting": "x"}, headers=ops)).json()[
            "greeting"
        ] == "x"


async def test_event_contract_declares_the_greeting_events(default_server, templated_server):
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        doc = (await http.get("/asyncapi.json")).json()
    assert doc["operations"]["send.welcome"]["action"] == "send"
    assert doc["components"]["messages"]["welcome"]["payload"] == {"type": "string"}
    async with httpx.AsyncClient(base_url=templated_server.url) as http:
        ops = (await http.get("/asyncapi.json")).json()["operations"]
    assert "send.welcome" in ops and "send.room-welcome" in ops


# -- switched off -----------------------------------------------------------------------------


async def test_without_welcome_nobody_is_greeted_and_its_routes_are_gone(plugbus_server, connect):
    server = await plugbus_server(
        builtins=["rooms", "relay", "moderation"],
        settings={"welcome": {"default_room_greeting": "In {room}"}},
    )
    client = await connect(server)
    ack = await client.call("join-room", {"room": "r"})
    assert ack["data"] == {"room": "r", "joined": True, "rooms": ["r"]}
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert_problem(await http.get("/welcome"), 404, "not_found")
        assert_problem(await http.put("/welcome", json={"greeting": "x"}), 404, "not_found")
        assert "welcome" not in [p["name"] for p in (await http.get("/plugins")).json()]
    await settle(server, client)
    assert client.received("welcome") == []
