"""Code written for other platforms, deployed unchanged behind a real gateway (Docker,
Postgres): AWS Lambda handlers (HTTP API v2 and REST v1 events), an OpenWhisk web action,
a Flask app and a FastAPI app, each answering as its own platform would."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from tests.support import GatewayProcess, deploy

pytestmark = pytest.mark.integration

BINARY = bytes(range(256)) * 4

# The context example of AWS's Lambda Python docs, and an HTTP handler as their API Gateway
# examples write them: event fields in, a response dict out.
LAMBDA_V2 = """
import base64
import json
import time


def lambda_handler(event, context):
    if event["rawPath"] == "/context":
        print("Lambda function ARN:", context.invoked_function_arn)
        print("CloudWatch log stream name:", context.log_stream_name)
        print("CloudWatch log group name:",  context.log_group_name)
        print("Lambda Request ID:", context.aws_request_id)
        print("Lambda function memory limits in MB:", context.memory_limit_in_mb)
        time.sleep(0.1)
        print("Lambda time remaining in MS:", context.get_remaining_time_in_millis())
        return {"request_id": context.aws_request_id, "memory": context.memory_limit_in_mb}
    if event["requestContext"]["http"]["method"] == "POST":
        data = event.get("body", "")
        data = base64.b64decode(data) if event["isBase64Encoded"] else data.encode()
        return {
            "statusCode": 201,
            "headers": {"Content-Type": "application/octet-stream"},
            "cookies": ["reversed=yes; HttpOnly", "size=%d" % len(data)],
            "body": base64.b64encode(data[::-1]).decode(),
            "isBase64Encoded": True,
        }
    if event["rawPath"] == "/missing":
        return {"statusCode": 404, "body": json.dumps({"message": "Not Found"})}
    return {
        "path": event["rawPath"],
        "query": event.get("queryStringParameters"),
        "raw_query": event["rawQueryString"],
        "cookies": event.get("cookies"),
        "agent": event["headers"].get("x-agent"),
        "function": context.function_name,
    }
"""

LAMBDA_V1 = """
import base64
import json


def handler(event, context):
    if event["httpMethod"] == "POST":
        body = base64.b64decode(event["body"]) if event["isBase64Encoded"] else event["body"]
        return {
            "statusCode": 200,
            "headers": {"Content-Type": "application/json"},
            "body": json.dumps({"length": len(body), "base64": event["isBase64Encoded"]}),
        }
    return {
        "statusCode": 418 if event["path"] == "/teapot" else 200,
        "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"], "X-Tags": ["x", "y"]},
        "body": json.dumps(
            {
                "resource": event["resource"],
                "proxy": (event["pathParameters"] or {}).get("proxy"),
                "tags": (event["multiValueQueryStringParameters"] or {}).get("tag"),
                "last_tag": (event["queryStringParameters"] or {}).get("tag"),
                "agent": event["headers"].get("X-Agent"),
                "cookie": event["headers"].get("Cookie"),
                "source_ip": event["requestContext"]["identity"]["sourceIp"],
            }
        ),
    }
"""

# An OpenWhisk web action as its docs write them (a zip action's __main__.py).
OPENWHISK = """
def main(args):
    name = args.get("name", "stranger")
    if args["__ow_path"] == "/image":
        return {"headers": {"Content-Type": "image/png"}, "body": args["__ow_body"]}
    if args["__ow_method"] == "post":
        return {
            "statusCode": 201,
            "headers": {"Set-Cookie": ["seen=1", "by=" + name]},
            "body": {"name": name, "cookie": args["__ow_headers"].get("cookie")},
        }
    if args["__ow_path"] == "/fail":
        return {"error": {"statusCode": 409, "body": "conflict"}}
    return {"body": "<html><body><h3>hello " + name + "</h3></body></html>"}
"""

FLASK_APP = """
from flask import Flask, jsonify, make_response, redirect, request, url_for

app = Flask(__name__)


@app.get("/")
def index():
    return jsonify(
        tags=request.args.getlist("tag"),
        agent=request.headers.get("X-Agent"),
        session=request.cookies.get("session"),
        remote=request.remote_addr,
    )


@app.post("/upload")
def upload():
    response = make_response(request.get_data()[::-1], 201)
    response.headers["Content-Type"] = "application/octet-stream"
    response.set_cookie("seen", "yes")
    return response


@app.get("/old")
def old():
    return redirect(url_for("index"))
"""

FASTAPI_APP = """
from contextlib import asynccontextmanager

import asyncio

from fastapi import BackgroundTasks, Cookie, FastAPI, Header, Request, Response

started = []
released = asyncio.Event()
background = []


@asynccontextmanager
async def lifespan(app):
    started.append("yes")
    print("lifespan startup")
    yield
    print("lifespan shutdown")


app = FastAPI(lifespan=lifespan)


@app.get("/items/{item_id}")
async def read_item(
    item_id: int,
    q: str | None = None,
    x_agent: str | None = Header(default=None),
    session: str | None = Cookie(default=None),
):
    return {"item_id": item_id, "q": q, "agent": x_agent, "session": session, "started": started}


async def wait_for_release():
    await released.wait()
    background.append("done")


@app.get("/background")
async def queue_background(tasks: BackgroundTasks):
    tasks.add_task(wait_for_release)
    return {"queued": True}


@app.post("/release")
async def release():
    released.set()
    return {"background": background}


@app.get("/background/state")
async def background_state():
    return {"background": background}


@app.post("/upload")
async def upload(request: Request):
    data = await request.body()
    response = Response(data[::-1], status_code=201, media_type="application/octet-stream")
    response.set_cookie("seen", "yes")
    return response
"""


async def deployed(
    http: aiohttp.ClientSession, gw: GatewayProcess, files: dict[str, str], spec: dict[str, Any]
) -> str:
    status, body = await deploy(http, gw, files, {**spec, "public": True})
    assert status == 201, body
    return f"{gw.url}/fn/{spec['name']}"


async def log_texts(
    http: aiohttp.ClientSession, gw: GatewayProcess, name: str, request_id: str, count: int
) -> list[str]:
    """The function's log lines tagged `request_id`, once there are `count` of them."""
    end = time.monotonic() + 30
    while True:
        url = f"{gw.url}/v1/functions/{name}/logs"
        async with http.get(url, params={"request_id": request_id}, headers=gw.headers) as r:
            assert r.status == 200, await r.text()
            lines = [json.loads(line) for line in (await r.text()).splitlines() if line]
        texts = [line["line"] for line in lines if line["stream"] == "stdout"]
        if len(texts) >= count:
            return texts
        assert time.monotonic() < end, f"only {texts} in the logs"
        await asyncio.sleep(0.2)


async def test_lambda_http_api_handler(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    gw = shared_gateway
    spec = {"name": "lam", "handler": "lambda_function.lambda_handler", "style": "lambda"}
    url = await deployed(http, gw, {"lambda_function.py": LAMBDA_V2}, spec)
    headers = {"X-Agent": "tester", "Cookie": "a=1; b=2"}
    async with http.get(f"{url}/shop", params=[("tag", "x"), ("tag", "y")], headers=headers) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/json"  # no statusCode: a JSON body
        assert await r.json() == {
            "path": "/shop",
            "query": {"tag": "x,y"},
            "raw_query": "tag=x&tag=y",
            "cookies": ["a=1", "b=2"],
            "agent": "tester",
            "function": "lam",
        }
    async with http.post(f"{url}/echo", data=BINARY, headers={"Content-Type": "image/png"}) as r:
        assert r.status == 201
        assert await r.read() == BINARY[::-1]
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert r.headers.getall("Set-Cookie") == ["reversed=yes; HttpOnly", f"size={len(BINARY)}"]
    async with http.get(f"{url}/missing") as r:
        assert (r.status, await r.json()) == (404, {"message": "Not Found"})
        assert r.headers["Content-Type"] == "application/json"
    async with http.get(f"{url}/context") as r:
        assert r.status == 200
        request_id = r.headers["X-Kapal-Request-Id"]
        answer = await r.json()
    assert answer["request_id"] == request_id and answer["memory"] == "256"
    texts = await log_texts(http, gw, "lam", request_id, 6)
    assert f"Lambda Request ID: {request_id}" in texts
    assert "Lambda function ARN: arn:aws:lambda:local:000000000000:function:lam" in texts
    assert "CloudWatch log group name: /aws/lambda/lam" in texts
    assert "Lambda function memory limits in MB: 256" in texts
    remaining = next(t for t in texts if t.startswith("Lambda time remaining in MS: "))
    assert 0 < int(remaining.rpartition(" ")[2]) < 30_000


async def test_lambda_rest_api_handler(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    url = await deployed(
        http,
        shared_gateway,
        {"app.py": LAMBDA_V1},
        {"name": "lamv1", "handler": "app.handler", "style": "lambda-v1"},
    )
    headers = {"X-Agent": "tester", "Cookie": "a=1"}
    async with http.get(f"{url}/teapot", params=[("tag", "x"), ("tag", "y")], headers=headers) as r:
        assert r.status == 418
        assert r.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        assert r.headers.getall("X-Tags") == ["x", "y"]
        body = await r.json()
    assert body["resource"] == "/{proxy+}" and body["proxy"] == "teapot"
    assert (body["tags"], body["last_tag"]) == (["x", "y"], "y")
    assert (body["agent"], body["cookie"]) == ("tester", "a=1")
    assert body["source_ip"] not in ("", None)
    async with http.post(url + "/", data=BINARY, headers={"Content-Type": "image/png"}) as r:
        assert (r.status, await r.json()) == (200, {"length": len(BINARY), "base64": True})
    async with http.post(url + "/", json={"a": 1}) as r:
        assert (r.status, await r.json()) == (200, {"length": 8, "base64": False})


async def test_openwhisk_web_action(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    # No style: __main__.main is OpenWhisk's own convention.
    url = await deployed(
        http, shared_gateway, {"__main__.py": OPENWHISK}, {"name": "ow", "handler": "__main__.main"}
    )
    async with http.get(url + "/", params={"name": "Jane"}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/html; charset=UTF-8"
        assert await r.text() == "<html><body><h3>hello Jane</h3></body></html>"
    body = json.dumps({"name": "Joe"})
    headers = {"Content-Type": "application/json", "Cookie": "k=v"}
    async with http.post(url + "/", data=body, headers=headers) as r:
        assert r.status == 201
        assert r.headers.getall("Set-Cookie") == ["seen=1", "by=Joe"]
        assert await r.json() == {"name": "Joe", "cookie": "k=v"}
    async with http.put(f"{url}/image", data=BINARY, headers={"Content-Type": "image/png"}) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "image/png"
        assert await r.read() == BINARY  # base64 in, base64 out, bytes on the wire
    async with http.get(f"{url}/fail") as r:
        assert (r.status, await r.text()) == (409, "conflict")


async def test_flask_app(shared_gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    # No style: a Flask app object is detected as WSGI; flask is resolved on the host.
    files = {"app.py": FLASK_APP, "requirements.txt": "flask\n"}
    url = await deployed(http, shared_gateway, files, {"name": "flaskapp", "handler": "app.app"})
    headers = {"X-Agent": "tester", "Cookie": "session=s1; other=2"}
    async with http.get(url + "/", params=[("tag", "x"), ("tag", "y")], headers=headers) as r:
        assert r.status == 200
        body = await r.json()
    assert body["tags"] == ["x", "y"] and body["agent"] == "tester" and body["session"] == "s1"
    assert body["remote"] not in ("", None)
    async with http.post(f"{url}/upload", data=BINARY) as r:
        assert r.status == 201 and await r.read() == BINARY[::-1]
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert r.headers["Set-Cookie"].startswith("seen=yes")
    async with http.get(f"{url}/old", allow_redirects=False) as r:
        assert r.status == 302
        assert r.headers["Location"] == "/fn/flaskapp/"  # built for callers of the gateway
    async with http.get(f"{url}/nowhere") as r:
        assert r.status == 404 and "Not Found" in await r.text()


async def test_fastapi_app(shared_gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    # No style: a FastAPI app is detected as ASGI; its lifespan runs before the first call.
    files = {"main.py": FASTAPI_APP, "requirements.txt": "fastapi\n"}
    spec = {"name": "fast", "handler": "main.app", "scaling": {"max": 1}}
    url = await deployed(http, shared_gateway, files, spec)
    headers = {"X-Agent": "tester", "Cookie": "session=s1"}
    async with http.get(f"{url}/items/7", params={"q": "é"}, headers=headers) as r:
        assert r.status == 200
        assert await r.json() == {
            "item_id": 7,
            "q": "é",
            "agent": "tester",
            "session": "s1",
            "started": ["yes"],
        }
    async with http.get(f"{url}/items/seven") as r:
        assert r.status == 422  # FastAPI's own validation answer
        assert (await r.json())["detail"][0]["loc"] == ["path", "item_id"]
    async with http.post(f"{url}/upload", data=BINARY) as r:
        assert r.status == 201 and await r.read() == BINARY[::-1]
        assert r.headers["Set-Cookie"].startswith("seen=yes")
    async with http.get(f"{url}/openapi.json") as r:
        assert r.status == 200 and "/items/{item_id}" in (await r.json())["paths"]
    # Answered before its background task ends (that task waits for the next request).
    async with http.get(f"{url}/background") as r:
        assert (r.status, await r.json()) == (200, {"queued": True})
    async with http.post(f"{url}/release") as r:
        assert r.status == 200
    end = time.monotonic() + 30
    while True:
        async with http.get(f"{url}/background/state") as r:
            if (await r.json())["background"] == ["done"]:
                break
        assert time.monotonic() < end, "the background task never finished"
        await asyncio.sleep(0.1)


async def test_a_bad_style_is_422_naming_the_field(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    status, body = await deploy(
        http,
        shared_gateway,
        {"handler.py": "def handle(e, c): pass\n"},
        {"name": "bad", "style": "azure"},
    )
    assert status == 422, body
    assert "style" in json.dumps(body)
