"""Refuse REST bodies larger than ``server.max_message_bytes`` with a 413 problem.

A plain ASGI middleware: it trusts no Content-Length alone (chunked bodies have none) and
counts the bytes as they arrive, so an oversized body is refused without being buffered.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import instance_of, problem


class BodyTooLarge(StarletteHTTPException):
    """Raised from the counting ``receive`` when a body passes the limit.

    An HTTPException on purpose: FastAPI turns any other exception raised while it reads a body
    into a 400 "error parsing the body", but lets HTTPException through to the problem handler,
    so a chunked body (no Content-Length) gets the same 413 as a declared one.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large_detail(limit))
        self.details = {"limit": limit, "setting": "server.max_message_bytes"}


def _too_large_detail(limit: int) -> str:
    return f"request body larger than the {limit} bytes allowed (server.max_message_bytes)"


class BodyLimitMiddleware:
    """Answer 413 ``payload_too_large`` when an HTTP request body exceeds ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        response = problem(
            413,
            "payload_too_large",
            _too_large_detail(self.limit),
            instance_of(scope),
            {"limit": self.limit, "setting": "server.max_message_bytes"},
        )
        await response(
            {"type": "http", **{k: v for k, v in scope.items() if k != "type"}}, _no_receive, send
        )


async def _no_receive() -> Any:
    return {"type": "http.disconnect"}
