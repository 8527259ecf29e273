"""Management API routes: functions (deploy, update, list, get, delete, versions, rollback),
keys, secrets, health."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Annotated, Any, TypeVar

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.auth import bearer
from gateway.deploy import Plan
from gateway.errors import (
    BadRequest,
    Conflict,
    InvalidRequest,
    InvalidSpec,
    NotFound,
    PayloadTooLarge,
    problem,
)
from gateway.keys import ApiKey, Scope
from gateway.keys import parse as parse_key
from gateway.records import Recorder
from gateway.routing import OPEN, Content, Route
from gateway.services import Services
from gateway.store import FunctionRow
from gateway.validation import describe, parse_json, parse_query
from gateway.wire import (
    DeploySpec,
    FunctionOut,
    InstanceOut,
    KeyCreate,
    KeyCreated,
    KeyOut,
    PoolStatus,
    SecretOut,
    SecretPut,
    VersionOut,
)
from scheduler.models import NAME_RE, FunctionConfig
from scheduler.scheduler import Scheduler

MAX_SPEC_BYTES = 256 * 1024
MAX_JSON_BYTES = 64 * 1024
NDJSON = "application/x-ndjson"
# On a deploy's answer: whether it made a version (false: skip_unchanged found none to make).
CREATED_HEADER = "X-Kapal-Version-Created"
M = TypeVar("M", bound=BaseModel)


class FunctionList(BaseModel):
    functions: list[FunctionOut]


class KeyList(BaseModel):
    keys: list[KeyOut]


class SecretList(BaseModel):
    secrets: list[SecretOut]


class SecretName(BaseModel):
    # The secret created or replaced.
    name: str


class Health(BaseModel):
    # Always "ok": the gateway answers.
    status: str


class ClusterOut(BaseModel):
    # The gateway that answered (host, process, random suffix).
    gateway: str
    # Whether it is the one that scales the pools of this namespace.
    leading: bool
    # The other gateways of this namespace heard from in the last seconds.
    peers: list[str]


async def read_json(request: web.Request, model: type[M]) -> M:
    """A JSON body as `model`: 400 when it is not JSON, 422 naming the field when invalid."""
    if request.content_type != "application/json":
        raise BadRequest("the body must be JSON (Content-Type: application/json)")
    return await parse_json(request, model, MAX_JSON_BYTES)


async def _read_part(part: BodyPartReader, limit: int, what: str) -> bytes:
    chunks, size = [], 0
    while chunk := await part.read_chunk(1 << 16):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{what} is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_deploy_body(request: web.Request, max_code: int) -> tuple[DeploySpec, bytes]:
    """The spec and code archive of a deploy: multipart `spec` + `code`, or for an image
    function the spec alone (as JSON, or a multipart `spec` part); its code is empty."""
    if request.content_type == "application/json":
        try:
            spec = await parse_json(request, DeploySpec, MAX_SPEC_BYTES)
        except InvalidRequest as e:  # a spec's fields, as a multipart deploy names them
            raise InvalidSpec(e.message) from e
        return _image_spec(spec), b""
    if not request.content_type.startswith("multipart/"):
        raise BadRequest(
            "deploy takes multipart/form-data with a 'spec' part (JSON) and a 'code' part"
            " (.zip or .tar.gz), or an image function's spec alone as JSON"
        )
    spec_raw: bytes | None = None
    code: bytes | None = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not supported")
            if part.name == "spec":
                spec_raw = await _read_part(part, MAX_SPEC_BYTES, "spec")
            elif part.name == "code":
                code = await _read_part(part, max_code, "code archive")
            else:
                raise BadRequest(f"unexpected form part {part.name!r}; expected spec and code")
    except (ValueError, AssertionError, HttpProcessingError) as e:
        raise BadRequest(f"malformed multipart body: {e}") from e
    if spec_raw is None:
        raise BadRequest("missing form part 'spec' (the function spec as JSON)")
    spec = _spec_of(spec_raw)
    if spec.image is not None:
        if code is not None:
            raise InvalidSpec("image: an image function takes no code archive")
        return spec, b""
    if code is None:
        raise BadRequest("missing form part 'code' (a .zip or .tar.gz of the function folder)")
    return spec, code


def _spec_of(raw: bytes) -> DeploySpec:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"spec is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise InvalidSpec("spec must be a JSON object")
    try:
        return DeploySpec.model_validate(data)
    except ValidationError as e:
        raise InvalidSpec(describe(e)) from e


def _image_spec(spec: DeploySpec) -> DeploySpec:
    if spec.image is None:
        raise BadRequest(
            "a JSON deploy is an image function's: give `image`, or deploy code as"
            " multipart/form-data with 'spec' and 'code' parts"
        )
    return spec


def function_out(row: FunctionRow, scheduler: Scheduler, recorder: Recorder) -> dict[str, Any]:
    spec = row.spec
    out = FunctionOut(
        **spec.model_dump(include=set(FunctionOut.model_fields)),
        created_at=row.created_at,
        updated_at=row.updated_at,
        invocations=row.invocations + recorder.pending_count(spec.name),
        versions=[
            VersionOut(version=v.version, image=v.image, created_at=v.created_at)
            for v in row.versions
        ],
        instances=[InstanceOut(**vars(i)) for i in scheduler.describe(spec.name)],
        pool=PoolStatus(**vars(status)) if (status := scheduler.status(spec.name)) else None,
    )
    return out.model_dump(mode="json", by_alias=True)


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not NAME_RE.match(name):
        raise BadRequest(f"{name!r} is not a valid function name")
    return name


class DeployQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A spec and code equal to the current version's build nothing and make no version.
    skip_unchanged: bool = False


def _wants_stream(request: web.Request) -> bool:
    return NDJSON in request.headers.get("Accept", "")


async def _deploy(
    request: web.Request, svc: Services, name: str | None, *, create: bool
) -> web.StreamResponse:
    """POST (create) or PUT (update): checked whole before the build starts; then built
    and answered at the end, or, asked for `application/x-ndjson`, streamed as it goes."""
    q = parse_query(DeployQuery, request.query)
    spec, code = await read_deploy_body(request, svc.settings.max_code_bytes)
    if name is None:
        if spec.name is None:
            raise InvalidSpec("name: field required")
        name = spec.name
    elif spec.name is not None and spec.name != name:
        raise InvalidSpec(f"name: spec names {spec.name!r} but the URL names {name!r}")
    ok = 201 if create else 200
    async with svc.deployer.plan(name, spec, code, create=create) as plan:
        if not _wants_stream(request):
            done = await svc.deployer.deploy(plan, skip_unchanged=q.skip_unchanged)
            row = await svc.functions.get(name)
            return web.json_response(
                function_out(row, svc.scheduler, svc.recorder),
                status=ok if done.created else 200,
                headers={CREATED_HEADER: str(done.created).lower()},
            )
        return await _deploy_streamed(request, svc, plan, q.skip_unchanged, ok)


async def _deploy_streamed(
    request: web.Request, svc: Services, plan: Plan, skip_unchanged: bool, ok: int
) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def say(event: dict[str, Any]) -> None:  # from the build's thread too
        loop.call_soon_threadsafe(events.put_nowait, event)

    async def run() -> None:
        try:
            done = await svc.deployer.deploy(plan, skip_unchanged=skip_unchanged, on_event=say)
            row = await svc.functions.get(plan.name)
            body = function_out(row, svc.scheduler, svc.recorder)
            say({"event": "done", "status": ok if done.created else 200, "function": body})
        except Exception as e:
            p = problem(e)
            say(
                {
                    "event": "error",
                    "status": p.status,
                    "error": {"code": p.code, "message": p.message},
                }
            )
        finally:
            loop.call_soon_threadsafe(events.put_nowait, None)

    response = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-store"})
    await response.prepare(request)
    # The deploy goes on if the client leaves: what was accepted is built and recorded.
    task = asyncio.create_task(run())
    gone = False
    try:
        while (event := await events.get()) is not None:
            if gone:
                continue
            try:
                await response.write(json.dumps(event, default=str).encode() + b"\n")
            except ConnectionResetError:
                gone = True
    finally:
        # The unpacked code lives until the build is done with it, even if we are cancelled.
        await asyncio.shield(task)
    if not gone:
        await response.write_eof()
    return response


async def create_function(request: web.Request, svc: Services) -> web.StreamResponse:
    return await _deploy(request, svc, None, create=True)


async def update_function(request: web.Request, svc: Services) -> web.StreamResponse:
    return await _deploy(request, svc, _name(request), create=False)


class VersionDetailOut(BaseModel):
    version: int
    image: str
    created_at: datetime
    # Digest of the code folder it was built from (same code, same digest).
    code_sha256: str
    # The version that serves now.
    current: bool
    spec: FunctionConfig


class VersionList(BaseModel):
    # Oldest first.
    versions: list[VersionDetailOut]


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The version to serve again; absent, the highest below the current one.
    version: Annotated[int, Field(ge=1)] | None = None


async def list_versions(request: web.Request, svc: Services) -> web.Response:
    versions = await svc.functions.versions(_name(request))
    out = VersionList(
        versions=[
            VersionDetailOut(
                version=v.spec.version,
                image=v.spec.image,
                created_at=v.created_at,
                code_sha256=v.code_sha256,
                current=v.current,
                spec=v.spec.config(),
            )
            for v in versions
        ]
    )
    return web.json_response(text=out.model_dump_json(by_alias=True))


async def rollback(request: web.Request, svc: Services) -> web.Response:
    name = _name(request)
    body = await read_json(request, RollbackIn)
    await svc.deployer.rollback(name, body.version)
    row = await svc.functions.get(name)
    return web.json_response(function_out(row, svc.scheduler, svc.recorder))


async def list_functions(request: web.Request, svc: Services) -> web.Response:
    rows = await svc.functions.all()
    return web.json_response(
        {"functions": [function_out(r, svc.scheduler, svc.recorder) for r in rows]}
    )


async def get_function(request: web.Request, svc: Services) -> web.Response:
    row = await svc.functions.get(_name(request))
    return web.json_response(function_out(row, svc.scheduler, svc.recorder))


async def delete_function(request: web.Request, svc: Services) -> web.Response:
    await svc.deployer.delete(_name(request))
    return web.Response(status=204)


async def healthz(request: web.Request, svc: Services) -> web.Response:
    return web.json_response({"status": "ok"})


async def cluster(request: web.Request, svc: Services) -> web.Response:
    c = svc.cluster
    out = ClusterOut(gateway=c.id, leading=c.leading, peers=c.peers())
    return web.json_response(out.model_dump())


def key_out(key: ApiKey) -> KeyOut:
    return KeyOut(
        id=key.id, name=key.name, scopes=sorted(key.scopes), rps=key.rps, created_at=key.created_at
    )


async def create_key(request: web.Request, svc: Services) -> web.Response:
    body = await read_json(request, KeyCreate)
    key, token = await svc.key_store.create(body.name, frozenset(body.scopes), body.rps)
    await svc.keys.refresh()
    out = KeyCreated(**key_out(key).model_dump(), key=token)
    return web.json_response(out.model_dump(mode="json"), status=201)


async def list_keys(request: web.Request, svc: Services) -> web.Response:
    keys = await svc.key_store.active()
    return web.json_response({"keys": [key_out(k).model_dump(mode="json") for k in keys]})


async def revoke_key(request: web.Request, svc: Services) -> web.Response:
    key_id = request.match_info["id"]
    own = parse_key(bearer(request.headers.get("Authorization")) or "")
    if own is not None and own[0] == key_id:
        # Revoking the key in hand would lock out whoever holds only that one.
        raise Conflict("a key cannot revoke itself; use another admin key")
    if not await svc.key_store.revoke(key_id):
        raise NotFound(f"no active API key {key_id!r}")
    await svc.keys.refresh()
    return web.Response(status=204)


async def put_secret(request: web.Request, svc: Services) -> web.Response:
    body = await read_json(request, SecretPut)
    created = await svc.secrets.store.put(body.name, body.value)
    await svc.catalog.remount_secrets()
    return web.json_response({"name": body.name}, status=201 if created else 200)


async def list_secrets(request: web.Request, svc: Services) -> web.Response:
    listed = await svc.secrets.store.all()
    out = [SecretOut(**vars(s)).model_dump(mode="json") for s in listed]
    return web.json_response({"secrets": out})


async def delete_secret(request: web.Request, svc: Services) -> web.Response:
    name = request.match_info["name"]
    if not await svc.secrets.delete(name):
        raise NotFound(f"no secret {name!r}")
    return web.Response(status=204)


NAME = {"name": {"type": "string", "pattern": NAME_RE.pattern}}
DEPLOY_BODY = Content(
    {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["spec"],
                "properties": {
                    "spec": {"$ref": "#/components/schemas/DeploySpec"},
                    "code": {
                        "type": "string",
                        "format": "binary",
                        "description": "required, except for an image function (none then)",
                    },
                },
            },
            "encoding": {"spec": {"contentType": "application/json"}},
        },
        # An image function: the spec alone.
        "application/json": {"schema": {"$ref": "#/components/schemas/DeploySpec"}},
    },
    models=(DeploySpec,),
    description="spec: the function spec (JSON); code: a .zip or .tar.gz of its folder."
    " An image function (`image` in the spec) sends its spec alone, as JSON",
)
DEPLOY_ERRORS = (400, 404, 409, 413, 422)
DEPLOY_HEADERS = {
    "Accept": {
        "type": "string",
        "description": f"{NDJSON}: stream the deploy's progress, one JSON event per line",
    }
}
DEPLOYED = Content(
    {
        "application/json": {"schema": {"$ref": "#/components/schemas/FunctionOut"}},
        NDJSON: {
            "schema": {
                "type": "string",
                "description": "events: started, build (one per output line), unchanged,"
                " built (resolved: an image function's pinned image), then done (with the"
                " status and the function) or error",
            }
        },
    },
    models=(FunctionOut,),
    description="the function, or (Accept: application/x-ndjson) the deploy's events",
)

ROUTES = (
    Route("GET", "/healthz", healthz, "the gateway is up", scope=OPEN, response=Health),
    Route(
        "GET",
        "/v1/cluster",
        cluster,
        "the gateway that answered and its peers",
        scope=Scope.ADMIN,
        response=ClusterOut,
    ),
    Route(
        "POST",
        "/v1/functions",
        create_function,
        "deploy a new function",
        scope=Scope.DEPLOY,
        body=DEPLOY_BODY,
        response=DEPLOYED,
        status=201,
        also=(200,),
        errors=DEPLOY_ERRORS,
        query=DeployQuery,
        headers=DEPLOY_HEADERS,
    ),
    Route(
        "GET",
        "/v1/functions",
        list_functions,
        "list functions",
        scope=Scope.DEPLOY,
        response=FunctionList,
    ),
    Route(
        "GET",
        "/v1/functions/{name}",
        get_function,
        "one function",
        scope=Scope.DEPLOY,
        response=FunctionOut,
        errors=(400, 404),
        params=NAME,
    ),
    Route(
        "PUT",
        "/v1/functions/{name}",
        update_function,
        "deploy a new version",
        scope=Scope.DEPLOY,
        body=DEPLOY_BODY,
        response=DEPLOYED,
        errors=DEPLOY_ERRORS,
        params=NAME,
        query=DeployQuery,
        headers=DEPLOY_HEADERS,
    ),
    Route(
        "GET",
        "/v1/functions/{name}/versions",
        list_versions,
        "a function's versions, oldest first, with the spec each was deployed with",
        scope=Scope.DEPLOY,
        response=VersionList,
        errors=(400, 404),
        params=NAME,
    ),
    Route(
        "POST",
        "/v1/functions/{name}/rollback",
        rollback,
        "serve an earlier version again (the one before the current by default)",
        scope=Scope.DEPLOY,
        body=RollbackIn,
        response=FunctionOut,
        errors=(400, 404, 409, 413, 422),
        params=NAME,
    ),
    Route(
        "DELETE",
        "/v1/functions/{name}",
        delete_function,
        "delete a function",
        scope=Scope.DEPLOY,
        status=204,
        errors=(400, 404),
        params=NAME,
    ),
    Route(
        "POST",
        "/v1/keys",
        create_key,
        "create an API key (shown once)",
        body=KeyCreate,
        response=KeyCreated,
        status=201,
        errors=(400, 413, 422),
    ),
    Route("GET", "/v1/keys", list_keys, "list API keys", response=KeyList),
    Route(
        "DELETE",
        "/v1/keys/{id}",
        revoke_key,
        "revoke an API key (not the one making the request)",
        status=204,
        errors=(404, 409),
    ),
    Route(
        "POST",
        "/v1/secrets",
        put_secret,
        "create (201) or replace (200) a secret",
        body=SecretPut,
        response=SecretName,
        status=201,
        also=(200,),
        errors=(400, 413, 422),
    ),
    Route("GET", "/v1/secrets", list_secrets, "list secrets (names only)", response=SecretList),
    Route(
        "DELETE",
        "/v1/secrets/{name}",
        delete_secret,
        "delete a secret",
        status=204,
        errors=(404, 409),
    ),
)
