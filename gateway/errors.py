"""The gateway's errors, and the one place that maps every error to a JSON response."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

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


class InvalidArchive(KapalError):
    status, code = 400, "invalid_archive"


class PayloadTooLarge(KapalError):
    status, code = 413, "payload_too_large"


class FunctionNotFound(KapalError):
    status, code = 404, "function_not_found"


class NotFound(KapalError):
    status, code = 404, "not_found"


class Unauthorized(KapalError):
    status, code = 401, "unauthorized"


class InvalidRequest(KapalError):
    status, code = 422, "invalid_request"


class FunctionExists(KapalError):
    status, code = 409, "function_exists"


class Conflict(KapalError):
    status, code = 409, "conflict"


class BuildError(KapalError):
    status, code = 422, "build_failed"


class UpstreamTimeout(KapalError):
    status, code = 504, "timeout"


class UpstreamFailed(KapalError):
    status, code = 502, "instance_failed"


class Unavailable(KapalError):
    status, code = 503, "unavailable"


def from_scheduler(e: sched.SchedulerError) -> KapalError:
    """Scheduler errors, by kind, as the error the caller sees."""
    if isinstance(e, sched.NoCapacity):
        return Unavailable(str(e), headers={"Retry-After": str(max(1, round(e.retry_after_s)))})
    if isinstance(e, sched.StartFailed):
        err = UpstreamFailed(str(e))
        err.code = "start_failed"
        return err
    if isinstance(e, sched.BuildFailed):
        return BuildError(str(e))
    if isinstance(e, sched.UnknownFunction):
        return FunctionNotFound(f"function {e} not found")
    return KapalError(f"scheduler: {e}")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except sched.SchedulerError as e:
        err = from_scheduler(e)
        return error_response(err.status, err.code, err.message, err.headers)
    except KapalError as e:
        return error_response(e.status, e.code, e.message, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            e.status, "http_error"
        )
        message = e.reason if e.status != 404 else f"no route for {request.method} {request.path}"
        return error_response(
            e.status,
            code,
            message,
            {"Allow": e.headers.get("Allow", "")} if e.status == 405 else None,
        )
    except Exception:
        log.exception("unhandled error", extra={"method": request.method, "path": request.path})
        return error_response(500, "internal", "internal error; see the gateway's logs")
