"""RFC 9457 problem+json: the REST form of plugbus's one error shape.

Every error response carries the standard members (``type``, ``title``, ``status``, ``detail``,
``instance``) plus plugbus's own ``code`` and ``details`` — the same ``{code, message,
details}`` a Socket.IO client receives, with ``message`` spelled ``detail``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from plugbus.core import InternalError, PlugbusError
from plugbus.core.events import shorten

log = logging.getLogger("plugbus.rest")

PROBLEM_TYPE = "application/problem+json"
_CODES_BY_STATUS = {
    404: "not_found",
    405: "method_not_allowed",
    401: "unauthorized",
    403: "forbidden",
    413: "payload_too_large",
    429: "rate_limited",
}


def problem(
    status: int,
    code: str,
    detail: str,
    instance: str,
    details: dict[str, Any] | None = None,
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


def instance_of(scope: Mapping[str, Any]) -> str:
    """The request's path as sent, percent-encoding kept: ``instance`` is a URI reference."""
    raw = scope.get("raw_path")
    return raw.decode("latin-1") if raw else quote(scope.get("path", ""))


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error — plugbus's, FastAPI's validation, Starlette's HTTP ones, and
    unexpected exceptions — answer as problem+json."""

    @app.exception_handler(PlugbusError)
    async def _plugbus_error(request: Request, exc: PlugbusError) -> JSONResponse:
        headers = None
        retry_after = exc.details.get("retry_after") if exc.status == 429 else None
        if isinstance(retry_after, int | float):
            # whole seconds (RFC 9110)
            headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
        return problem(
            exc.status,
            exc.code,
            exc.message,
            instance_of(request.scope),
            exc.details,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            errors.append({"loc": loc, "message": err.get("msg", ""), "type": err.get("type", "")})
        summary = "; ".join(f"{e['loc']}: {e['message']}" for e in errors)
        return problem(
            422,
            "invalid_payload",
            f"invalid request: {summary}",
            instance_of(request.scope),
            {"errors": errors},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES_BY_STATUS.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        headers = dict(getattr(exc, "headers", None) or {})
        details = dict(getattr(exc, "details", None) or {})
        if exc.status_code == 404:
            detail = f"no route {request.method} {shorten(request.url.path, 200)}"
        elif exc.status_code == 405:
            # Starlette names the methods of the first route whose path matched; FastAPI makes
            # one route per method, so the others on the same path must be added.
            allowed = allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            details["allowed"] = allowed
            detail = f"method {request.method} is not allowed here; allowed: {', '.join(allowed)}"
        return problem(
            exc.status_code,
            code,
            detail,
            instance_of(request.scope),
            details,
            headers=headers or None,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        err = InternalError("internal server error")
        return problem(err.status, err.code, err.message, instance_of(request.scope))


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path, sorted (for ``Allow``)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(request.scope)[0] is not Match.NONE:
            methods |= set(route_methods)
    return sorted(methods)


#: The status codes every REST operation documents as problem+json (besides its success).
PROBLEM_STATUSES = (400, 401, 403, 404, 413, 422, 429)


def document_problems(openapi: dict[str, Any]) -> dict[str, Any]:
    """Make an OpenAPI document say what the door really answers on errors: each operation
    lists 400, 401, 403, 404, 413, 422 and 429 as ``application/problem+json`` with the
    ``Problem`` schema (FastAPI documents only 422, as plain JSON, with its own error model)."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    ref = {"$ref": "#/components/schemas/Problem"}
    for path_item in openapi.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for status in PROBLEM_STATUSES:
                responses[str(status)] = {
                    "description": HTTPStatus(status).phrase + " (RFC 9457 problem details)",
                    "content": {PROBLEM_TYPE: {"schema": ref}},
                }
    return openapi


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details, with plugbus's `code` and `details`.",
    "required": ["type", "title", "status", "detail", "instance", "code", "details"],
    "properties": {
        "type": {"type": "string", "description": "urn:plugbus:error:<code>"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "What went wrong, for people."},
        "instance": {"type": "string", "description": "The request path as sent."},
        "code": {
            "type": "string",
            "description": "Short snake_case identifier, e.g. invalid_payload.",
        },
        "details": {"type": "object", "description": "Machine-readable particulars."},
    },
}
