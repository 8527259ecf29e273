"""The invocation path: ANY /fn/{name}[/{path}] proxied to a warm instance.

Never touches the database: the function comes from the scheduler's in-memory pools and
the record goes to an in-memory batch.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, istr
from yarl import URL

from gateway.errors import FunctionNotFound, UpstreamFailed, UpstreamTimeout
from gateway.records import InvocationRecord, Recorder
from gateway.settings import Settings
from scheduler.scheduler import Scheduler

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


def _forward_headers(request: web.Request, request_id: str, deadline: float) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in request.headers.items():
        if key not in HOP_BY_HOP and key != REQUEST_ID and key != DEADLINE:
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
    def __init__(self, settings: Settings, scheduler: Scheduler, recorder: Recorder) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.recorder = recorder
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
                pool.discard(inst, f"request failed: {type(e).__name__}")
                raise UpstreamFailed(
                    f"instance of {name} failed during the request ({type(e).__name__})"
                ) from None
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
