"""The gateway's errors, and the one place that maps any error to what the caller sees.

Status and code are class attributes (the scheduler's errors carry them too); `problem`
finds how to render an error by walking its class's MRO, as Starlette does, and both
servers answer with what it returns.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from scheduler import errors as sched

log = logging.getLogger("kapal.gateway")


class KapalError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(KapalError):
    status, code = 400, "bad_request"


class InvalidSpec(KapalError):
    status, code = 422, "invalid_spec"


class InvalidRequest(KapalError):
    status, code = 422, "invalid_request"


class InvalidArchive(KapalError):
    status, code = 400, "invalid_archive"


class PayloadTooLarge(KapalError):
    status, code = 413, "payload_too_large"


class Unauthorized(KapalError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="kapal"'})


class Forbidden(KapalError):
    status, code = 403, "forbidden"


class RateLimited(KapalError):
    status, code = 429, "rate_limited"


class NotFound(KapalError):
    status, code = 404, "not_found"


class FunctionNotFound(KapalError):
    status, code = 404, "function_not_found"


class FunctionExists(KapalError):
    status, code = 409, "function_exists"


class VersionNotFound(KapalError):
    status, code = 404, "version_not_found"


class NoEarlierVersion(KapalError):
    status, code = 409, "no_earlier_version"


class Conflict(KapalError):
    status, code = 409, "conflict"


class UpstreamTimeout(KapalError):
    status, code = 504, "timeout"


class UpstreamFailed(KapalError):
    status, code = 502, "instance_failed"


class OutOfMemory(UpstreamFailed):
    status, code = 502, "out_of_memory"


class Unavailable(KapalError):
    status, code = 503, "unavailable"


@dataclass(frozen=True)
class Problem:
    """An error as the caller sees it."""

    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds to wait before trying again, when the error says so.
    retry_after_s: float | None = None
    # Not one of ours: a bug, worth a traceback in the logs.
    unexpected: bool = False


INTERNAL = Problem(500, "internal", "internal error; see the gateway's logs", unexpected=True)
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _kapal(e: KapalError) -> Problem:
    return Problem(e.status, e.code, e.message, e.headers)


def _scheduler(e: sched.SchedulerError) -> Problem:
    return Problem(e.status, e.code, str(e))


def _no_capacity(e: sched.NoCapacity) -> Problem:
    wait = str(max(1, round(e.retry_after_s)))
    return Problem(e.status, e.code, str(e), {"Retry-After": wait}, e.retry_after_s)


def _http(e: web.HTTPException) -> Problem:
    headers = {"Allow": e.headers.get("Allow", "")} if e.status == 405 else {}
    return Problem(e.status, HTTP_CODES.get(e.status, "http_error"), e.reason, headers)


def _internal(e: BaseException) -> Problem:
    return INTERNAL


# The renderer of an error is that of the nearest class in its MRO listed here.
RENDERERS: dict[type[BaseException], Callable[[Any], Problem]] = {
    KapalError: _kapal,
    sched.SchedulerError: _scheduler,
    sched.NoCapacity: _no_capacity,
    web.HTTPException: _http,
    BaseException: _internal,
}


def problem(exc: BaseException) -> Problem:
    """What the caller sees of `exc`."""
    for cls in type(exc).__mro__:
        render = RENDERERS.get(cls)
        if render is not None:
            return render(exc)
    return INTERNAL


def error_response(p: Problem) -> web.Response:
    return web.json_response(
        {"error": {"code": p.code, "message": p.message}}, status=p.status, headers=p.headers
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if isinstance(request.match_info.http_exception, web.HTTPNotFound):
            raise NotFound(f"no route for {request.method} {request.path}")
        return await handler(request)
    except Exception as e:
        if isinstance(e, web.HTTPException) and e.status < 400:
            raise  # a redirect, not an error
        p = problem(e)
        if p.unexpected:
            log.exception("unhandled error", extra={"method": request.method, "path": request.path})
        return error_response(p)
