"""`KAPAL_WORKERS=2`: two gateway processes on one port, behaving as one gateway."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.workers import START_FAILURE_S
from infra.processes import descendants
from tests.conftest import GatewayFactory
from tests.support import GatewayProcess, deploy

pytestmark = pytest.mark.integration

HELLO = "def handle(event, context):\n    return 'hi'\n"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A new connection per request: the kernel picks a worker per connection.
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield session


async def answers(http: aiohttp.ClientSession, gw: GatewayProcess, n: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        async with http.get(f"{gw.url}/v1/cluster", headers=gw.headers) as r:
            assert r.status == 200, await r.text()
            out.append(await r.json())
    return out


async def until_two_peers(http: aiohttp.ClientSession, gw: GatewayProcess) -> set[str]:
    """The two workers' ids, once each has heard the other (fails after 20 s)."""
    deadline = time.monotonic() + 20
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = await answers(http, gw, 16)
        ids = {a["gateway"] for a in seen}
        if len(ids) == 2 and all(a["peers"] == sorted(ids - {a["gateway"]}) for a in seen):
            return ids
        await asyncio.sleep(0.2)
    raise AssertionError(f"workers never saw each other: {seen}")


def worker_pids(gw: GatewayProcess) -> list[int]:
    assert gw.proc is not None
    return [p for p in descendants(gw.proc.pid) if b"--worker" in cmdline(p)]


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


async def test_two_workers_serve_one_port_as_one_gateway(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = make_gateway(KAPAL_WORKERS="2")
    assert len(worker_pids(gw)) == 2
    ids = await until_two_peers(http, gw)
    leaders = {a["gateway"] for a in await answers(http, gw, 16) if a["leading"]}
    assert len(leaders) == 1 and leaders <= ids

    status, body = await deploy(http, gw, {"handler.py": HELLO}, {"name": "hi", "public": True})
    assert status == 201, body
    # Deployed through one worker, served by both at once.
    for _ in range(20):
        async with http.get(f"{gw.url}/fn/hi") as r:
            assert (r.status, await r.text()) == (200, "hi")
    # Both stop cleanly, the last removing everything (the fixture checks for leftovers).
    assert gw.stop() == 0


async def test_a_killed_worker_is_replaced_and_the_port_keeps_serving(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = make_gateway(KAPAL_WORKERS="2")
    status, body = await deploy(http, gw, {"handler.py": HELLO}, {"name": "hi", "public": True})
    assert status == 201, body
    before = await until_two_peers(http, gw)
    # Past its start-up (an early exit stops the whole group instead).
    await asyncio.sleep(START_FAILURE_S)
    victim = worker_pids(gw)[1]
    os.kill(victim, signal.SIGKILL)
    async with http.get(f"{gw.url}/fn/hi") as r:
        assert (r.status, await r.text()) == (200, "hi")
    after = await until_two_peers(http, gw)
    assert len(after & before) == 1, "one worker kept running, one is new"
    assert victim not in worker_pids(gw)
    async with http.get(f"{gw.url}/fn/hi") as r:
        assert (r.status, await r.text()) == (200, "hi")
    assert gw.stop() == 0
