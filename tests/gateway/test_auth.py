"""The auth middleware on a tiny app: routes need admin unless their Route says otherwise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.auth import Gate, auth_middleware
from gateway.errors import error_middleware
from gateway.keys import ApiKey, KeyCache, Scope, new_key
from gateway.ratelimit import RateLimiter
from gateway.routing import OPEN, Route, bind
from gateway.services import Services


def make_key(cache: KeyCache, scopes: set[Scope], rps: float | None = None) -> str:
    key_id, token, digest = new_key()
    cache.keys[key_id] = ApiKey(key_id, "t", frozenset(scopes), digest, rps, datetime.now(UTC))
    return token


async def ok(request: web.Request, svc: Any) -> web.Response:
    return web.json_response({"ok": True, "svc": svc.name})


ROUTES = (
    Route("GET", "/unmarked", ok, "needs admin"),
    Route("GET", "/open", ok, "anyone", scope=OPEN),
    Route("GET", "/deploy", ok, "deployers", scope=Scope.DEPLOY),
)


@pytest.fixture
async def app() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], KeyCache]]:
    cache = KeyCache(store=None)  # type: ignore[arg-type]
    gate = Gate(cache, RateLimiter(clock=lambda: 0.0), 0.0)
    app = web.Application()
    svc = cast(Services, type("Svc", (), {"name": "the services"})())
    routes = bind(app, ROUTES, svc)
    app.middlewares.extend([error_middleware, auth_middleware(gate, routes)])
    async with TestClient(TestServer(app)) as client:
        yield client, cache


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_unmarked_routes_need_admin(app: tuple[TestClient, KeyCache]) -> None:  # type: ignore[type-arg]
    client, cache = app
    assert (await client.get("/unmarked")).status == 401
    r = await client.get("/unmarked", headers=auth(make_key(cache, {Scope.DEPLOY})))
    assert r.status == 403
    r = await client.get("/unmarked", headers=auth(make_key(cache, {Scope.ADMIN})))
    assert r.status == 200
    assert (await r.json())["svc"] == "the services"  # handlers get the services passed in


async def test_open_and_scoped_routes(app: tuple[TestClient, KeyCache]) -> None:  # type: ignore[type-arg]
    client, cache = app
    assert (await client.get("/open")).status == 200
    assert (await client.head("/open")).status == 200
    assert (await client.get("/deploy")).status == 401
    assert (await client.head("/deploy")).status == 401
    assert (
        await client.get("/deploy", headers=auth(make_key(cache, {Scope.INVOKE})))
    ).status == 403
    assert (
        await client.get("/deploy", headers=auth(make_key(cache, {Scope.DEPLOY})))
    ).status == 200
    # Unknown routes stay 404, key or not; a known path with another method is 405.
    r = await client.get("/nowhere")
    assert r.status == 404
    assert (await r.json())["error"] == {
        "code": "not_found",
        "message": "no route for GET /nowhere",
    }
    r = await client.post("/open")
    assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"
    assert "GET" in r.headers["Allow"]


async def test_key_rate_limit(app: tuple[TestClient, KeyCache]) -> None:  # type: ignore[type-arg]
    client, cache = app
    token = make_key(cache, {Scope.DEPLOY}, rps=1.0)
    assert (await client.get("/deploy", headers=auth(token))).status == 200
    r = await client.get("/deploy", headers=auth(token))
    assert r.status == 429 and r.headers["Retry-After"] == "1"
