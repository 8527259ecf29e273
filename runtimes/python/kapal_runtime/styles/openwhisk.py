"""OpenWhisk web actions, `main(args) -> dict`, run as OpenWhisk's controller runs them.

The arguments are those of a web action: query parameters and a JSON-object or form body
merged into `args` (the body's win), any other body in `__ow_body` (text as it is, binary
as base64), `__ow_method` (lower case), `__ow_headers` (lower-case names), `__ow_path`
(the path below the function, "" for its root); and `__ow_query`, the query string as a
raw-http web action receives it. The result is read as the `.http` extension reads it:
`statusCode`, `headers`, `body`; an `error` property is the response instead; a dict with
none of the three is answered as JSON (what the `.json` extension would send).
"""

import base64
import binascii
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from multidict import CIMultiDict

from kapal_runtime.event import Context, InvalidJSONBody
from kapal_runtime.handler import (
    CONTENT_TYPE,
    JSON_TYPE,
    InvalidReturnValue,
    Reply,
    response_headers,
    to_json,
)
from kapal_runtime.styles.adapter import CallStyle
from kapal_runtime.styles.request import HttpRequest, is_text

FORM_TYPE = "application/x-www-form-urlencoded"
# A string body without a Content-Type is sent as HTML, as OpenWhisk does.
HTML_TYPE = "text/html; charset=UTF-8"
_HTTP_FIELDS = ("statusCode", "headers", "body")


def prepare_environment(function: str, version: int, code_dir: Path) -> None:
    """The variables OpenWhisk's Python runtime sets for every action."""
    os.environ.setdefault("__OW_ACTION_NAME", f"/_/{function}")
    os.environ.setdefault("__OW_ACTION_VERSION", str(version))
    os.environ.setdefault("__OW_NAMESPACE", "_")


class OpenWhiskStyle(CallStyle):
    style = "openwhisk"

    def arguments(self, request: HttpRequest, context: Context) -> tuple[Any, ...]:
        # Per activation, as OpenWhisk's runtime sets them (the last one started wins when
        # an instance serves several at once).
        os.environ["__OW_ACTIVATION_ID"] = context.request_id
        os.environ["__OW_DEADLINE"] = str(int(context.deadline * 1000))
        return (web_action_args(request),)

    def reply(self, result: object) -> Reply:
        return web_action_reply(result)


def web_action_args(request: HttpRequest) -> dict[str, Any]:
    args: dict[str, Any] = dict(parse_qsl(request.query_string, keep_blank_values=True))
    if request.body:
        content_type = request.headers.get(CONTENT_TYPE, "")
        media = content_type.partition(";")[0].strip().lower()
        if media == JSON_TYPE or media.endswith("+json"):
            try:
                value = json.loads(request.body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidJSONBody(f"request body is not valid JSON: {exc}") from None
            if isinstance(value, dict):
                args.update(value)
            else:
                args["__ow_body"] = value
        elif media == FORM_TYPE:
            try:
                text = request.body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidJSONBody(f"form body is not UTF-8: {exc}") from None
            args.update(parse_qsl(text, keep_blank_values=True))
        else:
            args["__ow_body"] = _opaque_body(request.body, content_type)
    # The platform's own keys are set last: a request cannot override them.
    args["__ow_method"] = request.method.lower()
    args["__ow_headers"] = request.joined_headers()
    args["__ow_path"] = "" if request.path == "/" else request.path
    args["__ow_query"] = request.query_string
    return args


def _opaque_body(body: bytes, content_type: str) -> str:
    if is_text(content_type):
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii")


def web_action_reply(result: object) -> Reply:
    if not isinstance(result, Mapping):
        raise InvalidReturnValue(
            f"an OpenWhisk action must return a dict, not {type(result).__name__}"
        )
    if "error" in result:  # an application error: its value is the response
        result = result["error"]
        if not isinstance(result, Mapping):
            raise InvalidReturnValue("the action's error must be a dict to be an HTTP response")
    elif not any(field in result for field in _HTTP_FIELDS):
        return Reply(200, CIMultiDict({CONTENT_TYPE: JSON_TYPE}), to_json(result))
    status = _status(result.get("statusCode"))
    headers = _headers(result.get("headers"))
    body = result.get("body")
    if body is None or body == "":
        headers.popall(CONTENT_TYPE, None)  # an empty entity has no type
        return Reply(status or 204, headers, b"")
    if not isinstance(body, str):
        headers.setdefault(CONTENT_TYPE, JSON_TYPE)
        return Reply(status or 200, headers, to_json(body))
    headers.setdefault(CONTENT_TYPE, HTML_TYPE)
    if is_text(headers[CONTENT_TYPE]):
        return Reply(status or 200, headers, body.encode("utf-8"))
    try:  # a binary type: the body is base64
        return Reply(status or 200, headers, base64.b64decode(body, validate=True))
    except binascii.Error as exc:
        raise InvalidReturnValue(
            f"body of type {headers[CONTENT_TYPE]} is not base64: {exc}"
        ) from None


def _status(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if type(value) is not int or not 200 <= value <= 599:
        raise InvalidReturnValue(f"statusCode must be an int in 200..599, not {value!r}")
    return value


def _headers(value: object) -> CIMultiDict[str]:
    if value is not None and not isinstance(value, Mapping):
        raise InvalidReturnValue(f"headers must be a dict, not {type(value).__name__}")
    # OpenWhisk sends booleans as true/false; the rest is checked as every handler's is.
    return response_headers({k: _bools(v) for k, v in (value or {}).items()}, None)


def _bools(value: object) -> object:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return [_bools(item) for item in value]
    return value
