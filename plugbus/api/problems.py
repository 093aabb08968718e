"""RFC 9457 problem+json: the REST form of plugbus's one error shape.

Every error response carries the standard members (``type``, ``title``, ``status``, ``detail``,
``instance``) plus plugbus's own ``code`` and ``details`` — the same ``{code, message,
details}`` a Socket.IO client receives, with ``message`` spelled ``detail``.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from plugbus.core import InternalError, PlugbusError

log = logging.getLogger("plugbus.rest")

PROBLEM_TYPE = "application/problem+json"
_CODES_BY_STATUS = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized",
                    403: "forbidden", 413: "payload_too_large", 429: "rate_limited"}


def problem(
    status: int, code: str, detail: str, instance: str, details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A problem+json response."""
    body = {
        "type": f"urn:plugbus:error:{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
        "code": code,
        "details": details or {},
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_TYPE, headers=headers)


def instance_of(scope: dict[str, Any]) -> str:
    """The request's path as sent, percent-encoding kept: ``instance`` is a URI reference."""
    raw = scope.get("raw_path")
    return raw.decode("latin-1") if raw else quote(scope.get("path", ""))


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error — plugbus's, FastAPI's validation, Starlette's HTTP ones, and
    unexpected exceptions — answer as problem+json."""

    @app.exception_handler(PlugbusError)
    async def _plugbus_error(request: Request, exc: PlugbusError) -> JSONResponse:
        return problem(exc.status, exc.code, exc.message, instance_of(request.scope), exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            errors.append({"loc": loc, "message": err.get("msg", ""), "type": err.get("type", "")})
        summary = "; ".join(f"{e['loc']}: {e['message']}" for e in errors)
        return problem(422, "invalid_payload", f"invalid request: {summary}",
                       instance_of(request.scope), {"errors": errors})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES_BY_STATUS.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404:
            detail = f"no route {request.method} {request.url.path}"
        return problem(exc.status_code, code, detail, instance_of(request.scope),
                       headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        err = InternalError("internal server error")
        return problem(err.status, err.code, err.message, instance_of(request.scope))
