"""Routes of async invocations: accept (202), look up, re-drive."""

from __future__ import annotations

import uuid
from typing import Annotated

from aiohttp import web
from multidict import istr
from pydantic import BaseModel, ConfigDict, Field
from yarl import URL

from gateway.errors import BadRequest, NotFound, PayloadTooLarge
from gateway.keys import KEY_RE, Scope
from gateway.queue.models import Headers, InvocationOut, storable
from gateway.queue.retry import State
from gateway.routing import ANY_METHOD, SELF, UUID_ID, Content, Route
from gateway.services import Services
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


class Accepted(BaseModel):
    # The invocation's id.
    id: uuid.UUID
    # Where to look it up (also in the Location header).
    status_url: str


class InvocationList(BaseModel):
    invocations: list[InvocationOut]


def accepted(id: uuid.UUID) -> web.Response:
    location = f"/v1/invocations/{id}"
    return web.json_response(
        {"id": str(id), "status_url": location}, status=202, headers={"Location": location}
    )


async def async_invoke(request: web.Request, svc: Services) -> web.Response:
    queue = svc.queue
    name = request.match_info["name"]
    spec = svc.catalog.get(name)
    # Unknown and private functions look the same to a caller without a key.
    if spec is None or not spec.public:
        svc.gate.authorize(request.headers.get("Authorization"), Scope.INVOKE)
    max_retries = queue.manager.max_retries(name)  # 404 before anything is read or stored
    body = await read_body(request, svc.settings.queue_max_body_bytes)
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


async def get_invocation(request: web.Request, svc: Services) -> web.Response:
    out = await svc.queue.manager.get(parse_id(request))
    return web.json_response(text=out.model_dump_json())


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Only this function's invocations.
    function: str | None = None
    # Only those in this state (e.g. dead: the dead letters).
    status: State | None = None
    # Most invocations answered, newest first.
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


async def list_invocations(request: web.Request, svc: Services) -> web.Response:
    q = parse_query(ListQuery, request.query)
    found = await svc.queue.manager.find(
        q.function, None if q.status is None else q.status.value, q.limit
    )
    items = ",".join(i.model_dump_json() for i in found)
    return web.json_response(text='{"invocations": [' + items + "]}")


async def retry_invocation(request: web.Request, svc: Services) -> web.Response:
    out = await svc.queue.manager.redrive(parse_id(request))
    return web.json_response(text=out.model_dump_json(), status=202)


# The request is stored as it came: any method, any body, any content type.
ANY_BODY = Content(
    {"*/*": {"schema": {}}}, description="passed to the function as sent", required=False
)
ASYNC_HEADERS: dict[str, dict[str, object]] = {
    IDEMPOTENCY_KEY: {"type": "string", "minLength": 1, "maxLength": MAX_KEY},
    CALLBACK_URL: {"type": "string", "format": "uri"},
}


def _async_route(path: str) -> Route:
    return Route(
        ANY_METHOD,
        path,
        async_invoke,
        "queue an invocation; 202 with its id (public functions need no key)",
        scope=SELF,
        body=ANY_BODY,
        response=Accepted,
        status=202,
        errors=(400, 404, 413, 503),
        headers=ASYNC_HEADERS,
    )


ROUTES = (
    _async_route("/async/fn/{name}"),
    _async_route("/async/fn/{name}/{path:.*}"),
    Route(
        "GET",
        "/v1/invocations",
        list_invocations,
        "list queued invocations, newest first",
        scope=Scope.INVOKE,
        response=InvocationList,
        errors=(422,),
        query=ListQuery,
    ),
    Route(
        "GET",
        "/v1/invocations/{id}",
        get_invocation,
        "one queued invocation: state, attempts, result",
        scope=Scope.INVOKE,
        response=InvocationOut,
        errors=(404,),
        params=UUID_ID,
    ),
    Route(
        "POST",
        "/v1/invocations/{id}/retry",
        retry_invocation,
        "run a failed or dead invocation again",
        scope=Scope.INVOKE,
        response=InvocationOut,
        status=202,
        errors=(404, 409),
        params=UUID_ID,
    ),
)
