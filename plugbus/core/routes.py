"""REST routes contributed by plugins, described without any web framework.

A plugin returns :class:`Route` objects from ``plugbus_routes``; the REST door in api/ turns
each into a FastAPI route with its request and response models in the OpenAPI document. Plugins
therefore never import FastAPI, and an error they raise becomes the same problem+json as
everywhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .context import Principal

if TYPE_CHECKING:
    from .protocols import Bus


@dataclass(slots=True)
class RouteRequest:
    """What a route handler receives.

    :ivar bus: the bus.
    :ivar path_params: the ``{name}`` parts of the path, as strings.
    :ivar query: the query string parameters.
    :ivar body: the validated request body (an instance of the route's ``body`` model) or None.
    :ivar params: the validated query parameters (an instance of the route's ``query``
        model) or None.
    :ivar headers: request headers, lower-cased names.
    :ivar principal: the authenticated caller, or None when no authentication plugin answered.
    """

    bus: Bus
    path_params: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    body: BaseModel | None = None
    headers: dict[str, str] = field(default_factory=dict)
    principal: Principal | None = None
    params: BaseModel | None = None


RouteHandler = Callable[[RouteRequest], Awaitable[Any] | Any]


@dataclass(frozen=True, slots=True)
class Route:
    """One REST endpoint.

    :ivar method: HTTP method, e.g. ``"POST"``.
    :ivar path: path with ``{name}`` parameters, e.g. ``"/rooms/{room}/messages"``.
    :ivar handler: called with a :class:`RouteRequest`; may be async; returns the response
        body (a model or JSON-able value) or raises :class:`~core.errors.PlugbusError`.
    :ivar body: pydantic model of the JSON request body, or None for no body.
    :ivar query: pydantic model of the query parameters (validated, 422 when wrong, and in
        the OpenAPI document), or None to read ``RouteRequest.query`` as it comes.
    :ivar response: pydantic model of the response body, for validation and OpenAPI.
    :ivar status_code: the success status.
    :ivar summary: one line for the OpenAPI document.
    :ivar tags: OpenAPI tags; the REST door adds the plugin's name when empty.
    :ivar scope: the API-key scope a caller needs (``"publish"``, ``"read"``, ``"admin"``...),
        or None for a public route. Defaults to ``"admin"`` so that a route nobody thought
        about is never open by accident. Enforced only when an authentication plugin answers
        ``plugbus_authenticate_request``.
    """

    method: str
    path: str
    handler: RouteHandler
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status_code: int = 200
    summary: str = ""
    tags: tuple[str, ...] = ()
    scope: str | None = "admin"
    query: type[BaseModel] | None = None
