"""Routes as data: each feature declares its `Route`s; the management app binds them,
the auth middleware reads their scope, and the OpenAPI document is generated from them.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute
from pydantic import BaseModel

from gateway.keys import Scope

if TYPE_CHECKING:
    from gateway.services import Services

Handler = Callable[[web.Request, "Services"], Awaitable[web.StreamResponse]]

# Route markers besides a Scope: no key needed; the handler checks for itself.
OPEN: Final = "open"
SELF: Final = "self"
ANY_METHOD = "*"
# The path parameter of routes addressed by a uuid (invocations, jobs, schedules).
UUID_ID = {"id": {"type": "string", "format": "uuid"}}
_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")


@dataclass(frozen=True)
class Content:
    """A body that is not one JSON model: media type -> JSON schema."""

    media: Mapping[str, Any]
    # Models the schemas refer to (put in the document's components).
    models: tuple[type[BaseModel], ...] = ()
    description: str = ""
    # As a request body: it must be sent (an empty one is refused).
    required: bool = True


Body = type[BaseModel] | Content


@dataclass(frozen=True)
class Route:
    method: str
    # aiohttp's syntax: {name}, or {path:.*} for the rest of the path.
    path: str
    # None: served by the front server (gateway.front), described here all the same.
    handler: Handler | None
    summary: str
    # Who may call it: a Scope (admin by default: private unless marked), OPEN or SELF.
    scope: Scope | str = Scope.ADMIN
    # Request body: a JSON model, or other content.
    body: Body | None = None
    # Response body on success (None: no body) and its status ("default": any).
    response: Body | None = None
    status: int | str = 200
    # Other success statuses with the same body (e.g. 200 for a replace, 201 for a create).
    also: tuple[int, ...] = ()
    # Other statuses it answers with an error body (401/403/429 are added for keyed routes).
    errors: tuple[int, ...] = ()
    # JSON schema of path parameters not plain strings.
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Query string, as a model.
    query: type[BaseModel] | None = None
    # Request headers it reads: name -> JSON schema.
    headers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def param_names(self) -> list[str]:
        return _PARAM.findall(self.path)

    @property
    def openapi_path(self) -> str:
        return _PARAM.sub(r"{\1}", self.path)


def bind(
    app: web.Application, routes: Iterable[Route], svc: Services
) -> dict[AbstractRoute, Route]:
    """Add each route to `app`, its handler given `svc`; returns which aiohttp route is which."""
    bound: dict[AbstractRoute, Route] = {}
    for route in routes:
        if route.handler is None:
            continue
        resource = app.router.add_resource(route.path)
        handler = _bound(route.handler, svc)
        methods = ["GET", "HEAD"] if route.method == "GET" else [route.method]
        for method in methods:
            bound[resource.add_route(method, handler)] = route
    return bound


def _bound(
    handler: Handler, svc: Services
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await handler(request, svc)

    return handle
