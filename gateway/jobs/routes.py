"""Job routes: create (JSON or JSON Lines), status, streamed results, cancel."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import BadRequest, FunctionNotFound, InvalidRequest, NotFound, PayloadTooLarge
from gateway.jobs.progress import JobOut, job_out
from gateway.keys import Scope
from gateway.routing import UUID_ID, Content, Route
from gateway.services import Services
from gateway.validation import FunctionName, parse_query, validate

MAX_ITEMS = 1_000_000
MAX_JOB_BYTES = 48 * 1024 * 1024
NDJSON = ("application/x-ndjson", "application/jsonl", "application/json-lines")


class JobParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Function each item invokes (POST / with the item as its JSON body).
    function: FunctionName
    # Items of this job running at once; the function's async.concurrency applies too.
    max_concurrency: Annotated[int, Field(ge=1, le=10_000)] | None = None
    # Retries per item; the function's async.max_retries when absent.
    retries: Annotated[int, Field(ge=0, le=50)] | None = None


class JobIn(JobParams):
    # The items; each becomes one invocation.
    items: Annotated[list[Any], Field(min_length=1, max_length=MAX_ITEMS)]


class JobCreated(BaseModel):
    # The job's id.
    id: uuid.UUID
    # Items it holds.
    total: int
    # Where to follow it (also in the Location header).
    status_url: str


def _job_id(request: web.Request) -> uuid.UUID:
    raw = request.match_info["id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound(f"job {raw} not found") from None


def _ndjson_items(raw: bytes) -> list[bytes]:
    items: list[bytes] = []
    for n, line in enumerate(raw.splitlines()):
        line = line.strip()
        if not line:
            continue
        try:
            json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidRequest(f"items.{len(items)} (line {n + 1}): not valid JSON: {e}") from e
        items.append(line)
    if not items:
        raise InvalidRequest("items: at least one JSON line is required")
    if len(items) > MAX_ITEMS:
        raise InvalidRequest(f"items: at most {MAX_ITEMS} items")
    return items


async def create_job(request: web.Request, svc: Services) -> web.Response:
    queue = svc.queue
    if request.content_length is not None and request.content_length > MAX_JOB_BYTES:
        raise PayloadTooLarge(f"a job body may hold at most {MAX_JOB_BYTES} bytes")
    raw = await request.read()
    params: JobParams
    items: list[bytes]
    if request.content_type in NDJSON:
        params = parse_query(JobParams, request.query)
        items = _ndjson_items(raw)
    else:
        try:
            data = json.loads(raw) if raw else {}
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"body is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise InvalidRequest("body: must be a JSON object")
        job = validate(JobIn, data)
        params = job
        items = [json.dumps(item).encode() for item in job.items]
    if svc.catalog.get(params.function) is None:
        raise FunctionNotFound(f"function {params.function} not found")
    retries = params.retries
    if retries is None:
        retries = queue.manager.max_retries(params.function)
    id = await svc.jobs.create(params.function, items, params.max_concurrency, retries)
    location = f"/v1/jobs/{id}"
    return web.json_response(
        {"id": str(id), "total": len(items), "status_url": location},
        status=201,
        headers={"Location": location},
    )


async def get_job(request: web.Request, svc: Services) -> web.Response:
    jobs = svc.jobs
    id = _job_id(request)
    job = await jobs.get(id)
    out = job_out(job, await jobs.counts(id), datetime.now(UTC))
    return web.json_response(text=out.model_dump_json())


class JobListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Only this function's jobs.
    function: FunctionName | None = None
    # The newest this many.
    limit: Annotated[int, Field(ge=1, le=500)] = 50


class JobList(BaseModel):
    # Newest first.
    jobs: list[JobOut]


async def list_jobs(request: web.Request, svc: Services) -> web.Response:
    q = parse_query(JobListQuery, request.query)
    now = datetime.now(UTC)
    jobs = [job_out(job, counts, now) for job, counts in await svc.jobs.recent(q.function, q.limit)]
    return web.json_response(text=JobList(jobs=jobs).model_dump_json())


def result_line(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"index": row["item_index"], "status": row["status"]}
    body: bytes | None = row["result_body"]
    decoded: Any = None
    if body is not None:
        try:
            decoded = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            try:
                decoded = body.decode()
            except UnicodeDecodeError:
                decoded = {"base64": base64.b64encode(body).decode()}
    if row["status"] == "succeeded":
        out["result"] = decoded
    elif row["status"] in ("failed", "dead", "cancelled"):
        out["error"] = {
            "status": row["result_status"],
            "message": row["error"] or row["status"],
            "body": decoded,
        }
    return out


async def job_results(request: web.Request, svc: Services) -> web.StreamResponse:
    jobs = svc.jobs
    id = _job_id(request)
    await jobs.get(id)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    chunk: list[str] = []
    async for row in jobs.results(id):
        chunk.append(json.dumps(result_line(row)))
        if len(chunk) >= 500:
            await resp.write(("\n".join(chunk) + "\n").encode())
            chunk = []
    if chunk:
        await resp.write(("\n".join(chunk) + "\n").encode())
    await resp.write_eof()
    return resp


async def cancel_job(request: web.Request, svc: Services) -> web.Response:
    jobs = svc.jobs
    id = _job_id(request)
    await jobs.cancel(id)
    out = job_out(await jobs.get(id), await jobs.counts(id), datetime.now(UTC))
    return web.json_response(text=out.model_dump_json())


JOB_BODY = Content(
    {
        "application/json": {"schema": {"$ref": "#/components/schemas/JobIn"}},
        # One JSON item a line; the other fields in the query string.
        "application/x-ndjson": {"schema": {"type": "string"}},
    },
    models=(JobIn,),
    description="the items as JSON, or one item a line (JSON Lines, options in the query)",
)
RESULTS = Content(
    {"application/x-ndjson": {"schema": {"type": "string"}}},
    description="one line per finished item: index, status, result or error",
)

ROUTES = (
    Route(
        "POST",
        "/v1/jobs",
        create_job,
        "create a batch job: one queued invocation per item",
        scope=Scope.INVOKE,
        body=JOB_BODY,
        response=JobCreated,
        status=201,
        errors=(400, 404, 413, 422),
    ),
    Route(
        "GET",
        "/v1/jobs",
        list_jobs,
        "list batch jobs with their progress, newest first",
        scope=Scope.INVOKE,
        query=JobListQuery,
        response=JobList,
        errors=(422,),
    ),
    Route(
        "GET",
        "/v1/jobs/{id}",
        get_job,
        "a job's progress",
        scope=Scope.INVOKE,
        response=JobOut,
        errors=(404,),
        params=UUID_ID,
    ),
    Route(
        "GET",
        "/v1/jobs/{id}/results",
        job_results,
        "a job's results so far, streamed",
        scope=Scope.INVOKE,
        response=RESULTS,
        errors=(404,),
        params=UUID_ID,
    ),
    Route(
        "DELETE",
        "/v1/jobs/{id}",
        cancel_job,
        "cancel what has not run yet",
        scope=Scope.INVOKE,
        response=JobOut,
        errors=(404,),
        params=UUID_ID,
    ),
)
