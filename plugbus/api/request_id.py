"""``X-Request-ID`` on every REST request: the caller's id when it sent a sane one, a new one
otherwise; echoed on the response and carried by every log line written while serving it."""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .structured_logs import log_context

#: what an incoming id may look like; anything else (too long, spaces, control characters) is
#: replaced rather than echoed into logs and responses
_SANE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


class RequestIdMiddleware:
    """Pure ASGI middleware (no per-request task or body buffering)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                text = value.decode("latin-1")
                request_id = text if _SANE.fullmatch(text) else None
                break
        if request_id is None:
            request_id = uuid.uuid4().hex
        log_context.set({"request_id": request_id})
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)
