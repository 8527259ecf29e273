"""Cold-start tiers, scale to zero and back, and scaling under load, on a real gateway."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from infra.local import GatewayProcess
from tests.conftest import GatewayFactory
from tests.support import deploy

pytestmark = pytest.mark.integration

SLEEPY = {
    "handler.py": (
        "import asyncio\n"
        "async def handle(event, context):\n"
        "    await asyncio.sleep(float(event.query.get('s', '0')))\n"
        "    return 'ok'\n"
    )
}


async def function(http: aiohttp.ClientSession, gw: GatewayProcess, name: str) -> Any:
    async with http.get(f"{gw.url}/v1/functions/{name}") as r:
        return await r.json()


async def wait_for(
    http: aiohttp.ClientSession, gw: GatewayProcess, name: str, check: Any, seconds: float = 60.0
) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        fn = await function(http, gw, name)
        if check(fn):
            return fn
        if time.monotonic() > deadline:
            raise AssertionError(
                f"condition not met in {seconds}s: {fn['pool']}, {fn['instances']}"
            )
        await asyncio.sleep(0.2)


@pytest.fixture
def fast_scaling(make_gateway: GatewayFactory) -> GatewayProcess:
    return make_gateway(KAPAL_AUTOSCALE_STABLE_WINDOW_S="2", KAPAL_AUTOSCALE_PANIC_WINDOW_S="1")


async def test_cold_start_tiers_prewarm_new_then_paused_then_zero(
    fast_scaling: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    gw = fast_scaling
    status, body = await deploy(
        http, gw, SLEEPY, {"name": "tiers", "scaling": {"idle_timeout_s": 4}}
    )
    assert status == 201, body
    status, body = await deploy(http, gw, SLEEPY, {"name": "big", "limits": {"memory_mb": 300}})
    assert status == 201, body
    # Default limits and no dependencies: a prewarmed generic container is specialized.
    async with http.get(f"{gw.url}/fn/tiers") as r:
        assert r.status == 200
        assert r.headers["X-Kapal-Cold-Start"] == "prewarm"
    async with http.get(f"{gw.url}/fn/tiers") as r:
        assert "X-Kapal-Cold-Start" not in r.headers
    # Other limits than the prewarmed containers have: a new container from its image.
    async with http.get(f"{gw.url}/fn/big") as r:
        assert r.status == 200
        assert r.headers["X-Kapal-Cold-Start"] == "new"
    # No traffic for the stable window: the instance is paused as a standby...
    fn = await wait_for(http, gw, "tiers", lambda f: f["pool"]["paused"] == 1)
    assert fn["pool"]["desired"] == 0 and fn["pool"]["ready"] == 0
    # ... and the next request unpauses it.
    async with http.get(f"{gw.url}/fn/tiers") as r:
        assert r.status == 200
        assert r.headers["X-Kapal-Cold-Start"] == "paused"
    # Idle past idle_timeout_s: removed, down to zero.
    await wait_for(http, gw, "tiers", lambda f: f["instances"] == [])


async def test_burst_scales_out_without_errors(
    fast_scaling: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    gw = fast_scaling
    spec = {"name": "burst", "scaling": {"concurrency": 2, "max": 6}}
    status, body = await deploy(http, gw, SLEEPY, spec)
    assert status == 201, body
    statuses: list[int] = []

    async def caller() -> None:
        for _ in range(10):
            async with http.get(f"{gw.url}/fn/burst?s=0.2") as r:
                statuses.append(r.status)

    await asyncio.gather(*(caller() for _ in range(12)))
    assert statuses == [200] * 120
    fn = await function(http, gw, "burst")
    assert 2 <= len([i for i in fn["instances"] if i["state"] != "paused"]) <= 6
