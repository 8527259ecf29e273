"""Routes of async invocations: accept (202), look up, re-drive."""

from __future__ import annotations

import uuid
from typing import Annotated

from aiohttp import web
from multidict import istr
from pydantic import BaseModel, ConfigDict, Field
from yarl import URL

from gateway.auth import SELF, authorize, requires
from gateway.errors import BadRequest, NotFound, PayloadTooLarge
from gateway.keys import KEY_RE, Scope
from gateway.queue.models import Headers, storable
from gateway.queue.retry import State
from gateway.queue.service import queue_key
from gateway.upstream import HOP_BY_HOP as RAW_HOP_BY_HOP
from gateway.validation import parse_query

CALLBACK_URL = istr("X-Callback-Url")
IDEMPOTENCY_KEY = istr("Idempotency-Key")
MAX_KEY = 255
# Headers the platform sets itself on every attempt.
_NOT_STORED = {istr(h.decode()) for h in RAW_HOP_BY_HOP} | {
    istr("Host"),
    CALLBACK_URL,
    istr("X-Kapal-Request-Id"),
    istr("X-Kapal-Deadline"),
}
AUTHORIZATION = istr("Authorization")


def _is_kapal_key(value: str) -> bool:
    scheme, _, token = value.partition(" ")
    return scheme.lower() == "bearer" and KEY_RE.match(token.strip()) is not None


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def stored_headers(request: web.Request) -> Headers:
    """What the function will receive; the caller's Kapal key is for Kapal, never stored."""
    return [
        (k, storable(v))
        for k, v in request.headers.items()
        if istr(k) not in _NOT_STORED and not (k == AUTHORIZATION and _is_kapal_key(v))
    ]


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is not None and not 0 < len(key) <= MAX_KEY:
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_KEY} characters")
    return key


def callback_url(request: web.Request) -> str | None:
    raw = request.headers.get(CALLBACK_URL)
    if raw is None:
        return None
    try:
        url = URL(raw)
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host or len(raw) > 2048:
        raise BadRequest("X-Callback-Url must be an absolute http(s) URL")
    return raw


def parse_id(request: web.Request, what: str = "invocation") -> uuid.UUID:
    raw = request.match_info["id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound(f"{what} {raw} not found") from None


def accepted(id: uuid.UUID) -> web.Response:
    location = f"/v1/invocations/{id}"
    return web.json_response(
        {"id": str(id), "status_url": location}, status=202, headers={"Location": location}
    )


@requires(SELF)  # public functions need no key
async def async_invoke(request: web.Request) -> web.Response:
    queue = request.app[queue_key]
    name = request.match_info["name"]
    pool = queue.scheduler.pool(name)
    # Unknown and private functions look the same to a caller without a key.
    if pool is None or not pool.spec.public:
        authorize(request, Scope.INVOKE)
    max_retries = queue.manager.max_retries(name)  # 404 before anything is read or stored
    body = await read_body(request, queue.settings.queue_max_body_bytes)
    rest = request.raw_path[len("/async/fn/") + len(name) :]
    if not rest or rest[0] == "?":
        rest = "/" + rest
    id = await queue.manager.enqueue(
        name,
        request.method,
        rest,
        stored_headers(request),
        body,
        idempotency_key=idempotency_key(request),
        callback_url=callback_url(request),
        max_retries=max_retries,
    )
    return accepted(id)


@requires(Scope.INVOKE)
async def get_invocation(request: web.Request) -> web.Response:
    out = await request.app[queue_key].manager.get(parse_id(request))
    return web.json_response(text=out.model_dump_json())


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Only this function's invocations.
    function: str | None = None
    # Only those in this state (e.g. dead: the dead letters).
    status: State | None = None
    # Most invocations answered, newest first.
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


@requires(Scope.INVOKE)
async def list_invocations(request: web.Request) -> web.Response:
    q = parse_query(ListQuery, request.query)
    found = await request.app[queue_key].manager.find(
        q.function, None if q.status is None else q.status.value, q.limit
    )
    items = ",".join(i.model_dump_json() for i in found)
    return web.json_response(text='{"invocations": [' + items + "]}")


@requires(Scope.INVOKE)
async def retry_invocation(request: web.Request) -> web.Response:
    out = await request.app[queue_key].manager.redrive(parse_id(request))
    return web.json_response(text=out.model_dump_json(), status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_route("*", "/async/fn/{name}", async_invoke)
    app.router.add_route("*", "/async/fn/{name}/{path:.*}", async_invoke)
    app.router.add_get("/v1/invocations", list_invocations)
    app.router.add_get("/v1/invocations/{id}", get_invocation)
    app.router.add_post("/v1/invocations/{id}/retry", retry_invocation)
