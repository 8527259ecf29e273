"""AWS Lambda handlers, `handler(event, context)`, behind an HTTP endpoint as AWS runs them.

`lambda`: the event of an API Gateway HTTP API or a function URL (payload format 2.0);
`lambda-v1`: the event of an API Gateway REST API proxy integration (format 1.0). The
context object and the environment variables are those of AWS's Python runtime; the
answer is read as API Gateway reads it for each format.
"""

import base64
import binascii
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from multidict import CIMultiDict

from kapal_runtime.event import Context
from kapal_runtime.handler import (
    CONTENT_TYPE,
    JSON_TYPE,
    InvalidReturnValue,
    Reply,
    header_value,
    response_headers,
    to_json,
)
from kapal_runtime.styles.adapter import CallStyle
from kapal_runtime.styles.request import HttpRequest, is_text

# No AWS account is involved: ARNs and request contexts carry this one.
ACCOUNT_ID = "000000000000"
STAGE = "$default"


class LambdaContext:
    """The `context` of AWS's Python runtime (awslambdaric), field for field."""

    __slots__ = (
        "_deadline",
        "aws_request_id",
        "client_context",
        "function_name",
        "function_version",
        "identity",
        "invoked_function_arn",
        "log_group_name",
        "log_stream_name",
        "memory_limit_in_mb",
    )

    def __init__(self, context: Context) -> None:
        env = os.environ
        self.aws_request_id = context.request_id
        self.function_name = context.function_name
        # Strings, as AWS's runtime reads them from its environment.
        self.function_version = str(context.version)
        self.memory_limit_in_mb = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.invoked_function_arn = arn(context.function_name)
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME")
        # Cognito identity and mobile client context: never set behind HTTP.
        self.identity = None
        self.client_context = None
        self._deadline = context.deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))

    def __repr__(self) -> str:
        return f"<LambdaContext {self.function_name} aws_request_id={self.aws_request_id}>"


def arn(function: str) -> str:
    region = os.environ.get("AWS_REGION", "local")
    return f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{function}"


def prepare_environment(function: str, version: int, code_dir: Path) -> None:
    """AWS's runtime variables, set before the handler's module is imported (many read them
    at import); values the function sets itself are kept."""
    env = os.environ
    defaults = {
        "AWS_LAMBDA_FUNCTION_NAME": function,
        "AWS_LAMBDA_FUNCTION_VERSION": str(version),
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_limit_mb()),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function}",
        "AWS_LAMBDA_LOG_STREAM_NAME": f"{time.strftime('%Y/%m/%d')}/[{version}]"
        + socket.gethostname(),
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
        "LAMBDA_TASK_ROOT": str(code_dir),
    }
    for key, value in defaults.items():
        env.setdefault(key, value)


def memory_limit_mb() -> int:
    """The container's memory limit (cgroup v2, then v1), or 128 when there is none."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as file:
                raw = file.read().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 50:  # v1 says "unlimited" with a huge number
            return int(raw) // (1024 * 1024)
    return 128


class LambdaStyle(CallStyle):
    """API Gateway HTTP API / function URL, payload format 2.0."""

    style = "lambda"

    def arguments(self, request: HttpRequest, context: Context) -> tuple[Any, ...]:
        return v2_event(request, context.request_id, time.time()), LambdaContext(context)

    def reply(self, result: object) -> Reply:
        return v2_reply(result)


class LambdaV1Style(CallStyle):
    """API Gateway REST API proxy integration, payload format 1.0."""

    style = "lambda-v1"

    def arguments(self, request: HttpRequest, context: Context) -> tuple[Any, ...]:
        return v1_event(request, context.request_id, time.time()), LambdaContext(context)

    def reply(self, result: object) -> Reply:
        return v1_reply(result)


# --- events ----------------------------------------------------------------------------


def v2_event(request: HttpRequest, request_id: str, now: float) -> dict[str, Any]:
    """Format 2.0: lower-case headers with repeated values joined by commas, cookies apart,
    query values joined by commas; keys without a value are left out, as AWS does."""
    headers = request.joined_headers()
    cookie = headers.pop("cookie", None)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": request.raw_path,
        "rawQueryString": request.query_string,
    }
    if cookie:
        event["cookies"] = [c for c in cookie.split("; ") if c]
    event["headers"] = headers
    query = _query(request.query_string)
    if query:
        event["queryStringParameters"] = {k: ",".join(v) for k, v in query.items()}
    host = headers.get("host", "localhost")
    event["requestContext"] = {
        "accountId": ACCOUNT_ID,
        "apiId": host.partition(".")[0],
        "domainName": host,
        "domainPrefix": host.partition(".")[0],
        "http": {
            "method": request.method,
            "path": request.path,
            "protocol": f"HTTP/{request.http_version}",
            "sourceIp": request.source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": "$default",
        "stage": STAGE,
        "time": _clf_time(now),
        "timeEpoch": int(now * 1000),
    }
    if request.body:
        event["body"], event["isBase64Encoded"] = _body(request)
    else:
        event["isBase64Encoded"] = False
    return event


def v1_event(request: HttpRequest, request_id: str, now: float) -> dict[str, Any]:
    """Format 1.0: headers as sent, the last value in `headers` and all of them in
    `multiValueHeaders` (same for the query); absent ones are null. The function is
    reached through a greedy `/{proxy+}` resource, as a REST API proxying every path."""
    headers: dict[str, str] = {}
    multi_headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        headers[name] = value
        multi_headers.setdefault(name, []).append(value)
    query = _query(request.query_string)
    user_agent = request.headers.get("User-Agent")
    host = request.headers.get("Host", "localhost")
    proxied = request.path != "/"
    resource = "/{proxy+}" if proxied else "/"
    body, encoded = _body(request) if request.body else (None, False)
    return {
        "version": "1.0",
        "resource": resource,
        # As sent, percent-encoded, as REST APIs pass it (path parameters are decoded).
        "path": request.raw_path,
        "httpMethod": request.method,
        "headers": headers or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
        "multiValueQueryStringParameters": query or None,
        "pathParameters": {"proxy": request.path[1:]} if proxied else None,
        "stageVariables": None,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": host.partition(".")[0],
            "domainName": host,
            "domainPrefix": host.partition(".")[0],
            "extendedRequestId": request_id,
            "httpMethod": request.method,
            "identity": {
                "accessKey": None,
                "accountId": None,
                "caller": None,
                "cognitoAuthenticationProvider": None,
                "cognitoAuthenticationType": None,
                "cognitoIdentityId": None,
                "cognitoIdentityPoolId": None,
                "principalOrgId": None,
                "sourceIp": request.source_ip,
                "user": None,
                "userAgent": user_agent,
                "userArn": None,
            },
            "path": request.raw_path,
            "protocol": f"HTTP/{request.http_version}",
            "requestId": request_id,
            "requestTime": _clf_time(now),
            "requestTimeEpoch": int(now * 1000),
            "resourceId": None,
            "resourcePath": resource,
            "stage": STAGE,
        },
        "body": body,
        "isBase64Encoded": encoded,
    }


def _query(query_string: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for key, value in parse_qsl(query_string, keep_blank_values=True):
        values.setdefault(key, []).append(value)
    return values


def _body(request: HttpRequest) -> tuple[str, bool]:
    """Text bodies as they are, anything else base64, as function URLs send them."""
    if is_text(request.headers.get(CONTENT_TYPE)):
        try:
            return request.body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(request.body).decode("ascii"), True


def _clf_time(now: float) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now))


# --- answers ---------------------------------------------------------------------------


def v2_reply(result: object) -> Reply:
    """A dict with `statusCode` is the response; anything else is the JSON body of a 200
    (a str too: API Gateway sends it quoted)."""
    if isinstance(result, Mapping) and "statusCode" in result:
        return _response(result, cookies=True)
    return Reply(200, CIMultiDict({CONTENT_TYPE: JSON_TYPE}), to_json(result))


def v1_reply(result: object) -> Reply:
    """Only a dict with `statusCode` is a response: API Gateway answers anything else
    "502 Malformed Lambda proxy response", here a handler error naming what was wrong."""
    if not isinstance(result, Mapping) or "statusCode" not in result:
        raise InvalidReturnValue(
            "a lambda-v1 handler must return a dict with statusCode "
            f"(API Gateway: malformed Lambda proxy response), not {type(result).__name__}"
        )
    return _response(result, cookies=False)


def _response(result: Mapping[str, Any], cookies: bool) -> Reply:
    status = result["statusCode"]
    if type(status) is not int or not 200 <= status <= 599:
        raise InvalidReturnValue(f"statusCode must be an int in 200..599, not {status!r}")
    # With both, a name in multiValueHeaders replaces the same one in headers (API Gateway).
    single = result.get("headers") or {}
    multi = result.get("multiValueHeaders") or {}
    if not isinstance(single, Mapping):
        raise InvalidReturnValue(f"headers must be a dict, not {type(single).__name__}")
    if isinstance(multi, Mapping):
        replaced = {name.lower() for name in multi if isinstance(name, str)}
        single = {k: v for k, v in single.items() if str(k).lower() not in replaced}
    headers = response_headers(single, multi)
    if cookies:
        for cookie in result.get("cookies") or ():
            headers.add("Set-Cookie", header_value("Set-Cookie", cookie))
    headers.setdefault(CONTENT_TYPE, JSON_TYPE)
    body = result.get("body")
    if body is None:
        return Reply(status, headers, b"")
    if result.get("isBase64Encoded"):
        if not isinstance(body, str):
            raise InvalidReturnValue("isBase64Encoded needs a str body")
        try:
            return Reply(status, headers, base64.b64decode(body, validate=True))
        except binascii.Error as exc:
            raise InvalidReturnValue(f"body is not valid base64: {exc}") from None
    if isinstance(body, str):
        return Reply(status, headers, body.encode("utf-8"))
    # API Gateway wants a string; a JSON value is sent as JSON rather than refused.
    return Reply(status, headers, to_json(body))
