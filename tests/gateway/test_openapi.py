"""The OpenAPI document is generated from the route table: it cannot miss a served route."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp import web

from gateway import app as management
from gateway import front, openapi
from gateway.keys import Scope
from gateway.routing import ANY_METHOD, OPEN, Route
from gateway.services import Services


def served(app: web.Application) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every route aiohttp serves; `*` stands for any method."""
    out = set()
    for resource in app.router.resources():
        for route in resource:
            if route.method == "HEAD":
                continue
            path = resource.canonical.replace("{path:.*}", "{path}")
            methods = openapi.ANY_METHODS if route.method == "*" else (route.method.lower(),)
            out |= {(path, m) for m in methods}
    return out


def described(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, ops in doc["paths"].items() for method in ops}


def real_app() -> web.Application:
    svc = SimpleNamespace(settings=SimpleNamespace(max_code_bytes=1 << 20), gate=None)
    return management.create_app(cast(Services, svc))


def front_served() -> set[tuple[str, str]]:
    return {
        (r.openapi_path, m)
        for r in front.ROUTES
        for m in (openapi.ANY_METHODS if r.method == ANY_METHOD else (r.method.lower(),))
    }


def test_the_document_is_exactly_what_both_servers_serve() -> None:
    doc = management.DOCUMENT
    app_routes = served(real_app())
    assert app_routes, "the management app serves nothing?"
    assert app_routes | front_served() == described(doc)
    assert not app_routes & front_served()
    # The front server answers /fn/ itself and forwards the rest: no other route may be
    # declared there, nor a management route under /fn/.
    assert all(r.path.startswith(front.PREFIX.decode()) for r in front.ROUTES)
    assert not any(p.startswith(front.PREFIX.decode()) for p, _ in app_routes)


async def _bare(request: web.Request) -> web.Response:
    return web.Response()


def test_a_missing_route_is_caught() -> None:
    app = real_app()
    app.router.add_get("/v1/undescribed", _bare)
    assert served(app) | front_served() != described(management.DOCUMENT)


def test_scopes_and_errors_come_from_the_table() -> None:
    doc = management.DOCUMENT
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert "401" not in doc["paths"]["/healthz"]["get"]["responses"]
    keys = doc["paths"]["/v1/keys"]["post"]
    assert "`admin`" in keys["description"] and {"401", "403", "429"} <= set(keys["responses"])
    assert "`deploy`" in doc["paths"]["/v1/functions"]["get"]["description"]
    jobs = doc["paths"]["/v1/jobs"]["post"]
    assert jobs["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobCreated"
    }


def test_every_reference_resolves() -> None:
    doc = management.DOCUMENT
    schemas = doc["components"]["schemas"]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None:
                assert ref.rsplit("/", 1)[1] in schemas, ref
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)


def test_query_models_become_parameters() -> None:
    params = management.DOCUMENT["paths"]["/v1/invocations"]["get"]["parameters"]
    by_name = {p["name"]: p for p in params}
    assert by_name["limit"]["schema"]["maximum"] == 1000
    assert by_name["function"]["schema"] == {"type": "string", "title": "Function"}


async def _noop(request: web.Request, svc: Services) -> web.Response:
    return web.Response()


def test_a_route_declared_twice_is_refused() -> None:
    twice = [Route("GET", "/x", _noop, "x", scope=OPEN), Route("GET", "/x", _noop, "y")]
    with pytest.raises(ValueError, match="declared twice"):
        openapi.document(twice)


def test_any_method_routes_expand() -> None:
    doc = openapi.document([Route(ANY_METHOD, "/a/{rest:.*}", _noop, "a", scope=Scope.INVOKE)])
    assert set(doc["paths"]["/a/{rest}"]) == set(openapi.ANY_METHODS)
    ids = {op["operationId"] for op in doc["paths"]["/a/{rest}"].values()}
    assert len(ids) == len(openapi.ANY_METHODS)
