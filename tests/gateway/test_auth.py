"""The auth middleware on a tiny app: unmarked routes need admin; markers open or narrow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.auth import OPEN, Gate, auth_middleware, gate_key, requires
from gateway.errors import error_middleware
from gateway.keys import ApiKey, KeyCache, Scope, new_key
from gateway.ratelimit import RateLimiter


def make_key(cache: KeyCache, scopes: set[Scope], rps: float | None = None) -> str:
    key_id, token, digest = new_key()
    cache.keys[key_id] = ApiKey(key_id, "t", frozenset(scopes), digest, rps, datetime.now(UTC))
    return token


async def unmarked(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@requires(OPEN)
async def opened(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@requires(Scope.DEPLOY)
async def deploying(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture
async def app() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], KeyCache]]:
    cache = KeyCache(store=None)  # type: ignore[arg-type]
    app = web.Application(middlewares=[error_middleware, auth_middleware])
    app[gate_key] = Gate(cache, RateLimiter(clock=lambda: 0.0), 0.0)
    app.router.add_get("/unmarked", unmarked)
    app.router.add_get("/open", opened)
    app.router.add_get("/deploy", deploying)
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


async def test_open_and_scoped_routes(app: tuple[TestClient, KeyCache]) -> None:  # type: ignore[type-arg]
    client, cache = app
    assert (await client.get("/open")).status == 200
    assert (await client.get("/deploy")).status == 401
    assert (
        await client.get("/deploy", headers=auth(make_key(cache, {Scope.INVOKE})))
    ).status == 403
    assert (
        await client.get("/deploy", headers=auth(make_key(cache, {Scope.DEPLOY})))
    ).status == 200
    # Unknown routes stay 404, key or not.
    assert (await client.get("/nowhere")).status == 404


async def test_key_rate_limit(app: tuple[TestClient, KeyCache]) -> None:  # type: ignore[type-arg]
    client, cache = app
    token = make_key(cache, {Scope.DEPLOY}, rps=1.0)
    assert (await client.get("/deploy", headers=auth(token))).status == 200
    r = await client.get("/deploy", headers=auth(token))
    assert r.status == 429 and r.headers["Retry-After"] == "1"
