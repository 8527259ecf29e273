"""The one shape of every answer the runtime gives when it cannot do what was asked."""

import json

from aiohttp import web

REQUEST_ID = "X-Kapal-Request-Id"
ERROR_KIND = "X-Kapal-Error"

# Every error the runtime answers: code -> (HTTP status, X-Kapal-Error value).
ERRORS: dict[str, tuple[int, str]] = {
    "handler_error": (500, "handler"),
    "handler_load_failed": (500, "load"),
    "init_failed": (500, "init"),
    "timeout": (504, "timeout"),
    "busy": (503, "busy"),
    "invalid_json": (400, "request"),
    "invalid_parameter": (400, "request"),
    "body_too_large": (413, "request"),
    "not_initialized": (503, "init"),
    "invalid_init": (400, "init"),
    "already_initialized": (409, "init"),
    "not_found": (404, "runtime"),
    "method_not_allowed": (405, "runtime"),
    "websocket_not_supported": (400, "request"),
    "invalid_websocket": (400, "request"),
    "websocket_refused": (403, "request"),
}


def error(
    code: str, message: str, request_id: str, headers: dict[str, str] | None = None
) -> web.Response:
    """{"error": {"code", "message", "request_id"}}, its status and X-Kapal-Error."""
    status, kind = ERRORS[code]
    payload = {"error": {"code": code, "message": message, "request_id": request_id}}
    body = json.dumps(payload, separators=(",", ":")).encode()
    response = json_response(status, body, request_id)
    response.headers[ERROR_KIND] = kind
    if headers:
        response.headers.update(headers)
    return response


def not_allowed(allow: str, request_id: str) -> web.Response:
    return error("method_not_allowed", f"use {allow}", request_id, {"Allow": allow})


def json_response(status: int, body: bytes, request_id: str) -> web.Response:
    response = web.Response(status=status, body=body, content_type="application/json")
    response.headers[REQUEST_ID] = request_id
    return response
