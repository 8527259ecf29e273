"""The front door on the public port: invocations here, everything else forwarded.

`/fn/{name}[/{path}]` runs through the `Invoker`, the instance's response written
straight through to the client. Every other request (the management API) is forwarded
to the aiohttp application listening on a private unix socket. `ROUTES` describes what
is served here, for the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.connections import ConnectionLimits, ConnectionTable
from gateway.errors import KapalError, RateLimited, problem
from gateway.http1 import ClientConnection
from gateway.invoke import new_request_id
from gateway.keys import Scope
from gateway.proxy import exchange, request_head
from gateway.ratelimit import retry_after
from gateway.request import Request
from gateway.routing import ANY_METHOD, SELF, Content, Route
from gateway.services import Services
from gateway.upstream import UpstreamLost
from scheduler.errors import SchedulerError

log = logging.getLogger("kapal.gateway.front")

MANAGEMENT_TIMEOUT_S = 3600.0
PREFIX = b"/fn/"


def split_fn_url(url: bytes) -> tuple[str, bytes]:
    """b"/fn/name/rest?q" -> ("name", b"/rest?q"); the rest is "/" when empty."""
    rest = url[4:]
    cut = len(rest)
    for sep in (b"/", b"?"):
        i = rest.find(sep)
        if i != -1 and i < cut:
            cut = i
    name, sub = rest[:cut], rest[cut:]
    if not sub or sub[:1] == b"?":
        sub = b"/" + sub
    return name.decode("latin-1"), sub


class Front:
    def __init__(self, svc: Services, management_address: str) -> None:
        settings = svc.settings
        self.settings = settings
        self.invoker = svc.invoker
        self.gate = svc.gate
        self.upstreams = svc.upstreams
        self.metrics = svc.metrics
        self.management_address = management_address
        self.connections: set[ClientConnection] = set()
        # Who may open one more connection (the caps and timeouts of the public port).
        self.table: ConnectionTable[ClientConnection] = ConnectionTable(
            ConnectionLimits.from_settings(settings)
        )
        self.closing = False
        self.max_header_bytes = settings.max_header_bytes
        self.max_headers = settings.max_headers
        self.in_flight = 0
        self._idle: asyncio.Event | None = None

    async def handle(self, conn: ClientConnection, req: Request) -> None:
        self.in_flight += 1
        try:
            if req.url.startswith(PREFIX):
                await self.invoke(conn, req)
            else:
                await self.forward(conn, req)
        finally:
            self.in_flight -= 1
            if not self.in_flight and self._idle is not None:
                self._idle.set()

    async def invoke(self, conn: ClientConnection, req: Request) -> None:
        name, target = split_fn_url(req.url)
        request_id = new_request_id()
        try:
            self._admit(req, name)
            await self.invoker.invoke(conn, req, name, target, conn.peer, request_id, True)
            return
        except (KapalError, SchedulerError) as e:
            err = problem(e)
        req.body.discard = True
        conn.upstream = None
        if conn.response_started:
            conn.close()  # part of a response went out: the client sees it cut short
        else:
            conn.error(err.status, err.code, err.message, err.headers, request_id)

    def _admit(self, req: Request, name: str) -> None:
        """Keys for private functions, and the function's rate limit (401/403/429)."""
        pool = self.invoker.scheduler.pool(name)
        # Unknown and private functions look the same to a caller without a key.
        if pool is None or not pool.spec.public:
            authorization = next((v for n, v in req.headers if n.lower() == b"authorization"), None)
            try:
                self.gate.authorize(
                    authorization.decode("latin-1") if authorization is not None else None,
                    Scope.INVOKE,
                )
            except RateLimited:
                if pool is not None:  # names of no function are not a metric's label
                    self.metrics.rejections[(name, "key_rate_limit")] += 1
                raise
        if pool is None:
            return
        rate = pool.spec.limits.rps or self.settings.function_rps or None
        if rate and (wait := self.gate.limiter.take(f"fn:{name}", rate)):
            self.metrics.rejections[(name, "rate_limit")] += 1
            raise RateLimited(
                f"function {name} is over its rate limit of {rate:g} requests/s",
                headers={"Retry-After": retry_after(wait)},
            )

    async def forward(self, conn: ClientConnection, req: Request) -> None:
        head = request_head(req, req.url, conn.peer, b"")
        try:
            await exchange(
                self.upstreams,
                conn,
                req,
                self.management_address,
                head,
                b"",
                MANAGEMENT_TIMEOUT_S,
                self.settings.max_code_bytes + (1 << 20),
            )
        except (UpstreamLost, OSError, TimeoutError) as e:
            log.warning("management request failed", extra={"error": str(e)})
            if conn.response_started:
                conn.close()
            else:
                conn.error(502, "internal", "management API unavailable")

    async def drain(self, grace_s: float) -> None:
        """Stop taking new requests on kept-alive connections; wait for in-flight ones."""
        self.closing = True
        if self.in_flight:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        for conn in list(self.connections):
            conn.close()
        self.upstreams.close()


def _invoke_route(path: str) -> Route:
    return Route(
        ANY_METHOD,
        path,
        None,
        "invoke a function, its answer streamed back (public functions need no key)",
        scope=SELF,
        body=Content(
            {"*/*": {"schema": {}}}, description="passed to the function as sent", required=False
        ),
        response=Content({"*/*": {"schema": {}}}, description="the function's answer"),
        status="default",
        errors=(404, 413, 502, 503, 504),
    )


# What this server answers itself; everything else is the management app's.
ROUTES = (_invoke_route("/fn/{name}"), _invoke_route("/fn/{name}/{path:.*}"))
