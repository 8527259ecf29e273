"""Async invocations on a real gateway, Docker engine and Postgres."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from tests.gateway.queue_support import wait_final
from tests.support import GatewayProcess, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
async def http(gw: GatewayProcess) -> AsyncIterator[aiohttp.ClientSession]:
    """This module's requests carry the gateway's admin key (the API is locked down)."""
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(headers=gw.headers, timeout=timeout) as session:
        yield session


async def count_rows(gw: GatewayProcess, where: str, *args: object) -> int:
    conn = await asyncpg.connect(gw.database_url)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM invocations WHERE {where}", *args))
    finally:
        await conn.close()


async def test_unknown_function_is_404_and_stores_nothing(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{gw.url}/async/fn/nope/x", data=b"hi") as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "function_not_found"
    assert await count_rows(gw, "function = $1", "nope") == 0


async def test_retried_until_success_then_result_is_kept(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.put(f"{gw.url}/async/fn/flaky/until?key=a&n=3", data=b"payload") as r:
        assert r.status == 202, await r.text()
        accepted = await r.json()
        assert r.headers["Location"] == f"/v1/invocations/{accepted['id']}"
    done = await wait_final(http, gw, accepted["id"])
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 3
    assert done["response"]["status"] == 200
    assert done["response"]["body_encoding"] == "utf-8"
    import json

    result = json.loads(done["response"]["body"])
    assert result == {
        "n": 3,
        "body": "payload",
        "attempt": "3",
        "invocation": accepted["id"],
        "method": "PUT",
    }
    assert done["started_at"] is not None and done["finished_at"] is not None


async def test_client_error_is_final(gw: GatewayProcess, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{gw.url}/async/fn/flaky/bad") as r:
        assert r.status == 202
        id = (await r.json())["id"]
    done = await wait_final(http, gw, id)
    assert done["status"] == "failed"
    assert done["attempts"] == 1
    assert done["response"]["status"] == 400


async def test_dead_letter_is_kept_and_can_be_redriven(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{gw.url}/async/fn/flaky/broken?key=b") as r:
        id = (await r.json())["id"]
    dead = await wait_final(http, gw, id)
    assert dead["status"] == "dead"
    assert dead["attempts"] == 4  # the first attempt and max_retries=3
    assert dead["response"]["status"] == 500
    async with http.get(f"{gw.url}/v1/invocations?status=dead&function=flaky") as r:
        assert r.status == 200
        letters = (await r.json())["invocations"]
        assert id in [i["id"] for i in letters]
        assert {i["status"] for i in letters} == {"dead"}
    async with http.get(f"{gw.url}/v1/invocations?status=zombie") as r:
        assert r.status == 422
        assert "status" in (await r.json())["error"]["message"]
    # Re-driving what is not dead or failed is refused.
    async with http.post(f"{gw.url}/async/fn/flaky/bad") as r:
        other = (await r.json())["id"]
    async with http.post(f"{gw.url}/fn/flaky/fix?key=b") as r:
        assert r.status == 200
    async with http.post(f"{gw.url}/v1/invocations/{id}/retry") as r:
        assert r.status == 202, await r.text()
    done = await wait_final(http, gw, id)
    assert done["status"] == "succeeded"
    assert done["attempts"] == 1
    await wait_final(http, gw, other)
    async with http.post(f"{gw.url}/v1/invocations/{id}/retry") as r:
        assert r.status == 409
        assert (await r.json())["error"]["code"] == "conflict"


async def test_idempotency_key_returns_the_first_id(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    headers = {"Idempotency-Key": "order-42"}
    ids = []
    for _ in range(3):
        async with http.post(f"{gw.url}/async/fn/flaky/x", data=b"1", headers=headers) as r:
            assert r.status == 202
            ids.append((await r.json())["id"])
    assert len(set(ids)) == 1
    assert await count_rows(gw, "idempotency_key = $1", "order-42") == 1

    # Concurrent repeats land in one group commit: still one row.
    async def once() -> str:
        async with http.post(
            f"{gw.url}/async/fn/flaky/x", headers={"Idempotency-Key": "burst"}
        ) as r:
            return str((await r.json())["id"])

    burst = await asyncio.gather(*(once() for _ in range(20)))
    assert len(set(burst)) == 1
    assert await count_rows(gw, "idempotency_key = $1", "burst") == 1


async def test_a_request_with_undecodable_headers_does_not_fail_its_batch(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async def raw() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(
            b"POST /async/fn/flaky/x HTTP/1.1\r\nHost: x\r\nX-Odd: \xff\xfe\r\n"
            b"Authorization: " + gw.headers["Authorization"].encode() + b"\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        data = await reader.read()
        writer.close()
        return data

    async def good() -> int:
        async with http.post(f"{gw.url}/async/fn/flaky/x", data=b"1") as r:
            return r.status

    odd, *others = await asyncio.gather(raw(), *(good() for _ in range(20)))
    assert odd.startswith(b"HTTP/1.1 202"), odd[:300]
    assert others == [202] * 20


async def test_binary_response_is_base64(gw: GatewayProcess, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{gw.url}/async/fn/flaky/binary") as r:
        id = (await r.json())["id"]
    done = await wait_final(http, gw, id)
    assert done["response"]["body_encoding"] == "base64"
    assert base64.b64decode(done["response"]["body"]) == b"\xff\xfe\x00"


async def test_callback_is_posted_and_retried(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    received: list[tuple[dict[str, str], dict[str, object]]] = []
    got_two = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.json()))
        if len(received) >= 2:
            got_two.set()
            return web.Response(status=204)
        return web.Response(status=500)  # the first delivery fails: it must be retried

    app = web.Application()
    app.router.add_post("/cb", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with http.post(
            f"{gw.url}/async/fn/flaky/x",
            data=b"cb",
            headers={"X-Callback-Url": f"http://127.0.0.1:{port}/cb"},
        ) as r:
            id = (await r.json())["id"]
        await asyncio.wait_for(got_two.wait(), 30)
    finally:
        await runner.cleanup()
    headers, body = received[-1]
    assert headers["X-Kapal-Invocation-Id"] == id
    assert headers["X-Kapal-Status"] == "succeeded"
    assert body["id"] == id and body["status"] == "succeeded"
    done = await wait_final(http, gw, id)
    for _ in range(50):
        async with http.get(f"{gw.url}/v1/invocations/{id}") as r:
            done = await r.json()
        if done["callback"] == "delivered":
            break
        await asyncio.sleep(0.1)
    assert done["callback"] == "delivered"


async def test_bad_input_answers_4xx_json(gw: GatewayProcess, http: aiohttp.ClientSession) -> None:
    async with http.post(
        f"{gw.url}/async/fn/flaky/x", headers={"X-Callback-Url": "ftp://nope"}
    ) as r:
        assert r.status == 400
        assert "X-Callback-Url" in (await r.json())["error"]["message"]
    async with http.get(f"{gw.url}/v1/invocations/not-a-uuid") as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "not_found"
    async with http.post(
        f"{gw.url}/v1/invocations/00000000-0000-0000-0000-000000000000/retry"
    ) as r:
        assert r.status == 404


FRAGILE = """
import os, time

def handle(event, context):
    first = event.headers.get("X-Kapal-Attempt") == "1"
    if event.path == "/exit" and first:
        os._exit(3)
    if event.path == "/slow" and first:
        time.sleep(5)
    return {"attempt": event.headers.get("X-Kapal-Attempt")}
"""


async def test_timeouts_and_lost_instances_are_retried(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    from tests.support import deploy

    spec = {"name": "fragile", "limits": {"timeout_s": 1}, "async": {"max_retries": 2}}
    status, body = await deploy(http, gw, {"handler.py": FRAGILE}, spec)
    assert status == 201, body
    ids = {}
    for path in ("exit", "slow"):
        async with http.post(f"{gw.url}/async/fn/fragile/{path}") as r:
            ids[path] = (await r.json())["id"]
    for path, id in ids.items():
        done = await wait_final(http, gw, id)
        assert done["status"] == "succeeded", (path, done)
        assert done["attempts"] == 2
        import json

        assert json.loads(done["response"]["body"]) == {"attempt": "2"}
    async with http.delete(f"{gw.url}/v1/functions/fragile") as r:
        assert r.status == 204
