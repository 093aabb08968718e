"""``server.log_format: json`` (issue #14 item 3): one JSON object per line for plugbus's and
uvicorn's loggers, with the request id or the connection's sid, user and event where there is
one; ``X-Request-ID`` echoed on REST responses; secrets redacted as in the text format."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Server

TESTS = Path(__file__).resolve().parent
TOKEN = "json-log-static-token-4b1d"


@pytest.fixture
def json_server(serve) -> Server:  # type: ignore[no-untyped-def]
    return serve(
        {
            "server": {"log_level": "info", "log_format": "json"},
            "plugins": {
                "modules": {"log_line": "fixture_plugins.log_line"},
                "settings": {
                    "auth": {"mode": "static", "tokens": [{"token": TOKEN, "user_id": "carol"}]}
                },
            },
        },
        env={"PYTHONPATH": str(TESTS)},
    )


def json_lines(server: Server) -> list[dict[str, Any]]:
    """Every line of the server's output, each parsed as JSON (a line that is not fails)."""
    out = []
    for line in server.log().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"not a JSON line: {line!r}") from None
    return out


async def test_every_line_is_json_with_time_level_logger_message(json_server: Server) -> None:
    httpx.get(json_server.url + "/health")
    lines = json_lines(json_server)
    assert len(lines) >= 3
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", line["time"])
    loggers = {line["logger"] for line in lines}
    assert "uvicorn.error" in loggers and "uvicorn.access" in loggers
    assert any(name.startswith("plugbus") for name in loggers)
    assert not any("color_message" in line for line in lines)


async def test_a_rest_request_id_is_echoed_and_on_its_access_line(json_server: Server) -> None:
    given = httpx.get(json_server.url + "/health", headers={"X-Request-ID": "req-7f3a.1"})
    assert given.headers["x-request-id"] == "req-7f3a.1"
    made = httpx.get(json_server.url + "/rooms")
    new_id = made.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", new_id)
    # an id that could forge log lines or bloat them is replaced, not echoed
    forged = httpx.get(json_server.url + "/health", headers={"X-Request-ID": "a b\tc" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["x-request-id"])
    access = [line for line in json_lines(json_server) if line["logger"] == "uvicorn.access"]
    by_id = {line.get("request_id"): line for line in access}
    assert "GET /health" in by_id["req-7f3a.1"]["message"]
    assert "GET /rooms" in by_id[new_id]["message"]


async def test_an_error_answer_carries_the_request_id_too(json_server: Server) -> None:
    resp = httpx.get(json_server.url + "/rooms/x/nothing-here", headers={"X-Request-ID": "r404"})
    assert resp.status_code == 404
    assert resp.headers["x-request-id"] == "r404"


async def test_a_plugins_line_while_handling_an_event_carries_sid_user_event(
    json_server: Server, connect
) -> None:  # type: ignore[no-untyped-def]
    client = await connect(json_server, transports=["websocket"], auth={"token": TOKEN})
    ack = await client.call("log-note", {"text": "hello from carol"})
    assert ack["ok"] is True
    notes = [line for line in json_lines(json_server) if line["logger"] == "fixture.log_line"]
    assert len(notes) == 1
    note = notes[0]
    assert note["message"] == "note: hello from carol"
    assert note["sid"] == client.sio.get_sid("/")
    assert note["user"] == "carol"
    assert note["event"] == "log-note"
    assert "request_id" not in note


async def test_secrets_stay_out_of_json_lines(json_server: Server, connect) -> None:  # type: ignore[no-untyped-def]
    httpx.get(json_server.url + f"/health?token={TOKEN}&x=1")
    await connect(json_server, transports=["websocket"], auth={"token": TOKEN})
    log = json_server.log()
    assert "token=[redacted]" in log
    assert TOKEN not in log
