"""Handler styles of the Python runtime: each platform's event, context and answer mapping,
detection, and the WSGI/ASGI adapters driven with plain apps (no framework installed)."""

import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from runtime_python_support import RUNTIME_DIR

if str(RUNTIME_DIR) not in sys.path:
    sys.path.append(str(RUNTIME_DIR))

from kapal_runtime import bundle, config, handler, styles
from kapal_runtime.event import Context, InvalidJSONBody
from kapal_runtime.styles import asgi, lambda_, openwhisk, wsgi
from kapal_runtime.styles.request import HttpRequest, is_text, source_ip
from kapal_runtime.threads import HandlerThreads

NOW = 1765000000.5  # 2025-12-06 05:46:40.5 UTC


@pytest.fixture(autouse=True)
def own_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Styles set their platform's variables (AWS_LAMBDA_*, __OW_*): in a copy, not ours."""
    monkeypatch.setattr(os, "environ", dict(os.environ))


@pytest.fixture
def code_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A function folder; loading imports from it and moves into it: both undone after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    for name in ("detected_mod", "shaped_mod", "main__"):
        sys.modules.pop(name, None)


def request(
    method: str = "GET",
    path: str = "/",
    query: str = "",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    raw_path: str | None = None,
) -> HttpRequest:
    return HttpRequest(
        method=method,
        path=path,
        raw_path=raw_path if raw_path is not None else path,
        query_string=query,
        headers=CIMultiDictProxy(CIMultiDict(headers or [("Host", "kapal")])),
        body=body,
        source_ip="203.0.113.9",
        http_version="1.1",
    )


def context(deadline: float = NOW + 30) -> Context:
    return Context("shop", 4, "req-1", deadline)


def reply_of(reply: handler.Reply) -> tuple[int, dict[str, str], bytes]:
    return reply.status, dict(reply.headers), reply.body


# --- the request -----------------------------------------------------------------------


def test_source_ip_is_the_hop_the_gateway_added() -> None:
    headers = CIMultiDict(
        [("X-Forwarded-For", "1.1.1.1, 10.0.0.2"), ("X-Forwarded-For", "10.0.0.3")]
    )
    assert source_ip(headers, "172.17.0.1") == "10.0.0.3"
    assert source_ip(CIMultiDict(), "172.17.0.1") == "172.17.0.1"


@pytest.mark.parametrize(
    ("content_type", "text"),
    [
        ("text/plain; charset=latin-1", True),
        ("application/json", True),
        ("application/vnd.api+json", True),
        ("application/xml", True),
        ("application/x-www-form-urlencoded", True),
        ("application/octet-stream", False),
        ("image/png", False),
        (None, False),
    ],
)
def test_which_bodies_are_text(content_type: str | None, text: bool) -> None:
    assert is_text(content_type) is text


# --- lambda (HTTP API / function URL, format 2.0) --------------------------------------


def test_v2_event_fields() -> None:
    req = request(
        "POST",
        "/cart/a b",
        "tag=a&tag=b&q=%C3%A9&empty=",
        [
            ("Host", "api.example.com"),
            ("User-Agent", "curl/8"),
            ("X-Many", "1"),
            ("X-Many", "2"),
            ("Cookie", "a=1; b=2"),
            ("Content-Type", "application/json"),
        ],
        b'{"n": 1}',
        raw_path="/cart/a%20b",
    )
    event = lambda_.v2_event(req, "req-1", NOW)
    assert event == {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/cart/a%20b",
        "rawQueryString": "tag=a&tag=b&q=%C3%A9&empty=",
        "cookies": ["a=1", "b=2"],
        "headers": {
            "host": "api.example.com",
            "user-agent": "curl/8",
            "x-many": "1,2",
            "content-type": "application/json",
        },
        "queryStringParameters": {"tag": "a,b", "q": "é", "empty": ""},
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "api",
            "domainName": "api.example.com",
            "domainPrefix": "api",
            "http": {
                "method": "POST",
                "path": "/cart/a b",
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.9",
                "userAgent": "curl/8",
            },
            "requestId": "req-1",
            "routeKey": "$default",
            "stage": "$default",
            "time": "06/Dec/2025:05:46:40 +0000",
            "timeEpoch": 1765000000500,
        },
        "body": '{"n": 1}',
        "isBase64Encoded": False,
    }


def test_v2_event_leaves_out_what_was_not_sent_and_base64s_binary_bodies() -> None:
    event = lambda_.v2_event(request(), "r", NOW)
    assert "body" not in event and "cookies" not in event
    assert "queryStringParameters" not in event
    assert event["isBase64Encoded"] is False
    binary = request("POST", headers=[("Content-Type", "image/png")], body=b"\x89PNG\x00")
    event = lambda_.v2_event(binary, "r", NOW)
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\x89PNG\x00"
    untyped = lambda_.v2_event(request("POST", body=b"abc"), "r", NOW)
    assert untyped["isBase64Encoded"] is True  # no Content-Type: not known to be text


def test_v2_reply_of_a_response_dict() -> None:
    status, headers, body = reply_of(
        lambda_.v2_reply(
            {
                "statusCode": 201,
                "headers": {"X-A": "b"},
                "cookies": ["s=1; HttpOnly", "t=2"],
                "body": "created",
            }
        )
    )
    assert status == 201 and body == b"created"
    assert headers["X-A"] == "b"
    assert headers["Content-Type"] == "application/json"  # API Gateway's default


def test_v2_reply_sets_cookies_and_decodes_base64() -> None:
    reply = lambda_.v2_reply(
        {
            "statusCode": 200,
            "cookies": ["s=1", "t=2"],
            "headers": {"Content-Type": "image/png"},
            "body": base64.b64encode(b"\x00\xff").decode(),
            "isBase64Encoded": True,
        }
    )
    assert reply.headers.getall("Set-Cookie") == ["s=1", "t=2"]
    assert reply.body == b"\x00\xff" and reply.headers["Content-Type"] == "image/png"


@pytest.mark.parametrize(
    ("value", "body"),
    [({"a": 1}, b'{"a":1}'), ("hello", b'"hello"'), ([1, 2], b"[1,2]"), (None, b"null")],
)
def test_v2_reply_of_anything_else_is_a_200_json_body(value: object, body: bytes) -> None:
    assert reply_of(lambda_.v2_reply(value)) == (200, {"Content-Type": "application/json"}, body)


def test_v2_reply_refuses_bad_status_and_bad_base64() -> None:
    with pytest.raises(handler.InvalidReturnValue, match="statusCode"):
        lambda_.v2_reply({"statusCode": "200"})
    with pytest.raises(handler.InvalidReturnValue, match="base64"):
        lambda_.v2_reply({"statusCode": 200, "body": "%%%", "isBase64Encoded": True})


# --- lambda-v1 (REST API proxy integration, format 1.0) --------------------------------


def test_v1_event_fields() -> None:
    req = request(
        "PUT",
        "/items/7",
        "a=1&a=2&b=x",
        [("Host", "kapal"), ("X-Many", "1"), ("X-Many", "2"), ("User-Agent", "ua")],
        "é".encode(),
    )
    event = lambda_.v1_event(
        HttpRequest(
            **{
                **_fields(req),
                "headers": CIMultiDictProxy(
                    CIMultiDict([*req.headers.items(), ("Content-Type", "text/plain")])
                ),
            }
        ),
        "req-1",
        NOW,
    )
    assert event["resource"] == "/{proxy+}" and event["pathParameters"] == {"proxy": "items/7"}
    assert event["path"] == "/items/7" and event["httpMethod"] == "PUT"
    assert event["headers"]["X-Many"] == "2"
    assert event["multiValueHeaders"]["X-Many"] == ["1", "2"]
    assert event["queryStringParameters"] == {"a": "2", "b": "x"}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": ["x"]}
    assert event["body"] == "é" and event["isBase64Encoded"] is False
    assert event["stageVariables"] is None
    ctx = event["requestContext"]
    assert ctx["identity"]["sourceIp"] == "203.0.113.9" and ctx["identity"]["userAgent"] == "ua"
    assert ctx["requestId"] == "req-1" and ctx["httpMethod"] == "PUT"
    assert ctx["requestTimeEpoch"] == 1765000000500 and ctx["resourcePath"] == "/{proxy+}"


def _fields(req: HttpRequest) -> dict[str, Any]:
    return {name: getattr(req, name) for name in HttpRequest.__slots__}


def test_v1_event_path_is_as_sent_and_its_proxy_parameter_decoded() -> None:
    event = lambda_.v1_event(request(path="/a b/é", raw_path="/a%20b/%C3%A9"), "r", NOW)
    assert event["path"] == "/a%20b/%C3%A9" == event["requestContext"]["path"]
    assert event["pathParameters"] == {"proxy": "a b/é"}


def test_v1_event_of_a_bare_get_has_nulls() -> None:
    event = lambda_.v1_event(request(), "r", NOW)
    assert event["resource"] == "/" and event["pathParameters"] is None
    assert event["path"] == "/"
    assert event["queryStringParameters"] is None
    assert event["multiValueQueryStringParameters"] is None
    assert event["body"] is None and event["isBase64Encoded"] is False


def test_v1_reply_merges_headers_with_multi_value_ones_winning() -> None:
    reply = lambda_.v1_reply(
        {
            "statusCode": 302,
            "headers": {"Location": "/x", "Set-Cookie": "lost=1"},
            "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]},
            "body": "",
        }
    )
    assert reply.status == 302 and reply.headers["Location"] == "/x"
    assert reply.headers.getall("Set-Cookie") == ["a=1", "b=2"]


def test_v1_reply_needs_a_status_code() -> None:
    with pytest.raises(handler.InvalidReturnValue, match="statusCode"):
        lambda_.v1_reply({"message": "hi"})
    with pytest.raises(handler.InvalidReturnValue, match="statusCode"):
        lambda_.v1_reply("hi")


def test_lambda_context_fields() -> None:
    for key in ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_REGION"):
        os.environ.pop(key, None)
    os.environ["AWS_LAMBDA_LOG_STREAM_NAME"] = "will-be-kept"
    lambda_.prepare_environment("shop", 4, Path("/code"))
    ctx = lambda_.LambdaContext(Context("shop", 4, "req-1", time.time() + 2))
    assert ctx.aws_request_id == "req-1"
    assert (ctx.function_name, ctx.function_version) == ("shop", "4")
    assert ctx.memory_limit_in_mb is not None and ctx.memory_limit_in_mb.isdigit()
    assert ctx.invoked_function_arn == "arn:aws:lambda:local:000000000000:function:shop"
    assert ctx.log_group_name == "/aws/lambda/shop"
    assert ctx.log_stream_name == "will-be-kept"
    assert 1000 < ctx.get_remaining_time_in_millis() <= 2000
    assert ctx.identity is None and ctx.client_context is None
    assert os.environ["LAMBDA_TASK_ROOT"] == "/code"


# --- openwhisk -------------------------------------------------------------------------


def test_web_action_args_merge_query_and_json_body() -> None:
    req = request(
        "POST",
        "/a/b",
        "name=q&only=query",
        [("Host", "h"), ("Content-Type", "application/json"), ("X-Two", "1"), ("X-Two", "2")],
        b'{"name": "body", "n": 1}',
    )
    args = openwhisk.web_action_args(req)
    assert args == {
        "name": "body",
        "only": "query",
        "n": 1,
        "__ow_method": "post",
        "__ow_headers": {"host": "h", "content-type": "application/json", "x-two": "1,2"},
        "__ow_path": "/a/b",
        "__ow_query": "name=q&only=query",
    }


def test_web_action_args_form_text_binary_and_json_array_bodies() -> None:
    form = request(
        "POST",
        headers=[("Content-Type", "application/x-www-form-urlencoded")],
        body=b"a=1&b=%C3%A9",
    )
    args = openwhisk.web_action_args(form)
    assert (args["a"], args["b"], "__ow_body" in args) == ("1", "é", False)
    assert args["__ow_path"] == ""
    text = request("POST", headers=[("Content-Type", "text/plain")], body=b"Jane")
    assert openwhisk.web_action_args(text)["__ow_body"] == "Jane"
    binary = request("POST", headers=[("Content-Type", "image/png")], body=b"\x00\x01")
    assert openwhisk.web_action_args(binary)["__ow_body"] == "AAE="
    array = request("POST", headers=[("Content-Type", "application/json")], body=b"[1, 2]")
    assert openwhisk.web_action_args(array)["__ow_body"] == [1, 2]
    with pytest.raises(InvalidJSONBody):
        openwhisk.web_action_args(
            request("POST", headers=[("Content-Type", "application/json")], body=b"{")
        )


def test_web_action_args_cannot_override_platform_keys() -> None:
    args = openwhisk.web_action_args(request("GET", query="__ow_method=put"))
    assert args["__ow_method"] == "get"


def test_web_action_reply_http_fields() -> None:
    status, headers, body = reply_of(openwhisk.web_action_reply({"body": "<h1>hi</h1>"}))
    assert (status, headers["Content-Type"], body) == (
        200,
        "text/html; charset=UTF-8",
        b"<h1>hi</h1>",
    )
    reply = openwhisk.web_action_reply(
        {
            "statusCode": "201",
            "headers": {"X-A": True, "Set-Cookie": ["a=1", "b=2"]},
            "body": {"ok": 1},
        }
    )
    assert (reply.status, reply.body) == (201, b'{"ok":1}')
    assert reply.headers["X-A"] == "true" and reply.headers.getall("Set-Cookie") == ["a=1", "b=2"]
    assert reply.headers["Content-Type"] == "application/json"


def test_web_action_reply_decodes_binary_types_and_empties_to_204() -> None:
    png = {"headers": {"Content-Type": "image/png"}, "body": base64.b64encode(b"\x89PNG").decode()}
    assert openwhisk.web_action_reply(png).body == b"\x89PNG"
    assert reply_of(openwhisk.web_action_reply({"headers": {"Content-Type": "text/plain"}})) == (
        204,
        {},
        b"",
    )
    assert openwhisk.web_action_reply({"statusCode": 404}).status == 404
    with pytest.raises(handler.InvalidReturnValue, match="base64"):
        openwhisk.web_action_reply({"headers": {"Content-Type": "image/png"}, "body": "%%"})


def test_web_action_reply_error_and_plain_results() -> None:
    error = openwhisk.web_action_reply({"error": {"statusCode": 400, "body": "bad"}})
    assert (error.status, error.body) == (400, b"bad")
    plain = openwhisk.web_action_reply({"greeting": "hi"})
    assert reply_of(plain) == (200, {"Content-Type": "application/json"}, b'{"greeting":"hi"}')
    with pytest.raises(handler.InvalidReturnValue, match="dict"):
        openwhisk.web_action_reply("hi")


# --- wsgi ------------------------------------------------------------------------------


def test_wsgi_environ() -> None:
    req = request(
        "POST",
        "/é/x",
        "a=1&b=%20",
        [
            ("Host", "api.example.com:8443"),
            ("Content-Type", "text/plain"),
            ("Cookie", "a=1"),
            ("Cookie", "b=2"),
            ("X-Dash-Name", "v"),
        ],
        b"body",
        raw_path="/%C3%A9/x",
    )
    env = wsgi.environ(req, "/fn/shop")
    assert env["REQUEST_METHOD"] == "POST"
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/fn/shop", "/Ã©/x")  # bytes as latin-1
    assert env["QUERY_STRING"] == "a=1&b=%20"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("api.example.com", "8443")
    assert (env["CONTENT_TYPE"], env["CONTENT_LENGTH"]) == ("text/plain", "4")
    assert env["HTTP_COOKIE"] == "a=1; b=2" and env["HTTP_X_DASH_NAME"] == "v"
    assert "HTTP_CONTENT_TYPE" not in env
    assert env["REMOTE_ADDR"] == "203.0.113.9" and env["wsgi.url_scheme"] == "http"
    assert env["wsgi.input"].read() == b"body"


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/fail":
        raise ValueError("boom")
    if environ["PATH_INFO"] == "/nostart":
        return [b""]
    body = environ["wsgi.input"].read()
    write = start_response(
        "418 I'm a teapot",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", "999"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ],
    )
    write(b"written,")
    return [b"echo:", body]


async def test_wsgi_adapter_runs_the_app_on_a_thread() -> None:
    adapter = wsgi.WsgiStyle("app.app", wsgi_app, "shop", 1)
    threads = HandlerThreads(2)
    try:
        reply = await adapter.run(request("POST", body=b"x"), context(), threads)
        assert reply.status == 418 and reply.body == b"written,echo:x"
        assert reply.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        assert "Content-Length" not in reply.headers  # the server frames the body itself
        with pytest.raises(ValueError, match="boom"):
            await adapter.run(request(path="/fail"), context(), threads)
        with pytest.raises(handler.InvalidReturnValue, match="start_response"):
            await adapter.run(request(path="/nostart"), context(), threads)
    finally:
        threads.close()


# --- asgi ------------------------------------------------------------------------------


class AsgiApp:
    """A minimal ASGI app with a lifespan, as Starlette's are built."""

    def __init__(self, fail_startup: bool = False) -> None:
        self.events: list[str] = []
        self.fail_startup = fail_startup

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    if self.fail_startup:
                        await send({"type": "lifespan.startup.failed", "message": "no db"})
                        return
                    scope["state"]["db"] = "connected"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        message = await receive()
        body = json.dumps(
            {
                "path": scope["path"],
                "root_path": scope["root_path"],
                "query": scope["query_string"].decode(),
                "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
                "state": scope["state"],
                "client": list(scope["client"]),
                "body": message["body"].decode(),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [(b"x-a", b"1"), (b"content-length", b"5")],
            }
        )
        await send({"type": "http.response.body", "body": body[:5], "more_body": True})
        await send({"type": "http.response.body", "body": body[5:]})
        if scope["path"].endswith("/raise-after"):
            raise RuntimeError("after the answer")


async def test_asgi_lifespan_state_and_request_scope() -> None:
    app = AsgiApp()
    adapter = asgi.AsgiStyle("main.app", app, "shop", 1)
    await adapter.startup()
    assert app.events == ["lifespan.startup"]
    threads = HandlerThreads(1)
    req = request("POST", "/items", "a=1", [("Host", "kapal:8080"), ("X-B", "2")], b"hi")
    reply = await adapter.run(req, context(), threads)
    assert reply.status == 202 and reply.headers["x-a"] == "1"
    assert "content-length" not in reply.headers
    seen = json.loads(reply.body)
    assert seen == {
        "path": "/fn/shop/items",
        "root_path": "/fn/shop",
        "query": "a=1",
        "headers": [["host", "kapal:8080"], ["x-b", "2"]],
        "state": {"db": "connected"},
        "client": ["203.0.113.9", 0],
        "body": "hi",
    }
    # An exception after a complete answer is logged; the answer stands.
    assert (await adapter.run(request(path="/raise-after"), context(), threads)).status == 202
    await adapter.shutdown()
    assert app.events == ["lifespan.startup", "lifespan.shutdown"]


async def test_asgi_answers_once_the_body_is_sent_and_background_work_runs_on() -> None:
    release = asyncio.Event()
    finished: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"sent"})
        await release.wait()  # a background task, as Starlette runs them after the body
        finished.append("background")

    adapter = asgi.AsgiStyle("main.app", app, "shop", 1)
    reply = await adapter.run(request(), context(), HandlerThreads(1))
    assert (reply.body, finished, adapter.late) == (b"sent", [], 1)
    release.set()
    await adapter.shutdown()  # waits for what still runs
    assert (finished, adapter.late) == (["background"], 0)


async def test_asgi_app_cancelled_with_its_invocation() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    adapter = asgi.AsgiStyle("main.app", app, "shop", 1)
    invocation = asyncio.ensure_future(adapter.run(request(), context(), HandlerThreads(1)))
    await started.wait()
    invocation.cancel()  # what the deadline sweep does
    with pytest.raises(asyncio.CancelledError):
        await invocation
    await cancelled.wait()
    assert adapter.late == 0


async def test_asgi_failed_startup_raises() -> None:
    adapter = asgi.AsgiStyle("main.app", AsgiApp(fail_startup=True), "shop", 1)
    with pytest.raises(asgi.LifespanFailed, match="no db"):
        await adapter.startup()


async def test_asgi_app_without_lifespan_still_serves() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http", "no lifespan here"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    adapter = asgi.AsgiStyle("main.app", app, "shop", 1)
    await adapter.startup()
    assert (await adapter.run(request(), context(), HandlerThreads(1))).body == b"ok"
    await adapter.shutdown()


async def test_asgi_app_that_sends_nothing_is_an_error() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.sleep(0)

    adapter = asgi.AsgiStyle("main.app", app, "shop", 1)
    with pytest.raises(handler.InvalidReturnValue, match="without sending"):
        await adapter.run(request(), context(), HandlerThreads(1))


# --- detection and loading -------------------------------------------------------------

DETECTED = """
class Flaskish:
    def wsgi_app(self, environ, start_response):
        pass
    def __call__(self, environ, start_response):
        return self.wsgi_app(environ, start_response)

class Starlettish:
    async def __call__(self, scope, receive, send):
        pass

flask_app = Flaskish()
asgi_app = Starlettish()

def plain_wsgi(environ, start_response):
    pass

def handle(event, context):
    pass

async def async_handle(event, context):
    pass

def main(args):
    pass

def sync_three(scope, receive, send):
    pass
"""


@pytest.mark.parametrize(
    ("attr", "style"),
    [
        ("flask_app", "wsgi"),
        ("asgi_app", "asgi"),
        ("plain_wsgi", "wsgi"),
        ("handle", "native"),
        ("async_handle", "native"),
        ("main", "native"),  # OpenWhisk's main(args) is also a native handle(event)
    ],
)
def test_detection(code_dir: Path, attr: str, style: str) -> None:
    (code_dir / "detected_mod.py").write_text(DETECTED)
    loaded = styles.load_handler(f"detected_mod.{attr}", None, code_dir, "f", 1)
    assert loaded.style == style


def test_openwhisk_zip_main_is_detected_and_imported_as_openwhisk_does(code_dir: Path) -> None:
    (code_dir / "__main__.py").write_text("def main(args):\n    return {'body': __name__}\n")
    loaded = styles.load_handler("__main__.main", None, code_dir, "f", 1)
    assert loaded.style == "openwhisk"
    assert isinstance(loaded, openwhisk.OpenWhiskStyle)
    assert loaded.target({}) == {"body": "main__"}


def test_a_style_that_does_not_fit_the_object_fails_the_load(code_dir: Path) -> None:
    (code_dir / "shaped_mod.py").write_text(DETECTED)
    with pytest.raises(TypeError, match=r"takes 1 argument\(s\); lambda handlers take 2"):
        styles.load_handler("shaped_mod.main", "lambda", code_dir, "f", 1)
    with pytest.raises(TypeError, match="not an async callable"):
        styles.load_handler("shaped_mod.sync_three", "asgi", code_dir, "f", 1)
    with pytest.raises(TypeError, match="must accept"):
        styles.load_handler("shaped_mod.asgi_app", "native", code_dir, "f", 1)


def test_style_from_env_and_init() -> None:
    assert config.RuntimeConfig.from_env({"KAPAL_STYLE": "LAMBDA-V1"}).style == "lambda-v1"
    assert config.RuntimeConfig.from_env({}).style is None
    with pytest.raises(config.ConfigError, match="KAPAL_STYLE"):
        config.RuntimeConfig.from_env({"KAPAL_STYLE": "azure"})
    body = {"function": "f", "version": 1, "style": "wsgi"}
    assert bundle.parse_init(json.dumps(body).encode()).style == "wsgi"
    assert bundle.parse_init(json.dumps({**body, "style": None}).encode()).style is None
    with pytest.raises(bundle.InvalidInit, match="style"):
        bundle.parse_init(json.dumps({**body, "style": "gcf"}).encode())
