"""Management API routes: functions (deploy, update, list, get, delete), keys, secrets, health."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ValidationError

from gateway.auth import bearer
from gateway.errors import BadRequest, Conflict, InvalidSpec, NotFound, PayloadTooLarge
from gateway.keys import ApiKey, Scope
from gateway.keys import parse as parse_key
from gateway.records import Recorder
from gateway.routing import OPEN, Content, Route
from gateway.services import Services
from gateway.store import FunctionRow
from gateway.validation import describe, parse_json
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
MAX_JSON_BYTES = 64 * 1024
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


async def create_function(request: web.Request, svc: Services) -> web.Response:
    spec, code = await read_deploy_body(request, svc.settings.max_code_bytes)
    if spec.name is None:
        raise InvalidSpec("name: field required")
    await svc.deployer.deploy(spec.name, spec, code, create=True)
    row = await svc.functions.get(spec.name)
    return web.json_response(function_out(row, svc.scheduler, svc.recorder), status=201)


async def update_function(request: web.Request, svc: Services) -> web.Response:
    name = _name(request)
    spec, code = await read_deploy_body(request, svc.settings.max_code_bytes)
    if spec.name is not None and spec.name != name:
        raise InvalidSpec(f"name: spec names {spec.name!r} but the URL names {name!r}")
    await svc.deployer.deploy(name, spec, code, create=False)
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
                "required": ["spec", "code"],
                "properties": {
                    "spec": {"$ref": "#/components/schemas/DeploySpec"},
                    "code": {"type": "string", "format": "binary"},
                },
            },
            "encoding": {"spec": {"contentType": "application/json"}},
        }
    },
    models=(DeploySpec,),
    description="spec: the function spec (JSON); code: a .zip or .tar.gz of its folder",
)
DEPLOY_ERRORS = (400, 404, 409, 413, 422)

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
        response=FunctionOut,
        status=201,
        errors=DEPLOY_ERRORS,
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
        response=FunctionOut,
        errors=DEPLOY_ERRORS,
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
