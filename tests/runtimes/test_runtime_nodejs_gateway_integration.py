"""Node.js functions behind a real gateway: Lambda and native handlers, npm dependencies,
logs by request id, deadlines, and the prewarm and pause cold-start tiers."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from tests.conftest import GatewayFactory, PostgresServer
from tests.support import GatewayProcess, cleanup_namespace, deploy, eventually, new_namespace

pytestmark = pytest.mark.integration


# The Lambda console's starting code for a Node.js function, as AWS's docs show it.
LAMBDA_CONSOLE_EXAMPLE = """\
export const handler = async (event) => {
  // TODO implement
  const response = {
    statusCode: 200,
    body: JSON.stringify('Hello from Lambda!'),
  };
  return response;
};
"""

# A handler written against the HTTP API (v2) event, as on AWS.
LAMBDA_ECHO = """\
exports.handler = async (event, context) => {
  const raw = event.body || '';
  const body = event.isBase64Encoded ? Buffer.from(raw, 'base64') : Buffer.from(raw);
  return {
    statusCode: Number(event.queryStringParameters?.status || 200),
    headers: { 'Content-Type': 'application/json', 'X-Echo': event.headers['x-echo'] || '' },
    cookies: ['a=1; Path=/', 'b=2'],
    body: JSON.stringify({
      method: event.requestContext.http.method,
      rawPath: event.rawPath,
      rawQueryString: event.rawQueryString,
      query: event.queryStringParameters,
      cookies: event.cookies,
      isBase64Encoded: event.isBase64Encoded,
      bodyHex: body.toString('hex'),
      requestId: context.awsRequestId,
      functionName: context.functionName,
      memory: context.memoryLimitInMB,
      timeLeftPositive: context.getRemainingTimeInMillis() > 0,
    }),
  };
};
"""

LAMBDA_BINARY = """\
exports.handler = async () => ({
  statusCode: 200,
  headers: { 'Content-Type': 'image/png' },
  body: Buffer.from([0, 1, 2, 255]).toString('base64'),
  isBase64Encoded: true,
});
"""

# Lambda's older callback style, in a CommonJS file.
LAMBDA_CALLBACK = """\
exports.handler = function (event, context, callback) {
  setTimeout(() => callback(null, { statusCode: 202, body: 'queued ' + event.rawPath }), 10);
};
"""

NATIVE = """\
exports.handler = async (event, context) => {
  if (event.path === '/text') return `hello ${event.query.name || 'world'}`;
  if (event.path === '/none') return null;
  if (event.path === '/json') return { got: event.json(), tags: event.searchParams.getAll('tag') };
  if (event.path === '/boom') throw new TypeError('kaboom');
  return {
    statusCode: 200,
    body: { method: event.method, path: event.path, fn: context.functionName, v: context.version },
  };
};
"""

LOGGING = """\
exports.handler = async (event, context) => {
  console.log('hello from', context.requestId);
  process.stdout.write('partial ');
  process.stdout.write('line\\n');
  console.error('to stderr');
  setTimeout(() => console.log('later from', context.requestId), 5);
  return 'ok';
};
"""

SLOW = """\
exports.handler = async (event) => {
  const s = Number(event.query.s || '0');
  await new Promise((resolve) => setTimeout(resolve, s * 1000));
  return 'done';
};
"""

WITH_MS = """\
const ms = require('ms');
exports.handler = async () => ({ twoDays: ms('2 days'), back: ms(60000) });
"""


@pytest.fixture(scope="module")
def gw(
    postgres: PostgresServer, docker_client: docker.DockerClient, log_dir: Path
) -> Iterator[GatewayProcess]:
    """One gateway for the module, keeping a prewarmed Node.js container (no Python ones)."""
    gateway = GatewayProcess(
        postgres.new_database(),
        new_namespace(),
        log_dir,
        KAPAL_PREWARM_PYTHON="0",
        KAPAL_PREWARM_NODEJS="1",
        KAPAL_AUTOSCALE_STABLE_WINDOW_S="2",
        KAPAL_AUTOSCALE_PANIC_WINDOW_S="1",
    )
    gateway.start()
    yield gateway
    gateway.stop()
    leftovers = cleanup_namespace(docker_client, gateway.namespace)
    assert not leftovers, f"left behind after the gateway stopped: {leftovers}"


async def deployed(
    http: aiohttp.ClientSession,
    gw: GatewayProcess,
    name: str,
    files: dict[str, str | bytes],
    **spec: Any,
) -> None:
    status, body = await deploy(http, gw, files, {"name": name, "runtime": "nodejs", **spec})
    assert status == 201, body


async def test_the_lambda_console_example_runs_unchanged(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    await deployed(http, gw, "console", {"index.mjs": LAMBDA_CONSOLE_EXAMPLE}, style="lambda")
    async with http.get(f"{gw.url}/fn/console", headers=gw.headers) as r:
        assert r.status == 200
        assert await r.json() == "Hello from Lambda!"


async def test_a_lambda_handler_sees_an_http_api_event_and_its_context(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    await deployed(http, gw, "echo", {"index.js": LAMBDA_ECHO}, style="lambda")
    url = f"{gw.url}/fn/echo/a/b?x=1&x=2&status=201"
    headers = {**gw.headers, "X-Echo": "yes", "Cookie": "c1=v1; c2=v2"}
    headers["Content-Type"] = "application/octet-stream"
    async with http.post(url, data=b"\x00\xff", headers=headers) as r:
        assert r.status == 201
        assert r.headers["X-Echo"] == "yes"
        assert r.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2"]
        got = await r.json()
        request_id = r.headers["X-Kapal-Request-Id"]
    assert got == {
        "method": "POST",
        "rawPath": "/a/b",
        "rawQueryString": "x=1&x=2&status=201",
        "query": {"x": "1,2", "status": "201"},
        "cookies": ["c1=v1", "c2=v2"],
        "isBase64Encoded": True,
        "bodyHex": "00ff",
        "requestId": request_id,
        "functionName": "echo",
        "memory": "256",
        "timeLeftPositive": True,
    }
    # A text body arrives as text.
    async with http.post(url, data="hi", headers={**gw.headers, "Content-Type": "text/plain"}) as r:
        got = await r.json()
        assert (got["isBase64Encoded"], got["bodyHex"]) == (False, b"hi".hex())


async def test_a_lambda_binary_answer_and_a_callback_handler(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    await deployed(http, gw, "png", {"index.js": LAMBDA_BINARY}, style="lambda")
    await deployed(
        http,
        gw,
        "callback",
        # A package.json without dependencies: nothing to resolve.
        {"app/main.js": LAMBDA_CALLBACK, "package.json": '{"name": "callback"}'},
        handler="app/main.handler",
        style="lambda",
    )
    async with http.get(f"{gw.url}/fn/png", headers=gw.headers) as r:
        assert (r.status, r.content_type, await r.read()) == (200, "image/png", b"\x00\x01\x02\xff")
    async with http.get(f"{gw.url}/fn/callback/x", headers=gw.headers) as r:
        assert (r.status, r.content_type, await r.text()) == (202, "application/json", "queued /x")


async def test_a_native_handler_its_return_values_and_its_errors(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    await deployed(http, gw, "native", {"index.js": NATIVE})
    url = f"{gw.url}/fn/native"
    async with http.get(f"{url}/text?name=kapal", headers=gw.headers) as r:
        assert (r.status, r.content_type, await r.text()) == (200, "text/plain", "hello kapal")
    async with http.get(f"{url}/none", headers=gw.headers) as r:
        assert r.status == 204
    async with http.post(f"{url}/json?tag=a&tag=b", json={"k": 1}, headers=gw.headers) as r:
        assert await r.json() == {"got": {"k": 1}, "tags": ["a", "b"]}
    async with http.post(f"{url}/json", data="{nope", headers=gw.headers) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_json"
    async with http.delete(f"{url}/x%20y", headers=gw.headers) as r:
        assert await r.json() == {"method": "DELETE", "path": "/x y", "fn": "native", "v": 1}
    # An error is a 500 naming it; its stack is in the function's logs only.
    async with http.get(f"{gw.url}/fn/native/boom", headers=gw.headers) as r:
        assert r.status == 500
        error = (await r.json())["error"]
        request_id = r.headers["X-Kapal-Request-Id"]
    assert error["message"] == "TypeError: kaboom"
    assert "index.js" not in json.dumps(error)
    lines = await eventually(lambda: log_lines(http, gw, "native", request_id))
    stacks = [ln for ln in lines if ln["stream"] == "stderr" and ln["level"] == "error"]
    assert stacks and stacks[0]["line"].startswith("TypeError: kaboom\n")
    assert "/opt/kapal/function/index.js" in stacks[0]["line"]


async def log_lines(
    http: aiohttp.ClientSession, gw: GatewayProcess, name: str, request_id: str
) -> list[dict[str, Any]]:
    url = f"{gw.url}/v1/functions/{name}/logs"
    async with http.get(url, params={"request_id": request_id}, headers=gw.headers) as r:
        assert r.status == 200, await r.text()
        return [json.loads(line) for line in (await r.text()).splitlines() if line]


async def test_console_and_stdout_lines_carry_the_request_id(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    await deployed(http, gw, "chatty", {"index.js": LOGGING})
    async with http.get(f"{gw.url}/fn/chatty", headers=gw.headers) as r:
        assert r.status == 200
        request_id = r.headers["X-Kapal-Request-Id"]

    async def all_four() -> list[tuple[str, str]] | None:
        lines = await log_lines(http, gw, "chatty", request_id)
        found = [(ln["stream"], ln["line"]) for ln in lines if ln["stream"] != "runtime"]
        return found if len(found) == 4 else None

    assert await eventually(all_four) == [
        ("stdout", f"hello from {request_id}"),
        ("stdout", "partial line"),
        ("stderr", "to stderr"),
        # Written by a timer the handler set, after the answer: still its request's.
        ("stdout", f"later from {request_id}"),
    ]


async def test_a_handler_past_its_deadline_is_504(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    await deployed(http, gw, "slow", {"index.js": SLOW}, limits={"timeout_s": 1})
    async with http.get(f"{gw.url}/fn/slow?s=0", headers=gw.headers) as r:
        assert (r.status, await r.text()) == (200, "done")
    async with http.get(f"{gw.url}/fn/slow?s=5", headers=gw.headers) as r:
        assert r.status == 504
        assert (await r.json())["error"]["code"] == "timeout"


async def test_an_npm_dependency_is_resolved_on_the_host_and_reused_by_a_code_change(
    gw: GatewayProcess, http: aiohttp.ClientSession, docker_client: docker.DockerClient
) -> None:
    package = json.dumps({"name": "with-ms", "dependencies": {"ms": "2.1.3"}})
    await deployed(http, gw, "withms", {"index.js": WITH_MS, "package.json": package})
    async with http.get(f"{gw.url}/fn/withms", headers=gw.headers) as r:
        assert r.status == 200, await r.text()
        assert await r.json() == {"twoDays": 172800000, "back": "1m"}
        # Dependencies are in the function's own image: no generic container serves it.
        assert r.headers["X-Kapal-Cold-Start"] == "new"

    # A code-only change: the same resolved node_modules, so the same dependency layer.
    code: dict[str, str | bytes] = {
        "index.js": WITH_MS.replace("twoDays", "days2"),
        "package.json": package,
    }
    status, body = await deploy(http, gw, code, {"runtime": "nodejs"}, name="withms", update=True)
    assert status == 200, body
    async with http.get(f"{gw.url}/fn/withms", headers=gw.headers) as r:
        assert await r.json() == {"days2": 172800000, "back": "1m"}
    v1, v2 = (docker_client.images.get(f"{gw.namespace}-fn/withms:{v}") for v in (1, 2))
    assert v1.labels["kapal.deps"] == v2.labels["kapal.deps"]
    base = len(
        docker_client.images.get(os.environ["KAPAL_RUNTIME_IMAGE_NODEJS"]).attrs["RootFS"]["Layers"]
    )
    assert v1.attrs["RootFS"]["Layers"][base] == v2.attrs["RootFS"]["Layers"][base]


async def test_a_node_function_starts_from_a_prewarmed_container_then_a_paused_one(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    await deployed(http, gw, "tiers", {"index.js": SLOW})
    async with http.get(f"{gw.url}/fn/tiers", headers=gw.headers) as r:
        assert (r.status, await r.text()) == (200, "done")
        assert r.headers["X-Kapal-Cold-Start"] == "prewarm"

    async def paused() -> bool:
        async with http.get(f"{gw.url}/v1/functions/tiers", headers=gw.headers) as r:
            pool = (await r.json())["pool"]
            return bool(pool["paused"] == 1 and pool["ready"] == 0)

    await eventually(paused)
    async with http.get(f"{gw.url}/fn/tiers", headers=gw.headers) as r:
        assert (r.status, await r.text()) == (200, "done")
        assert r.headers["X-Kapal-Cold-Start"] == "paused"


@pytest.mark.parametrize(
    ("files", "spec", "status", "says"),
    [
        ({"main.js": SLOW}, {}, 400, "index.js"),
        ({"index.js": SLOW}, {"handler": "index.handle.x!"}, 422, "handler"),
        ({"index.js": SLOW}, {"style": "wsgi"}, 422, "style"),
        ({"index.js": SLOW, "package.json": "{oops"}, {}, 400, "package.json"),
    ],
)
async def test_a_bad_node_deploy_is_refused_saying_why(
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    files: dict[str, str | bytes],
    spec: dict[str, Any],
    status: int,
    says: str,
) -> None:
    gw = make_gateway(KAPAL_PREWARM_PYTHON="0")
    got, body = await deploy(http, gw, files, {"name": "bad", "runtime": "nodejs", **spec})
    assert got == status, body
    assert says in json.dumps(body)


async def test_an_npm_package_that_does_not_exist_is_a_422(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    package = json.dumps({"dependencies": {"kapal-no-such-package-4d1c9e": "1.0.0"}})
    status, body = await deploy(
        http,
        gw,
        {"index.js": SLOW, "package.json": package},
        {"name": "nopkg", "runtime": "nodejs"},
    )
    assert status == 422, body
    assert "npm install failed" in body["error"]["message"]
