"""Who may call what: Bearer API keys with scopes, checked in one middleware.

Every route needs an `admin` key unless its `Route` says otherwise (`gateway.routing`):
locked down by default. The invocation routes check for themselves (`SELF`), since a
public function needs no key at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_urldispatcher import AbstractRoute

from gateway.errors import Forbidden, RateLimited, Unauthorized
from gateway.keys import ApiKey, KeyCache, Scope
from gateway.ratelimit import RateLimiter, retry_after
from gateway.routing import OPEN, SELF, Route

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer(value: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value; None without a header."""
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <API key>'")
    return token.strip()


class Gate:
    """Checks keys and their rate limits; shared by the API and the invocation path."""

    def __init__(self, keys: KeyCache, limiter: RateLimiter, default_key_rps: float) -> None:
        self.keys = keys
        self.limiter = limiter
        self.default_key_rps = default_key_rps

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        """The caller's key (checked and rate limited), or None when it sent none."""
        token = bearer(authorization)
        if token is None:
            return None
        key = self.keys.verify(token)
        if key is None:
            raise Unauthorized("unknown or revoked API key")
        rate = key.rps if key.rps is not None else self.default_key_rps
        wait = self.limiter.take(f"key:{key.id}", rate if rate > 0 else None)
        if wait:
            raise RateLimited(
                f"API key {key.id} is over its rate limit of {rate:g} requests/s",
                headers={"Retry-After": retry_after(wait)},
            )
        return key

    def authorize(self, authorization: str | None, scope: Scope) -> ApiKey:
        """The caller's key if it holds `scope`; 401 without a key, 403 with the wrong one."""
        key = self.authenticate(authorization)
        if key is None:
            raise Unauthorized(f"this needs an API key with the {scope.value!r} scope")
        if not key.allows(scope):
            raise Forbidden(
                f"API key {key.id} lacks the {scope.value!r} scope"
                f" (it has: {', '.join(sorted(key.scopes))})"
            )
        return key


def auth_middleware(gate: Gate, routes: Mapping[AbstractRoute, Route]) -> Middleware:
    """Checks each request against its route's scope (admin for a route not in `routes`)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.http_exception is not None:  # no route: 404/405 as usual
            return await handler(request)
        route = routes.get(request.match_info.route)
        scope = route.scope if route is not None else Scope.ADMIN
        if scope not in (OPEN, SELF):
            gate.authorize(request.headers.get("Authorization"), Scope(scope))
        return await handler(request)

    return check
