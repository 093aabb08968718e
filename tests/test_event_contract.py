"""The event contract, exported: AsyncAPI 3 over REST and the CLI, JSON Schema per event."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import jsonschema
from conftest import ROOT

SPEC = (
    ROOT
    / "tests"
    / "interop"
    / "node_modules"
    / "@asyncapi"
    / "specs"
    / "schemas"
    / "3.0.0-without-$id.json"
)


def asyncapi_validator() -> jsonschema.protocols.Validator:
    assert SPEC.exists(), (
        "npm package @asyncapi/specs missing: run `npm ci` in tests/interop (scripts/test.sh does)"
    )
    schema = json.loads(SPEC.read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def assert_valid_asyncapi(doc: dict) -> None:
    errors = sorted(asyncapi_validator().iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


async def test_asyncapi_document_is_valid_asyncapi_3(default_server):
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        doc = (await http.get("/asyncapi.json")).json()
    assert doc["asyncapi"] == "3.0.0"
    assert_valid_asyncapi(doc)
    ops = doc["operations"]
    assert ops["receive.send-message"]["action"] == "receive"
    assert ops["receive.send-message"]["reply"]["messages"] == [
        {"$ref": "#/channels/socketio/messages/send-message.ack"}
    ]
    payload = doc["components"]["messages"]["send-message"]["payload"]
    assert set(payload["required"]) >= {"message", "roomID"}
    assert doc["channels"]["socketio"]["address"] == "/"
    assert doc["servers"]["plugbus"]["host"] == default_server.url.split("://")[1]
    # Server-to-client events are in the contract too, the error event among them.
    assert ops["send.error"]["action"] == "send"
    assert doc["components"]["messages"]["error"]["payload"]["required"] == [
        "code",
        "message",
        "details",
    ]


def test_the_validator_really_rejects_a_broken_document():
    broken = {
        "asyncapi": "3.0.0",
        "info": {"title": "x"},
        "operations": {"op": {"action": "shout"}},
    }
    assert list(asyncapi_validator().iter_errors(broken))


async def test_a_plugin_event_appears_in_the_contract(plugbus_server):
    server = await plugbus_server(plugins={"shout": "fixture_plugins.shout"})
    async with httpx.AsyncClient(base_url=server.url) as http:
        doc = (await http.get("/asyncapi.json")).json()
        one = await http.get("/events/shout/schema")
        missing = await http.get("/events/nope/schema")
    assert_valid_asyncapi(doc)
    assert "receive.shout" in doc["operations"]
    assert (
        doc["components"]["messages"]["shout"]["payload"]["properties"]["word"]["type"] == "string"
    )
    body = one.json()
    assert body["direction"] == "client-to-server" and body["plugin"] == "shout"
    assert body["payload"]["required"] == ["word"]
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    # A payload valid by the exported schema is accepted by the server, an invalid one refused.
    jsonschema.validate({"word": "hey"}, body["payload"])
    assert list(jsonschema.Draft202012Validator(body["payload"]).iter_errors({"word": 5}))


def test_plugbus_schema_prints_the_same_document_offline():
    out = subprocess.run(
        [sys.executable, "-m", "plugbus", "schema"], capture_output=True, text=True, check=True
    )
    doc = json.loads(out.stdout)
    assert_valid_asyncapi(doc)
    assert "receive.join-room" in doc["operations"]
    one = subprocess.run(
        [sys.executable, "-m", "plugbus", "schema", "--event", "join-room"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(one.stdout)["payload"]["required"] == ["room"]
    bad = subprocess.run(
        [sys.executable, "-m", "plugbus", "schema", "--event", "nope"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "no event named 'nope'" in bad.stderr
