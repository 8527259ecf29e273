"""Management API routes: deploy, update, list, get, delete, health."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ValidationError

from gateway import openapi
from gateway.auth import OPEN, keys_key, requires
from gateway.catalog import Catalog
from gateway.deploy import Deployer
from gateway.errors import BadRequest, InvalidSpec, NotFound, PayloadTooLarge
from gateway.invoke import Invoker
from gateway.keys import ApiKey, KeyStore, Scope
from gateway.records import Recorder
from gateway.settings import Settings
from gateway.store import FunctionRow, FunctionStore
from gateway.validation import describe, parse_json
from gateway.vault import Secrets
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
from scheduler.models import NAME_RE
from scheduler.scheduler import Scheduler

MAX_SPEC_BYTES = 256 * 1024

deployer_key = web.AppKey("deployer", Deployer)
store_key = web.AppKey("store", FunctionStore)
scheduler_key = web.AppKey("scheduler", Scheduler)
recorder_key = web.AppKey("recorder", Recorder)
settings_key = web.AppKey("settings", Settings)
invoker_key = web.AppKey("invoker", Invoker)
key_store_key = web.AppKey("key_store", KeyStore)
secrets_key = web.AppKey("secrets", Secrets)
catalog_key = web.AppKey("catalog", Catalog)
MAX_JSON_BYTES = 64 * 1024
OPENAPI = openapi.document()
M = TypeVar("M", bound=BaseModel)


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
    if not request.content_type.startswith("multipart/"):
        raise BadRequest(
            "deploy takes multipart/form-data with a 'spec' part (JSON) and a 'code' part"
            " (.zip or .tar.gz)"
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
    if code is None:
        raise BadRequest("missing form part 'code' (a .zip or .tar.gz of the function folder)")
    try:
        data = json.loads(spec_raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"spec is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise InvalidSpec("spec must be a JSON object")
    try:
        return DeploySpec.model_validate(data), code
    except ValidationError as e:
        raise InvalidSpec(describe(e)) from e


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


@requires(Scope.DEPLOY)
async def create_function(request: web.Request) -> web.Response:
    app = request.app
    spec, code = await read_deploy_body(request, app[settings_key].max_code_bytes)
    if spec.name is None:
        raise InvalidSpec("name: field required")
    await app[deployer_key].deploy(spec.name, spec, code, create=True)
    row = await app[store_key].get(spec.name)
    return web.json_response(function_out(row, app[scheduler_key], app[recorder_key]), status=201)


@requires(Scope.DEPLOY)
async def update_function(request: web.Request) -> web.Response:
    app = request.app
    name = _name(request)
    spec, code = await read_deploy_body(request, app[settings_key].max_code_bytes)
    if spec.name is not None and spec.name != name:
        raise InvalidSpec(f"name: spec names {spec.name!r} but the URL names {name!r}")
    await app[deployer_key].deploy(name, spec, code, create=False)
    row = await app[store_key].get(name)
    return web.json_response(function_out(row, app[scheduler_key], app[recorder_key]))


@requires(Scope.DEPLOY)
async def list_functions(request: web.Request) -> web.Response:
    app = request.app
    rows = await app[store_key].all()
    return web.json_response(
        {"functions": [function_out(r, app[scheduler_key], app[recorder_key]) for r in rows]}
    )


@requires(Scope.DEPLOY)
async def get_function(request: web.Request) -> web.Response:
    app = request.app
    row = await app[store_key].get(_name(request))
    return web.json_response(function_out(row, app[scheduler_key], app[recorder_key]))


@requires(Scope.DEPLOY)
async def delete_function(request: web.Request) -> web.Response:
    await request.app[deployer_key].delete(_name(request))
    return web.Response(status=204)


@requires(OPEN)
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


@requires(OPEN)
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def key_out(key: ApiKey) -> KeyOut:
    return KeyOut(
        id=key.id, name=key.name, scopes=sorted(key.scopes), rps=key.rps, created_at=key.created_at
    )


@requires(Scope.ADMIN)
async def create_key(request: web.Request) -> web.Response:
    body = await read_json(request, KeyCreate)
    key, token = await request.app[key_store_key].create(
        body.name, frozenset(body.scopes), body.rps
    )
    await request.app[keys_key].refresh()
    out = KeyCreated(**key_out(key).model_dump(), key=token)
    return web.json_response(out.model_dump(mode="json"), status=201)


@requires(Scope.ADMIN)
async def list_keys(request: web.Request) -> web.Response:
    keys = await request.app[key_store_key].active()
    return web.json_response({"keys": [key_out(k).model_dump(mode="json") for k in keys]})


@requires(Scope.ADMIN)
async def revoke_key(request: web.Request) -> web.Response:
    key_id = request.match_info["id"]
    if not await request.app[key_store_key].revoke(key_id):
        raise NotFound(f"no active API key {key_id!r}")
    await request.app[keys_key].refresh()
    return web.Response(status=204)


@requires(Scope.ADMIN)
async def put_secret(request: web.Request) -> web.Response:
    body = await read_json(request, SecretPut)
    created = await request.app[secrets_key].store.put(body.name, body.value)
    await request.app[catalog_key].remount_secrets()
    return web.json_response({"name": body.name}, status=201 if created else 200)


@requires(Scope.ADMIN)
async def list_secrets(request: web.Request) -> web.Response:
    listed = await request.app[secrets_key].store.all()
    out = [SecretOut(**vars(s)).model_dump(mode="json") for s in listed]
    return web.json_response({"secrets": out})


@requires(Scope.ADMIN)
async def delete_secret(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not await request.app[secrets_key].delete(name):
        raise NotFound(f"no secret {name!r}")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_post("/v1/functions", create_function)
    app.router.add_get("/v1/functions", list_functions)
    app.router.add_get("/v1/functions/{name}", get_function)
    app.router.add_put("/v1/functions/{name}", update_function)
    app.router.add_delete("/v1/functions/{name}", delete_function)
    app.router.add_post("/v1/keys", create_key)
    app.router.add_get("/v1/keys", list_keys)
    app.router.add_delete("/v1/keys/{id}", revoke_key)
    app.router.add_post("/v1/secrets", put_secret)
    app.router.add_get("/v1/secrets", list_secrets)
    app.router.add_delete("/v1/secrets/{name}", delete_secret)
