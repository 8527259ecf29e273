"""The public port against hostile clients, with raw sockets on 127.0.0.1 (a real gateway).

Every attack here is bounded: a few thousand sockets at most, seconds of waiting.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import GatewayFactory
from tests.support import GatewayProcess, deploy

pytestmark = pytest.mark.integration

ECHO = """
import asyncio

async def handle(event, context):
    if event.path == "/big":
        return b"x" * (int(event.query["mb"]) << 20)
    if event.path == "/sleep":
        await asyncio.sleep(float(event.query["s"]))
    return event.body
"""

SHORT = {
    "KAPAL_HEADER_TIMEOUT_S": "1",
    "KAPAL_BODY_TIMEOUT_S": "1",
    "KAPAL_KEEPALIVE_TIMEOUT_S": "2",
    "KAPAL_SEND_TIMEOUT_S": "2",
    "KAPAL_MAX_CONNECTIONS": "1000",
    "KAPAL_MAX_CONNECTIONS_PER_ADDRESS": "0",
    "KAPAL_PREWARM_PYTHON": "0",
}


async def deploy_echo(http: aiohttp.ClientSession, gw: GatewayProcess) -> None:
    spec = {
        "name": "echo",
        "public": True,
        "scaling": {"min": 1, "max": 1, "concurrency": 100},
        "limits": {"memory_mb": 512, "timeout_s": 60},
    }
    status, body = await deploy(http, gw, {"handler.py": ECHO}, spec)
    assert status == 201, body


@pytest.fixture
async def gw(make_gateway: GatewayFactory, http: aiohttp.ClientSession) -> GatewayProcess:
    gateway = make_gateway(**SHORT)
    await deploy_echo(http, gateway)
    return gateway


async def exchange(gw: GatewayProcess, data: bytes, wait_s: float = 10.0) -> bytes:
    """Send `data` on a new connection; everything the gateway answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), wait_s)
    finally:
        writer.close()


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"POST /fn/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            id="bad-chunk-size",
        ),
        pytest.param(
            b"POST /fn/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="cl-and-te",
        ),
        pytest.param(
            b"POST /fn/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
            b"Content-Length: 2\r\n\r\nab",
            id="two-content-lengths",
        ),
        pytest.param(
            b"POST /fn/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked, x\r\n\r\n",
            id="unknown-te",
        ),
        pytest.param(b"GET /fn/echo HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n b\r\n\r\n", id="obs-fold"),
        pytest.param(b"GET /fn/echo HTTP/1.1\r\nHost : x\r\n\r\n", id="space-before-colon"),
    ],
)
async def test_framing_errors_are_400_json(gw: GatewayProcess, request_bytes: bytes) -> None:
    status, headers, body = parse(await exchange(gw, request_bytes))
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "bad_request"


async def test_a_bad_chunk_after_the_body_started_is_400(gw: GatewayProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(
            b"POST /fn/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.3)  # the exchange with the instance is under way
        writer.write(b"zz\r\n")
        await writer.drain()
        status, _, body = parse(await asyncio.wait_for(reader.read(), 10))
    finally:
        writer.close()
    assert status == 400 and json.loads(body)["error"]["code"] == "bad_request"


async def test_function_responses_carry_no_runtime_server_header(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{gw.url}/fn/echo", data=b"hi") as r:
        assert r.status == 200 and await r.read() == b"hi"
        assert "Server" not in r.headers


async def test_a_slow_header_client_is_408_after_the_header_timeout(gw: GatewayProcess) -> None:
    # A header line every 0.3 s: without a header timeout the head would end at the
    # header-count limit (431) or never; with it (1 s here) the answer is 408.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        answer = asyncio.ensure_future(reader.read())
        for i in range(200):
            done, _ = await asyncio.wait({answer}, timeout=0.3)
            if done or reader.at_eof():
                break
            try:
                writer.write(b"X-%d: 1\r\n" % i)
                await writer.drain()
            except (BrokenPipeError, ConnectionResetError):
                break  # closed by the gateway: what it said is read below
        raw = await asyncio.wait_for(answer, 10)
    finally:
        writer.close()
    status, headers, body = parse(raw)
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_timeout"


async def test_a_body_that_stops_arriving_is_408(gw: GatewayProcess) -> None:
    raw = await exchange(gw, b"POST /fn/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    status, _, body = parse(raw)
    assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"


async def test_idle_connections_are_closed_quietly(gw: GatewayProcess) -> None:
    assert await exchange(gw, b"", wait_s=10) == b""  # sent nothing: closed, nothing said
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        first = await reader.readuntil(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200")
        length = int(parse(first)[1]["content-length"])
        await reader.readexactly(length)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # keep-alive idle: closed
    finally:
        writer.close()


async def test_two_thousand_idle_connections_do_not_stop_a_new_client(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    count = min(2000, soft - 200)
    idle = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.setblocking(False)
            idle.append(s)
            s.connect_ex(("127.0.0.1", gw.port))
        await asyncio.sleep(0.5)  # accepted: past the cap of 1000, the oldest are closed
        async with http.get(f"{gw.url}/healthz") as r:
            assert r.status == 200
        async with http.post(f"{gw.url}/fn/echo", data=b"still served") as r:
            assert r.status == 200 and await r.read() == b"still served"
    finally:
        for s in idle:
            s.close()


async def test_a_client_that_stops_reading_does_not_grow_the_gateways_memory(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    assert gw.proc is not None
    async with http.get(f"{gw.url}/fn/echo/big?mb=1") as r:  # the instance is warm
        assert r.status == 200
    before = rss_kib(gw.proc.pid)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", gw.port))
    peak = before
    try:
        s.sendall(b"GET /fn/echo/big?mb=128 HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 6  # the send timeout is 2 s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            peak = max(peak, rss_kib(gw.proc.pid))
    finally:
        s.close()
    assert peak - before < 64 * 1024, f"gateway RSS grew {peak - before} KiB"
    # The instance was not blamed for the stalled client: the next call is served by it.
    async with http.post(f"{gw.url}/fn/echo", data=b"after") as r:
        assert r.status == 200 and await r.read() == b"after"
        assert "X-Kapal-Cold-Start" not in r.headers


async def test_management_stays_reachable_while_the_function_path_is_saturated(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = make_gateway(**{**SHORT, "KAPAL_MAX_CONNECTIONS": "16"})
    await deploy_echo(http, gw)
    busy = []
    try:
        for _ in range(16):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(b"GET /fn/echo/sleep?s=4 HTTP/1.1\r\nHost: x\r\n\r\n")
            busy.append((reader, writer))
            await asyncio.sleep(0.05)  # parsed, so busy (never the idle one closed for room)
        status, headers, _ = parse(await exchange(gw, b"GET /fn/echo HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert status == 503 and headers["retry-after"] == "1"
        status, _, body = parse(await exchange(gw, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert status == 200, body
        async with http.get(f"{gw.url}/v1/functions", headers=gw.headers) as r:
            assert r.status == 200
        for reader, _ in busy:  # the saturating calls themselves still finish
            line = await asyncio.wait_for(reader.readline(), 20)
            assert line.startswith(b"HTTP/1.1 200")
    finally:
        for _, writer in busy:
            writer.close()
