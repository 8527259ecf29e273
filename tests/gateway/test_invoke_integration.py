"""Deploy and invoke functions on a real gateway, Docker engine and Postgres."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.support import GatewayProcess, deploy

pytestmark = pytest.mark.integration

ECHO = """
import json

def handle(event, context):
    if event.path == "/bytes":
        return event.body
    if event.path.startswith("/status/"):
        code = int(event.path.rsplit("/", 1)[1])
        return {"statusCode": code, "headers": {"X-From": "fn"}, "body": {"code": code}}
    return {
        "statusCode": 200,
        "headers": {"X-Echo": "yes"},
        "body": {
            "method": event.method,
            "path": event.path,
            "query": {k: event.query.getall(k) for k in event.query},
            "headers": dict(event.headers),
            "body": event.body.decode("latin-1"),
            "function": context.function_name,
            "version": context.version,
            "request_id": context.request_id,
        },
    }
"""

HELLO = """
def handle(event, context):
    return {"statusCode": 200, "body": {"hello": event.query.get("name", "world")}}
"""

FAILING = """
import os, time

def handle(event, context):
    if event.path == "/raise":
        raise ValueError("secret detail")
    if event.path == "/sleep":
        time.sleep(float(event.query.get("s", "5")))
        return "slept"
    if event.path == "/exit":
        os._exit(3)
    return "ok"
"""


@pytest.fixture(scope="module")
def deployed(shared_gateway: GatewayProcess) -> GatewayProcess:
    async def deploy_all() -> None:
        async with aiohttp.ClientSession() as http:
            for name, code, spec in (
                ("hello", HELLO, {}),
                ("echo", ECHO, {}),
                ("failing", FAILING, {"limits": {"timeout_s": 1.5}, "scaling": {"concurrency": 2}}),
            ):
                files = {"handler.py": code}
                status, body = await deploy(http, shared_gateway, files, {"name": name, **spec})
                assert status == 201, body

    asyncio.run(deploy_all())
    return shared_gateway


async def test_deploy_answers_function_version_and_image(
    deployed: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{deployed.url}/v1/functions/hello", headers=deployed.headers) as r:
        fn = await r.json()
    assert r.status == 200
    assert fn["name"] == "hello"
    assert fn["version"] == 1
    assert fn["image"] == f"{deployed.namespace}-fn/hello:1"
    assert [v["version"] for v in fn["versions"]] == [1]
    async with http.get(f"{deployed.url}/v1/functions", headers=deployed.headers) as r:
        names = [f["name"] for f in (await r.json())["functions"]]
    assert names == ["echo", "failing", "hello"]


async def test_hello_readme_example(deployed: GatewayProcess, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{deployed.url}/fn/hello?name=kapal", headers=deployed.headers) as r:
        assert r.status == 200
        assert await r.json() == {"hello": "kapal"}
        assert len(r.headers.getall("X-Kapal-Request-Id")) == 1
        assert len(r.headers["X-Kapal-Request-Id"]) == 32
    async with http.get(f"{deployed.url}/fn/hello", headers=deployed.headers) as r:
        assert await r.json() == {"hello": "world"}


async def test_method_path_query_headers_and_body_pass_through(
    deployed: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    url = f"{deployed.url}/fn/echo/a/b%20c?x=1&x=2&y=z"
    headers = {**deployed.headers, "X-Custom": "v1"}
    async with http.put(url, data=b"payload", headers=headers) as r:
        assert r.status == 200
        assert r.headers["X-Echo"] == "yes"
        got = await r.json()
    assert got["method"] == "PUT"
    assert got["path"] == "/a/b c"
    assert got["query"] == {"x": ["1", "2"], "y": ["z"]}
    assert got["headers"]["X-Custom"] == "v1"
    assert got["body"] == "payload"
    assert got["function"] == "echo"
    assert got["version"] == 1
    assert got["request_id"] == r.headers["X-Kapal-Request-Id"]


async def test_binary_body_round_trip(
    deployed: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    payload = bytes(range(256)) * 64
    async with http.post(
        f"{deployed.url}/fn/echo/bytes", data=payload, headers=deployed.headers
    ) as r:
        assert r.status == 200
        assert await r.read() == payload


async def test_large_streamed_body_round_trip(
    deployed: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    payload = bytes(range(256)) * (12 * 1024)  # 3 MiB: past the gateway's buffering limit

    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(payload), 100_000):
            yield payload[i : i + 100_000]

    async with http.post(
        f"{deployed.url}/fn/echo/bytes", data=chunks(), headers=deployed.headers
    ) as r:
        assert r.status == 200
        assert await r.read() == payload


@pytest.mark.parametrize("code", [201, 302, 404, 418, 503])
async def test_status_codes_pass_through(
    deployed: GatewayProcess, http: aiohttp.ClientSession, code: int
) -> None:
    async with http.get(
        f"{deployed.url}/fn/echo/status/{code}", allow_redirects=False, headers=deployed.headers
    ) as r:
        assert r.status == code
        assert r.headers["X-From"] == "fn"
        assert await r.json() == {"code": code}


async def test_unknown_function_is_404_json(
    deployed: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{deployed.url}/fn/nope/x", headers=deployed.headers) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "function_not_found"


async def test_handler_exception_is_500_json_without_traceback(
    deployed: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{deployed.url}/fn/failing/raise", headers=deployed.headers) as r:
        assert r.status == 500
        body = await r.json()
    assert body["error"]["code"] == "handler_error"
    assert "Traceback" not in json.dumps(body)
    async with http.get(f"{deployed.url}/fn/failing/", headers=deployed.headers) as r:
        assert r.status == 200
        assert await r.text() == "ok"


async def test_timeout_is_504_and_instance_replaced(
    deployed: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{deployed.url}/fn/failing/", headers=deployed.headers) as r:
        assert r.status == 200
    async with http.get(f"{deployed.url}/v1/functions/failing", headers=deployed.headers) as r:
        before = {i["id"] for i in (await r.json())["instances"]}
    async with http.get(f"{deployed.url}/fn/failing/sleep?s=5", headers=deployed.headers) as r:
        assert r.status == 504
        assert (await r.json())["error"]["code"] == "timeout"
    async with http.get(f"{deployed.url}/v1/functions/failing", headers=deployed.headers) as r:
        after = {i["id"] for i in (await r.json())["instances"]}
    assert before and not (before & after)
    async with http.get(f"{deployed.url}/fn/failing/", headers=deployed.headers) as r:
        assert r.status == 200


async def test_instance_dying_mid_request_is_502_then_recovers(
    deployed: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{deployed.url}/fn/failing/exit", headers=deployed.headers) as r:
        assert r.status == 502
        assert (await r.json())["error"]["code"] == "instance_failed"
    async with http.get(f"{deployed.url}/fn/failing/", headers=deployed.headers) as r:
        assert r.status == 200


async def test_invocations_are_counted(
    deployed: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{deployed.url}/v1/functions/hello", headers=deployed.headers) as r:
        before = (await r.json())["invocations"]
    for _ in range(3):
        async with http.get(f"{deployed.url}/fn/hello", headers=deployed.headers) as r:
            assert r.status == 200
    async with http.get(f"{deployed.url}/v1/functions/hello", headers=deployed.headers) as r:
        assert (await r.json())["invocations"] == before + 3
