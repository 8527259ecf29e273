"""Streamed answers, websockets and HEAD through a real gateway to real instances."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from tests.conftest import PostgresServer
from tests.support import GatewayProcess, cleanup_namespace, deploy, new_namespace

pytestmark = pytest.mark.integration

LIVE = """
import asyncio

# Set by a call to /release: the event stream it holds goes on only then.
released = None


def _released():
    global released
    released = released or asyncio.Event()
    return released


async def events():
    yield "data: first\\n\\n"
    await _released().wait()
    yield "data: second\\n\\n"


def chunks():
    for i in range(5):
        yield b"part %d\\n" % i


def peers():
    # Remote ports of the connections established to this runtime's port (8080).
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    mine = [r for r in rows if r[1].endswith(":1F90") and r[3] == "01"]
    return sorted(int(r[2].split(":")[1], 16) for r in mine)


async def handle(event, context):
    if event.path == "/sse":
        headers = {"Content-Type": "text/event-stream"}
        return {"statusCode": 200, "headers": headers, "body": events()}
    if event.path == "/release":
        _released().set()
        return "released"
    if event.path == "/chunks":
        return chunks()
    if event.path == "/peers":
        return peers()
    return "hello"


async def websocket(ws, context):
    await ws.accept()
    async for message in ws:
        await ws.send(message)
"""

PLAIN = """
def handle(event, context):
    return "plain"
"""

# One instance with two slots: the tests below count on both.
LIVE_SPEC = {"public": True, "scaling": {"min": 1, "max": 1, "concurrency": 2}}


@pytest.fixture(scope="module")
def gw(
    postgres: PostgresServer, docker_client: docker.DockerClient, log_dir: Path
) -> Iterator[GatewayProcess]:
    # A short wait for a slot: a request the websockets leave no room for is 503 at once.
    env = {"KAPAL_QUEUE_TIMEOUT_S": "1", "KAPAL_PREWARM_PYTHON": "0"}
    gateway = GatewayProcess(postgres.new_database(), new_namespace(), log_dir, **env)
    gateway.start()

    async def deploy_all() -> None:
        async with aiohttp.ClientSession() as http:
            for name, code, spec in (("live", LIVE, LIVE_SPEC), ("plain", PLAIN, LIVE_SPEC)):
                status, body = await deploy(
                    http, gateway, {"handler.py": code}, {"name": name, **spec}
                )
                assert status == 201, body
                # Up before the tests start: their 1 s wait for a slot is no cold start's.
                deadline = time.monotonic() + 60
                while True:
                    async with http.get(f"{gateway.url}/fn/{name}/") as resp:
                        if resp.status == 200:
                            break
                    assert time.monotonic() < deadline, f"{name} never answered 200"
                    await asyncio.sleep(0.2)

    asyncio.run(deploy_all())
    yield gateway
    gateway.stop()
    leftovers = cleanup_namespace(docker_client, gateway.namespace)
    assert not leftovers, f"left behind after the gateway stopped: {leftovers}"


async def test_an_sse_event_arrives_before_the_handler_finishes(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gw.url}/fn/live/sse") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Transfer-Encoding"] == "chunked"
        # The handler waits for /release after its first event: that event got here first.
        assert await resp.content.readuntil(b"\n\n") == b"data: first\n\n"
        async with http.get(f"{gw.url}/fn/live/release") as released:
            assert await released.text() == "released"
        assert await resp.content.read() == b"data: second\n\n"


async def test_a_generator_body_comes_through_chunked(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gw.url}/fn/live/chunks") as resp:
        assert resp.status == 200
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert await resp.read() == b"".join(b"part %d\n" % i for i in range(5))


async def test_head_keeps_the_upstream_connection(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async def peers() -> list[int]:
        async with http.get(f"{gw.url}/fn/live/peers") as resp:
            assert resp.status == 200
            found: list[int] = await resp.json()
            return found

    before = await peers()
    for _ in range(10):
        async with http.head(f"{gw.url}/fn/live/") as resp:
            assert resp.status == 200 and await resp.read() == b""
    after = await peers()
    # A HEAD that closed its connection would leave the next request a new one (a new port).
    assert after == before


async def test_a_websocket_echoes_and_holds_its_slot_while_open(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(f"{gw.url}/fn/live/chat") as first:
        await first.send_str("hello")
        assert await first.receive_str() == "hello"
        async with http.ws_connect(f"{gw.url}/fn/live/chat") as second:
            await second.send_bytes(b"\x00\x01\xff")
            assert await second.receive_bytes() == b"\x00\x01\xff"
            # Both slots of the one instance are held by the two connections.
            async with http.get(f"{gw.url}/fn/live/") as resp:
                assert resp.status == 503
                assert (await resp.json())["error"]["code"] == "unavailable"
        await first.send_str("still here")
        assert await first.receive_str() == "still here"
        async with http.get(f"{gw.url}/fn/live/") as resp:  # a slot is free again
            assert resp.status == 200 and await resp.text() == "hello"
    await eventually_recorded(gw, http, "live", 101)


async def test_an_upgrade_to_a_function_without_websockets_is_a_clear_400(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await http.ws_connect(f"{gw.url}/fn/plain/chat")
    assert caught.value.status == 400
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(
            b"GET /fn/plain/chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        raw = await asyncio.wait_for(reader.read(), 30)  # answered, then closed
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"websocket_not_supported" in body and b"does not accept websockets" in body
    async with http.get(f"{gw.url}/fn/plain/") as resp:  # the instance serves on
        assert await resp.text() == "plain"


async def eventually_recorded(
    gw: GatewayProcess, http: aiohttp.ClientSession, name: str, status: int
) -> dict[str, Any]:
    """The first invocation record of `name` with `status`, once it is flushed."""
    url = f"{gw.url}/v1/functions/{name}/invocations"
    deadline = time.monotonic() + 30
    while True:
        async with http.get(url, params={"limit": "1000"}, headers=gw.headers) as r:
            assert r.status == 200, await r.text()
            found = [i for i in (await r.json())["invocations"] if i["status"] == status]
        if found:
            return dict(found[0])
        assert time.monotonic() < deadline, f"no {status} record of {name}"
        await asyncio.sleep(0.2)
