"""Rate limits and request size limits on a real gateway."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from tests.conftest import GatewayFactory
from tests.support import GatewayProcess, deploy

pytestmark = pytest.mark.integration

HELLO = "def handle(event, context):\n    return 'hi'\n"


@pytest.fixture(scope="module")
def gw(shared_gateway: GatewayProcess) -> GatewayProcess:
    async def deploy_all() -> None:
        async with aiohttp.ClientSession() as http:
            for name, spec in (
                # One invocation every 100 s: the second of two back-to-back calls waits.
                ("slow", {"limits": {"rps": 0.01}, "public": True}),
                ("free", {"public": True}),
            ):
                status, body = await deploy(
                    http, shared_gateway, {"handler.py": HELLO}, {"name": name, **spec}
                )
                assert status == 201, body

    asyncio.run(deploy_all())
    return shared_gateway


async def test_function_rate_limit_is_429_with_retry_after(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gw.url}/fn/slow") as r:
        assert r.status == 200
    async with http.get(f"{gw.url}/fn/slow") as r:
        assert r.status == 429
        assert 1 <= int(r.headers["Retry-After"]) <= 100
        err = (await r.json())["error"]
    assert err["code"] == "rate_limited" and "slow" in err["message"]
    # Other functions are not affected.
    async with http.get(f"{gw.url}/fn/free") as r:
        assert r.status == 200


async def test_key_rate_limit_is_429_and_per_key(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    body = {"name": "slow key", "scopes": ["deploy"], "rps": 0.2}
    async with http.post(f"{gw.url}/v1/keys", json=body, headers=gw.headers) as r:
        assert r.status == 201
        slow = {"Authorization": f"Bearer {(await r.json())['key']}"}
    async with http.get(f"{gw.url}/v1/functions", headers=slow) as r:
        assert r.status == 200
    async with http.get(f"{gw.url}/v1/functions", headers=slow) as r:
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert (await r.json())["error"]["code"] == "rate_limited"
    async with http.get(f"{gw.url}/v1/functions", headers=gw.headers) as r:
        assert r.status == 200


async def raw_request(gw: GatewayProcess, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send a hand-made request head; returns (status, headers, body) of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(head)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head_raw, _, body = data.partition(b"\r\n\r\n")
    lines = head_raw.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    ("head", "status", "code"),
    [
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n",
            431,
            "headers_too_large",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(150))
            + b"\r\n",
            431,
            "headers_too_large",
        ),
        (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400, "bad_request"),
    ],
)
async def test_oversized_or_malformed_heads_are_json_errors(
    gw: GatewayProcess, head: bytes, status: int, code: str
) -> None:
    got, headers, body = await raw_request(gw, head)
    assert got == status
    assert headers["Content-Type"].startswith("application/json")
    import json

    assert json.loads(body)["error"]["code"] == code
    assert "Traceback" not in gw.logs()


async def test_oversized_bodies_are_413_json(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    big = b"x" * (70 * 1024)
    headers = {**gw.headers, "Content-Type": "application/json"}
    async with http.post(f"{gw.url}/v1/keys", data=big, headers=headers) as r:
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "payload_too_large"


async def test_upload_and_invocation_body_limits_are_413_json(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = make_gateway(KAPAL_MAX_BODY_BYTES="1000", KAPAL_MAX_CODE_BYTES="100000")
    files = {"handler.py": HELLO, "blob.bin": os.urandom(200_000)}
    status, body = await deploy(http, gw, files, {"name": "big"})
    assert status == 413, body
    assert body["error"]["code"] == "payload_too_large"
    status, body = await deploy(http, gw, {"handler.py": HELLO}, {"name": "small", "public": True})
    assert status == 201, body
    async with http.post(f"{gw.url}/fn/small", data=b"x" * 1001) as r:
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "payload_too_large"

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(20):
            yield b"x" * 100

    async with http.post(f"{gw.url}/fn/small", data=chunks()) as r:
        assert r.status == 413
    async with http.post(f"{gw.url}/fn/small", data=b"x" * 1000) as r:
        assert r.status == 200
