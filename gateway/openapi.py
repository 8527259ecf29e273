"""The OpenAPI 3.1 description of every route, built from the pydantic wire models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from gateway.wire import (
    DeploySpec,
    FunctionOut,
    KeyCreate,
    KeyCreated,
    KeyOut,
    SecretOut,
    SecretPut,
)

REF = "#/components/schemas/{model}"
MODELS: tuple[type[BaseModel], ...] = (
    DeploySpec,
    FunctionOut,
    KeyCreate,
    KeyCreated,
    KeyOut,
    SecretPut,
    SecretOut,
)
INVOKE_METHODS = ("get", "post", "put", "patch", "delete")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "malformed request",
        401: "no API key, or an unknown one",
        403: "the key lacks the scope",
        404: "not found",
        409: "conflict",
        413: "body too large",
        422: "invalid field (the message names it)",
        429: "rate limited (see Retry-After)",
    }
    return {str(s): _json(_ref("Error"), text[s]) for s in statuses}


def _list(key: str, item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": [key],
        "properties": {key: {"type": "array", "items": _ref(item)}},
    }


def _path_param(name: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    scope: str | None = "admin",
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if scope is None:
        op["security"] = []
    else:
        op["description"] = f"Needs an API key with the `{scope}` scope (or `admin`)."
        op["responses"] = {**_errors(401, 403, 429), **responses}
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    return op


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in MODELS:
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    }
    return schemas


def document() -> dict[str, Any]:
    name = _path_param("name", r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    deploy_body = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["spec", "code"],
                    "properties": {
                        "spec": _ref("DeploySpec"),
                        "code": {"type": "string", "format": "binary"},
                    },
                },
                "encoding": {"spec": {"contentType": "application/json"}},
            }
        },
    }
    function = _json(_ref("FunctionOut"), "the function")
    deploy_errors = _errors(400, 404, 409, 413, 422)
    any_answer = {"description": "the function's answer, or a Kapal error"}
    invoke_op = _op(
        "invoke a function (public ones need no key)",
        {"default": any_answer},
        scope="invoke",
        params=[name],
    )
    invoke_sub = {**invoke_op, "parameters": [name, _path_param("path")]}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Kapal gateway", "version": "1"},
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/healthz": {
                "get": _op(
                    "the gateway is up",
                    {"200": _json({"type": "object"}, "up")},
                    scope=None,
                )
            },
            "/openapi.json": {
                "get": _op(
                    "this document", {"200": _json({"type": "object"}, "OpenAPI")}, scope=None
                )
            },
            "/v1/functions": {
                "get": _op(
                    "list functions",
                    {"200": _json(_list("functions", "FunctionOut"), "functions")},
                    scope="deploy",
                ),
                "post": _op(
                    "deploy a new function",
                    {"201": function, **deploy_errors},
                    scope="deploy",
                    body=deploy_body,
                ),
            },
            "/v1/functions/{name}": {
                "get": _op(
                    "one function",
                    {"200": function, **_errors(400, 404)},
                    scope="deploy",
                    params=[name],
                ),
                "put": _op(
                    "deploy a new version",
                    {"200": function, **deploy_errors},
                    scope="deploy",
                    body=deploy_body,
                    params=[name],
                ),
                "delete": _op(
                    "delete a function",
                    {"204": {"description": "deleted"}, **_errors(400, 404)},
                    scope="deploy",
                    params=[name],
                ),
            },
            "/v1/keys": {
                "get": _op("list API keys", {"200": _json(_list("keys", "KeyOut"), "keys")}),
                "post": _op(
                    "create an API key (shown once)",
                    {"201": _json(_ref("KeyCreated"), "the new key"), **_errors(400, 413, 422)},
                    body={"required": True, **_json(_ref("KeyCreate"), "the key")},
                ),
            },
            "/v1/keys/{id}": {
                "delete": _op(
                    "revoke an API key",
                    {"204": {"description": "revoked"}, **_errors(404)},
                    params=[_path_param("id")],
                )
            },
            "/v1/secrets": {
                "get": _op(
                    "list secrets (names only)",
                    {"200": _json(_list("secrets", "SecretOut"), "secrets")},
                ),
                "post": _op(
                    "create or replace a secret",
                    {
                        "200": _json({"type": "object"}, "replaced"),
                        "201": _json({"type": "object"}, "created"),
                        **_errors(400, 413, 422),
                    },
                    body={"required": True, **_json(_ref("SecretPut"), "the secret")},
                ),
            },
            "/v1/secrets/{name}": {
                "delete": _op(
                    "delete a secret",
                    {"204": {"description": "deleted"}, **_errors(404, 409)},
                    params=[_path_param("name")],
                )
            },
            "/fn/{name}": dict.fromkeys(INVOKE_METHODS, invoke_op),
            "/fn/{name}/{path}": dict.fromkeys(INVOKE_METHODS, invoke_sub),
        },
    }
