"""The baseline of plugbus's benchmark: bare python-socketio on the same uvicorn, same work.

    python bench/servers/bare_socketio.py --port 3000 [--host 127.0.0.1]

It serves what plugbus's default plugins serve, with hand-written checks instead of the plugin
pipeline, so that plugbus's cost over python-socketio can be measured:

* on connect: ``welcome`` "Welcome to server";
* ``join-room`` ``{room}``: enter the room; ack ``{"ok": true, "data": {room, rooms}}``;
* ``send-message`` ``{message, roomID}``: ``emit("receive-message", message, to=roomID)``;
  ack ``{"ok": true, "data": {id, room, recipients}}``;
* a malformed payload: ``{"ok": false, "error": {code, message, details}}`` in the ack (the
  benchmark sends none; plugbus's ``error`` event for ack-less refusals is not mirrored);
* REST ``POST /rooms/{room}/messages`` ``{"message"}`` (a raw ASGI app beside Socket.IO, as
  ``socketio.ASGIApp(sio, other_asgi_app=...)`` — plugbus's shape) and ``GET /health``.

The python-socketio server is built with the arguments plugbus's Socket.IO door uses
(``async_handlers=False``, same pings and size limit), and uvicorn runs with the arguments
plugbus's CLI uses (uvloop, httptools, uvicorn's default websocket implementation).
"""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any
from urllib.parse import unquote

import socketio
import uvicorn

GREETING = "Welcome to server"
MAX_LENGTH = 2000  # the moderation plugin's default max_length
MAX_BYTES = 1_000_000

sio = socketio.AsyncServer(
    async_mode="asgi",
    async_handlers=False,
    cors_allowed_origins="*",
    cors_credentials=True,
    ping_interval=25,
    ping_timeout=20,
    max_http_buffer_size=MAX_BYTES,
    transports=["polling", "websocket"],
    logger=False,
    engineio_logger=False,
)


def refusal(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message, "details": details}}


def check_message(payload: Any) -> dict[str, Any] | None:
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("message"), str | dict | list)
        or not isinstance(payload.get("roomID"), str)
        or not payload["roomID"]
    ):
        return refusal("invalid_payload", "send-message needs {message, roomID}")
    message = payload["message"]
    if isinstance(message, str) and len(message) > MAX_LENGTH:
        return refusal("message_rejected", "message too long", max_length=MAX_LENGTH)
    return None


def room_size(room: str) -> int:
    members = sio.manager.rooms.get("/", {}).get(room)
    return len(members) if members else 0


async def deliver(room: str, message: Any) -> dict[str, Any]:
    recipients = room_size(room)
    await sio.emit("receive-message", message, to=room)
    return {"id": uuid.uuid4().hex, "room": room, "recipients": recipients}


@sio.on("connect")
async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
    await sio.emit("welcome", GREETING, to=sid)


@sio.on("join-room")
async def join_room(sid: str, payload: Any = None) -> dict[str, Any]:
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("room"), str)
        or not payload["room"]
    ):
        return refusal("invalid_payload", "join-room needs {room}")
    room = payload["room"]
    await sio.enter_room(sid, room)
    rooms = [r for r in sio.rooms(sid) if r != sid]
    return {"ok": True, "data": {"room": room, "rooms": rooms}}


@sio.on("send-message")
async def send_message(sid: str, payload: Any = None) -> dict[str, Any]:
    problem = check_message(payload)
    if problem is not None:
        return problem
    return {"ok": True, "data": await deliver(payload["roomID"], payload["message"])}


async def rest(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A raw ASGI app: POST /rooms/{room}/messages and GET /health."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return

    async def reply(status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    path, method = scope["path"], scope["method"]
    if method == "GET" and path == "/health":
        await reply(
            200, {"status": "ok", "server": "bare-python-socketio", "connections": room_size(None)}
        )  # type: ignore[arg-type]
        return
    parts = path.split("/")
    if (
        method != "POST"
        or len(parts) != 4
        or parts[1] != "rooms"
        or parts[3] != "messages"
        or not parts[2]
    ):
        await reply(404, {"code": "not_found", "message": "not found", "details": {}})
        return
    chunks = []
    while True:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    try:
        body = json.loads(b"".join(chunks))
    except ValueError:
        await reply(422, {"code": "invalid_payload", "message": "body is not JSON", "details": {}})
        return
    room = unquote(parts[2])
    problem = check_message(
        {"message": body.get("message") if isinstance(body, dict) else None, "roomID": room}
    )
    if problem is not None:
        await reply(422, problem["error"])
        return
    await reply(200, await deliver(room, body["message"]))


app = socketio.ASGIApp(sio, other_asgi_app=rest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        lifespan="on",
        loop="uvloop",
        http="httptools",
        ws_max_size=MAX_BYTES,
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
