"""Who may connect, publish and join: tokens, JWTs, API keys, room rules and limits.

Every refusal is shown with a real client over a real server, with its message, and with
another client that keeps being served.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import jwt
import pytest
from conftest import refused_connect
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

TESTS = Path(__file__).resolve().parent
WHOAMI = {"whoami": "fixture_plugins.whoami"}
PYPATH = {"PYTHONPATH": str(TESTS)}

ALICE_TOKEN = "alice-static-token-5f2c9e"
BOB_TOKEN = "bob-static-token-77aa01"
JWT_SECRET = "jwt-hs256-secret-0b9d4c1f7a-long-enough-for-sha256"
PUBLISH_KEY = "publish-api-key-1c4e8a"
ADMIN_KEY = "admin-api-key-93bd02"
SECRETS = [ALICE_TOKEN, BOB_TOKEN, JWT_SECRET, PUBLISH_KEY, ADMIN_KEY]
_seen_texts: list[str] = []  # every error text this module received, checked for secrets


def record(text: str) -> str:
    _seen_texts.append(text)
    return text


def static_config(**auth) -> dict:
    return {
        "server": {"log_level": "debug"},
        "plugins": {
            "modules": WHOAMI,
            "settings": {
                "auth": {
                    "mode": "static",
                    "tokens": [
                        {
                            "token": "$env:ALICE_TOKEN",
                            "user_id": "alice",
                            "name": "Alice",
                            "roles": ["staff"],
                        },
                        {"token": BOB_TOKEN, "user_id": "bob"},
                    ],
                    **auth,
                }
            },
        },
    }


ENV = {**PYPATH, "ALICE_TOKEN": ALICE_TOKEN}


async def refused(server, **kwargs) -> str:
    """Connect and expect a refusal; return the connect_error's message (and check its shape)."""
    error = await refused_connect(server, **kwargs)
    record(repr(error))
    assert error["data"]["message"] == error["message"]
    assert set(error["data"]) == {"code", "message", "details"}
    return error["message"]


async def test_static_tokens_refuse_missing_and_wrong_and_admit_the_right_one(serve, connect):
    server = serve(static_config(), env=ENV)
    alice = await connect(server, auth={"token": ALICE_TOKEN}, wait_welcome=True)
    assert "authentication required" in await refused(server)
    assert "invalid token" in await refused(server, auth={"token": "guess"})
    assert "invalid token" in await refused(server, auth={"token": ALICE_TOKEN[:-1]})
    # The identity reached plugbus_connect and the event handler of another plugin.
    who = await alice.call("whoami")
    assert who["data"] == {
        "user_id": "alice",
        "name": "Alice",
        "roles": ["staff"],
        "seen_at_connect": "alice",
    }
    bob = await connect(server, headers={"Authorization": f"Bearer {BOB_TOKEN}"})
    assert (await bob.call("whoami"))["data"]["user_id"] == "bob"
    # The refusals disturbed nobody.
    await alice.call("join-room", {"room": "r"})
    assert (await alice.call("send-message", {"message": "still here", "roomID": "r"}))["ok"]
    assert await alice.wait_for("receive-message") == ["still here"]
    for line in server.log().splitlines():
        assert not any(secret in line for secret in SECRETS), line


def make_jwt(key, alg="HS256", **claims) -> str:
    payload = {
        "sub": "carol",
        "name": "Carol",
        "roles": ["admin"],
        "exp": int(time.time()) + 300,
        **claims,
    }
    return jwt.encode(payload, key, algorithm=alg)


async def test_jwt_hs256_says_why_a_token_is_refused(serve, connect):
    server = serve(
        {
            "server": {"log_level": "debug"},
            "plugins": {
                "modules": WHOAMI,
                "settings": {
                    "auth": {
                        "mode": "jwt",
                        "jwt": {
                            "algorithms": ["HS256"],
                            "secret": "$env:JWT_SECRET",
                            "issuer": "https://issuer.test",
                            "audience": "plugbus",
                        },
                    }
                },
            },
        },
        env={**PYPATH, "JWT_SECRET": JWT_SECRET},
    )
    good = {"iss": "https://issuer.test", "aud": "plugbus"}
    carol = await connect(server, auth={"token": make_jwt(JWT_SECRET, **good)})
    assert (await carol.call("whoami"))["data"]["roles"] == ["admin"]
    assert "token expired" in await refused(
        server, auth={"token": make_jwt(JWT_SECRET, exp=int(time.time()) - 60, **good)}
    )
    assert "signature does not verify" in await refused(
        server, auth={"token": make_jwt("not-the-secret-but-as-long-as-the-real-one", **good)}
    )
    assert "malformed token" in await refused(server, auth={"token": "abc.def"})
    assert "issuer is not accepted" in await refused(
        server, auth={"token": make_jwt(JWT_SECRET, iss="evil", aud="plugbus")}
    )
    assert "audience is not accepted" in await refused(
        server, auth={"token": make_jwt(JWT_SECRET, iss="https://issuer.test", aud="x")}
    )
    no_exp = jwt.encode(
        {"sub": "x", "iss": "https://issuer.test", "aud": "plugbus"}, JWT_SECRET, algorithm="HS256"
    )
    assert "lacks the 'exp' claim" in await refused(server, auth={"token": no_exp})
    assert "authentication required" in await refused(server)
    assert carol.sio.connected
    for line in server.log().splitlines():
        assert JWT_SECRET not in line


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_jwt_with_a_public_key(plugbus_server, connect, alg):
    private = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if alg == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    other = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if alg == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    server = await plugbus_server(
        plugins=WHOAMI,
        settings={"auth": {"mode": "jwt", "jwt": {"algorithms": [alg], "public_key": public_pem}}},
    )
    client = await connect(server, auth={"token": make_jwt(private, alg)})
    assert (await client.call("whoami"))["data"]["user_id"] == "carol"
    assert "signature does not verify" in await refused(
        server, auth={"token": make_jwt(other, alg)}
    )
    assert "does not accept" in await refused(
        server, auth={"token": make_jwt("an-hs256-secret-of-thirty-two-bytes-or-more", "HS256")}
    )


async def test_a_deployment_can_swap_in_its_own_authentication(plugbus_server, connect):
    """Switch the built-in off; a plugin of one's own answers plugbus_authenticate."""
    server = await plugbus_server(
        builtins=["welcome", "rooms", "relay"],
        plugins={**WHOAMI, "cookie": "fixture_plugins.cookie_auth"},
    )
    ok = await connect(server, headers={"Cookie": "session=valid-session"})
    assert (await ok.call("whoami"))["data"]["user_id"] == "cookie-user"
    assert "no session cookie" in await refused(server)


def problem(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    record(resp.text)
    body = resp.json()
    assert body["code"] == code
    return body


async def test_rest_api_keys_and_scopes(serve, connect):
    server = serve(
        {
            "server": {"log_level": "debug"},
            "plugins": {
                "settings": {
                    "auth": {
                        "api_keys": [
                            {"name": "backend", "key": "$env:PUBLISH_KEY", "scopes": ["publish"]},
                            {"name": "ops", "key": ADMIN_KEY, "scopes": ["admin"]},
                        ]
                    }
                }
            },
        },
        env={"PUBLISH_KEY": PUBLISH_KEY},
    )
    member = await connect(server, wait_welcome=True)
    await member.call("join-room", {"room": "news"})
    publish = {"Authorization": f"Bearer {PUBLISH_KEY}"}
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=server.url) as http:
        body = problem(
            await http.post("/rooms/news/messages", json={"message": "x"}), 401, "unauthorized"
        )
        assert "missing API key" in body["detail"]
        body = problem(
            await http.post(
                "/rooms/news/messages",
                json={"message": "x"},
                headers={"Authorization": "Bearer wrong"},
            ),
            401,
            "unauthorized",
        )
        assert body["detail"] == "invalid API key"
        problem(
            await http.post(
                "/rooms/news/messages",
                json={"message": "x"},
                headers={"Authorization": PUBLISH_KEY},
            ),
            401,
            "unauthorized",
        )
        resp = await http.post(
            "/rooms/news/messages", json={"message": "published"}, headers=publish
        )
        assert resp.status_code == 200
        body = problem(await http.get("/plugins", headers=publish), 403, "insufficient_scope")
        assert body["details"] == {"required": "read", "key": "backend"}
        assert (await http.get("/plugins", headers=admin)).status_code == 200
        assert (
            await http.post(
                "/events/send-message", json={"message": "m", "roomID": "news"}, headers=admin
            )
        ).status_code == 200
        assert (await http.get("/health")).status_code == 200  # public
        spec = (await http.get("/openapi.json")).json()
    assert await member.wait_for("receive-message", count=2) == ["published", "m"]
    assert spec["paths"]["/rooms/{room}/messages"]["post"]["security"] == [{"HTTPBearer": []}]
    for line in server.log().splitlines():
        assert PUBLISH_KEY not in line and ADMIN_KEY not in line


async def test_room_rules_refuse_and_admit(plugbus_server, connect):
    server = await plugbus_server(
        config=static_config(
            rooms=[
                {"pattern": "staff-*", "roles": ["staff"]},
                {"pattern": "private-{user_id}", "anyone_identified": True},
                {"pattern": "private-*"},
            ]
        ),
        env={"ALICE_TOKEN": ALICE_TOKEN},
    )
    alice = await connect(server, auth={"token": ALICE_TOKEN})
    bob = await connect(server, auth={"token": BOB_TOKEN})
    ack = await bob.call("join-room", {"room": "staff-room"})
    assert ack["error"]["code"] == "forbidden_room"
    assert ack["error"]["message"] == "you may not join room 'staff-room'"
    assert (await alice.call("join-room", {"room": "staff-room"}))["ok"]
    assert (await bob.call("join-room", {"room": "private-bob"}))["ok"]
    assert (await bob.call("join-room", {"room": "private-alice"}))["error"][
        "code"
    ] == "forbidden_room"
    assert (await bob.call("join-room", {"room": "lobby"}))["ok"]


async def test_connection_limits(plugbus_server, connect):
    server = await plugbus_server(config={"server": {"limits": {"max_connections": 2}}})
    first = await connect(server)
    await connect(server)
    assert "server is full" in await refused(server)
    gone = first.sid
    await first.sio.disconnect()
    await server.hooks.wait_for("plugbus_disconnect", sid=gone)  # the server let it go
    again = await connect(server)
    assert again.sio.connected
    per_address = await plugbus_server(
        config={"server": {"limits": {"max_connections_per_address": 1}}}
    )
    one = await connect(per_address)
    assert "too many connections from your address (limit 1)" in await refused(per_address)
    assert one.sio.connected


async def test_event_rate_limit_refuses_then_recovers(plugbus_server, connect):
    server = await plugbus_server(
        config={"server": {"limits": {"events_per_second": 5, "event_burst": 3}}}
    )
    fast = await connect(server, wait_welcome=True)
    calm = await connect(server, wait_welcome=True)
    acks = [await fast.call("join-room", {"room": f"r{i}"}) for i in range(4)]
    assert [a["ok"] for a in acks] == [True, True, True, False]
    error = acks[3]["error"]
    assert error["code"] == "rate_limited"
    assert 0 < error["details"]["retry_after"] <= 0.2
    assert "at most 5 per second" in error["message"]
    assert (await calm.call("join-room", {"room": "calm"}))["ok"]
    await asyncio.sleep(0.5)
    assert (await fast.call("join-room", {"room": "again"}))["ok"]


async def test_oversized_messages_are_refused_at_the_transport(plugbus_server, connect):
    server = await plugbus_server(
        config={"server": {"max_message_bytes": 2000}},
        settings={"moderation": {"max_length": 0}},
    )
    big = await connect(server, transports=["websocket"], wait_welcome=True)
    other = await connect(server, wait_welcome=True)
    await other.call("join-room", {"room": "r"})
    await big.emit("send-message", {"message": "x" * 5000, "roomID": "r"})
    await big.wait_disconnected()
    assert not big.sio.connected  # closed with WebSocket code 1009, "message too big"
    async with httpx.AsyncClient(base_url=server.url) as http:
        body = problem(
            await http.post("/rooms/r/messages", json={"message": "y" * 5000}),
            413,
            "payload_too_large",
        )
        assert "2000 bytes" in body["detail"]
    assert (await other.call("send-message", {"message": "small", "roomID": "r"}))["ok"]
    assert await other.wait_for("receive-message") == ["small"]


def test_no_secret_appears_in_any_error_this_module_received():
    assert _seen_texts, "the tests above recorded no error texts"
    for text in _seen_texts:
        assert not any(secret in text for secret in SECRETS), text
