"""The invocation path: ANY /fn/{name}[/{path}] proxied to a warm instance.

Never touches the database: the function comes from the scheduler's in-memory pools and
the record goes to an in-memory batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, istr
from yarl import URL

from gateway.auth import SELF, authorize, requires
from gateway.errors import (
    FunctionNotFound,
    PayloadTooLarge,
    RateLimited,
    UpstreamFailed,
    UpstreamTimeout,
)
from gateway.keys import KEY_RE, Scope
from gateway.ratelimit import RateLimiter, retry_after
from gateway.records import InvocationRecord, Recorder
from gateway.settings import Settings
from scheduler.pool import Instance, Pool
from scheduler.scheduler import Scheduler

log = logging.getLogger("kapal.gateway.invoke")

REQUEST_ID = istr("X-Kapal-Request-Id")
DEADLINE = istr("X-Kapal-Deadline")
COLD_START = istr("X-Kapal-Cold-Start")
RUNTIME_ERROR = istr("X-Kapal-Error")
HOP_BY_HOP = frozenset(
    istr(h)
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)
# Bodies up to this size are read whole (one write, a Content-Length); larger ones stream.
BUFFER_LIMIT = 1 << 20
CHUNK = 1 << 16
AUTHORIZATION = istr("Authorization")


def _is_kapal_key(value: str) -> bool:
    scheme, _, token = value.partition(" ")
    return scheme.lower() == "bearer" and KEY_RE.match(token.strip()) is not None


def _forward_headers(request: web.Request, request_id: str, deadline: float) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in request.headers.items():
        if key not in HOP_BY_HOP and key != REQUEST_ID and key != DEADLINE:
            # The caller's Kapal key is for Kapal: the function's code never sees it.
            if key == AUTHORIZATION and _is_kapal_key(value):
                continue
            headers.add(key, value)
    headers[REQUEST_ID] = request_id
    headers[DEADLINE] = f"{deadline:.3f}"
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers.setdefault("X-Forwarded-Host", request.host)
    headers.setdefault("X-Forwarded-Proto", request.scheme)
    return headers


def _response_headers(upstream: aiohttp.ClientResponse, request_id: str) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in upstream.headers.items():
        if key not in HOP_BY_HOP:
            headers.add(key, value)
    headers[REQUEST_ID] = request_id
    return headers


def _subpath(request: web.Request, name: str) -> str:
    """What follows /fn/{name} in the raw (still percent-encoded) path, with the query."""
    raw = request.raw_path
    rest = raw[len("/fn/") + len(name) :]
    if not rest or rest[0] == "?":
        rest = "/" + rest
    return rest


@dataclass(frozen=True)
class CallResult:
    status: int
    headers: dict[str, str]
    body: bytes
    request_id: str
    cold: bool


class Invoker:
    def __init__(
        self,
        settings: Settings,
        scheduler: Scheduler,
        recorder: Recorder,
        limiter: RateLimiter | None = None,
        oom_killed: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        # Asks the backend whether a container was killed for using too much memory.
        self.oom_killed = oom_killed
        self.settings = settings
        self.scheduler = scheduler
        self.recorder = recorder
        self.limiter = limiter or RateLimiter()
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=None)
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def call(
        self,
        name: str,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        request_id: str | None = None,
    ) -> CallResult:
        """Invoke a function from inside Kapal (queue workers, jobs, schedules), buffered.

        Raises the same errors as the HTTP path: FunctionNotFound, UpstreamTimeout,
        UpstreamFailed, and scheduler errors (NoCapacity, StartFailed).
        """
        pool = self.scheduler.pool(name)
        if pool is None:
            raise FunctionNotFound(f"function {name} not found")
        assert self.session is not None
        request_id = request_id or uuid.uuid4().hex
        wall_start, t0 = time.time(), time.monotonic()
        acquired = await pool.acquire(t0 + self.settings.queue_timeout_s)
        inst = acquired.instance
        timeout = inst.spec.limits.timeout_s
        status = 502
        out = CIMultiDict({k: v for k, v in headers.items() if istr(k) not in HOP_BY_HOP})
        out[REQUEST_ID] = request_id
        out[DEADLINE] = f"{time.time() + timeout:.3f}"
        if not path_qs.startswith("/"):
            path_qs = "/" + path_qs
        try:
            try:
                async with asyncio.timeout(timeout):
                    async with self.session.request(
                        method,
                        URL(f"http://{inst.address}{path_qs}", encoded=True),
                        headers=out,
                        data=body or None,
                        allow_redirects=False,
                    ) as up:
                        status = up.status
                        if status == 504 and up.headers.get(RUNTIME_ERROR) == "timeout":
                            raise TimeoutError
                        data = await up.read()
                        return CallResult(
                            status,
                            dict(_response_headers(up, request_id)),
                            data,
                            request_id,
                            acquired.cold,
                        )
            except TimeoutError:
                status = 504
                pool.discard(inst, "timeout")
                raise UpstreamTimeout(
                    f"function {name} did not answer within {timeout:g}s"
                ) from None
            except aiohttp.ClientError as e:
                raise await self._lost(pool, inst, e) from None
        finally:
            pool.release(inst)
            self.recorder.add(
                InvocationRecord(
                    uuid.UUID(request_id),
                    name,
                    inst.version,
                    method,
                    path_qs[:512],
                    status,
                    acquired.cold,
                    inst.id,
                    datetime.fromtimestamp(wall_start, UTC),
                    (time.monotonic() - t0) * 1000,
                )
            )

    async def _lost(self, pool: Pool, inst: Instance, e: Exception) -> UpstreamFailed:
        """The error for an instance that failed mid-request; it is replaced."""
        name = inst.spec.name
        oom = False
        if self.oom_killed is not None and inst.container_id:
            try:  # before the discard removes the container and its state with it
                oom = await self.oom_killed(inst.container_id)
            except Exception as why:
                log.warning("instance not inspected", extra={"function": name, "error": str(why)})
        pool.discard(inst, "out of memory" if oom else f"request failed: {type(e).__name__}")
        if oom:
            err = UpstreamFailed(
                f"function {name} ran out of memory (limit {inst.spec.limits.memory_mb} MiB)"
                " and was killed; the instance has been replaced"
            )
            err.code = "out_of_memory"
            return err
        return UpstreamFailed(
            f"instance of {name} failed during the request ({type(e).__name__});"
            " it has been replaced"
        )

    async def _body(
        self, request: web.Request, overflow: list[bool]
    ) -> bytes | AsyncIterator[bytes] | None:
        """The body to forward; a streamed one appends to `overflow` when it passes the limit."""
        if not request.body_exists:
            return None
        length = request.content_length
        limit = self.settings.max_body_bytes
        if length is not None and length > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        if length is not None and length <= BUFFER_LIMIT:
            return await request.content.readexactly(length) if length else b""

        async def stream() -> AsyncIterator[bytes]:
            seen = 0
            async for chunk in request.content.iter_chunked(CHUNK):
                seen += len(chunk)
                if seen > limit:
                    # aiohttp's client wraps this in a ClientError: flag it for handle().
                    overflow.append(True)
                    raise PayloadTooLarge(f"request body is larger than {limit} bytes")
                yield chunk

        return stream()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        pool = self.scheduler.pool(name)
        # Unknown and private functions look the same to a caller without a key.
        if pool is None or not pool.spec.public:
            authorize(request, Scope.INVOKE)
        if pool is None:
            raise FunctionNotFound(f"function {name} not found")
        rate = pool.spec.limits.rps or self.settings.function_rps or None
        wait = self.limiter.take(f"fn:{name}", rate)
        if wait:
            raise RateLimited(
                f"function {name} is over its rate limit of {rate:g} requests/s",
                headers={"Retry-After": retry_after(wait)},
            )
        assert self.session is not None
        request_id = uuid.uuid4().hex
        wall_start = time.time()
        t0 = time.monotonic()
        acquired = await pool.acquire(t0 + self.settings.queue_timeout_s)
        inst = acquired.instance
        timeout = inst.spec.limits.timeout_s
        status = 502
        try:
            overflow: list[bool] = []
            body = await self._body(request, overflow)
            headers = _forward_headers(request, request_id, time.time() + timeout)
            url = URL(f"http://{inst.address}{_subpath(request, name)}", encoded=True)
            try:
                async with asyncio.timeout(timeout):
                    async with self.session.request(
                        request.method, url, headers=headers, data=body, allow_redirects=False
                    ) as up:
                        status = up.status
                        if status == 504 and up.headers.get(RUNTIME_ERROR) == "timeout":
                            # The handler is still running inside (a thread cannot be
                            # killed): this instance must go, as on our own timeout.
                            raise TimeoutError
                        out_headers = _response_headers(up, request_id)
                        if acquired.cold:
                            out_headers[COLD_START] = "new"
                        length = up.content_length
                        if length is not None and length <= BUFFER_LIMIT:
                            data = await up.read()
                            return web.Response(status=status, headers=out_headers, body=data)
                        resp = web.StreamResponse(status=status, headers=out_headers)
                        await resp.prepare(request)
                        async for chunk in up.content.iter_any():
                            await resp.write(chunk)
                        await resp.write_eof()
                        return resp
            except TimeoutError:
                status = 504
                pool.discard(inst, "timeout")
                raise UpstreamTimeout(
                    f"function {name} did not answer within {timeout:g}s"
                ) from None
            except aiohttp.ClientError as e:
                if overflow:  # the caller's fault, not the instance's
                    raise PayloadTooLarge(
                        f"request body is larger than {self.settings.max_body_bytes} bytes"
                    ) from None
                status = 502
                raise await self._lost(pool, inst, e) from None
        except PayloadTooLarge:
            status = 413
            raise
        finally:
            pool.release(inst)
            self.recorder.add(
                InvocationRecord(
                    uuid.UUID(request_id),
                    name,
                    inst.version,
                    request.method,
                    request.path[:512],
                    status,
                    acquired.cold,
                    inst.id,
                    datetime.fromtimestamp(wall_start, UTC),
                    (time.monotonic() - t0) * 1000,
                )
            )


def add_routes(app: web.Application, invoker: Invoker) -> None:
    @requires(SELF)  # public functions need no key; Invoker.handle decides
    async def invoke(request: web.Request) -> web.StreamResponse:
        return await invoker.handle(request)

    app.router.add_route("*", "/fn/{name}", invoke)
    app.router.add_route("*", "/fn/{name}/{path:.*}", invoke)
