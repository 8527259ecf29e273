"""Cold-start tiers, scale to zero and back, and scaling under load, on a real gateway."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import docker
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
    async with http.get(f"{gw.url}/v1/functions/{name}", headers=gw.headers) as r:
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
    async with http.get(f"{gw.url}/fn/tiers", headers=gw.headers) as r:
        assert r.status == 200
        assert r.headers["X-Kapal-Cold-Start"] == "prewarm"
    async with http.get(f"{gw.url}/fn/tiers", headers=gw.headers) as r:
        assert "X-Kapal-Cold-Start" not in r.headers
    # Other limits than the prewarmed containers have: a new container from its image.
    async with http.get(f"{gw.url}/fn/big", headers=gw.headers) as r:
        assert r.status == 200
        assert r.headers["X-Kapal-Cold-Start"] == "new"
    # No traffic for the stable window: the instance is paused as a standby...
    fn = await wait_for(http, gw, "tiers", lambda f: f["pool"]["paused"] == 1)
    assert fn["pool"]["desired"] == 0 and fn["pool"]["ready"] == 0
    # ... and the next request unpauses it.
    async with http.get(f"{gw.url}/fn/tiers", headers=gw.headers) as r:
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
            async with http.get(f"{gw.url}/fn/burst?s=0.2", headers=gw.headers) as r:
                statuses.append(r.status)

    await asyncio.gather(*(caller() for _ in range(12)))
    assert statuses == [200] * 120
    fn = await function(http, gw, "burst")
    assert 2 <= len([i for i in fn["instances"] if i["state"] != "paused"]) <= 6


async def test_killed_container_is_detected_and_replaced(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, docker_client: docker.DockerClient
) -> None:
    gw = make_gateway()
    status, body = await deploy(http, gw, SLEEPY, {"name": "victim"})
    assert status == 201, body
    async with http.get(f"{gw.url}/fn/victim", headers=gw.headers) as r:
        assert r.status == 200
    [instance] = (await function(http, gw, "victim"))["instances"]
    docker_client.containers.get(instance["container"]).kill()
    # The engine's event, not a failed request, takes it out of routing.
    await wait_for(
        http, gw, "victim", lambda f: instance["id"] not in [i["id"] for i in f["instances"]]
    )
    async with http.get(f"{gw.url}/fn/victim", headers=gw.headers) as r:
        assert r.status == 200
        # A replacement the pool started on its own (it still wants one instance) may be
        # ready before this call; otherwise the call itself waited for one.
        assert r.headers.get("X-Kapal-Cold-Start", "none") in ("prewarm", "new", "none")
    now = (await function(http, gw, "victim"))["instances"]
    assert now and instance["container"] not in [i["container"] for i in now]


async def test_full_buffer_answers_503_with_retry_after_and_counts_it(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = make_gateway(KAPAL_BUFFER_SIZE="1")
    spec = {"name": "narrow", "scaling": {"concurrency": 1, "max": 1, "min": 1}}
    status, body = await deploy(http, gw, SLEEPY, spec)
    assert status == 201, body
    await wait_for(http, gw, "narrow", lambda f: f["pool"]["ready"] == 1)

    async def call() -> tuple[int, str, Any]:
        async with http.get(f"{gw.url}/fn/narrow?s=1", headers=gw.headers) as r:
            body = await r.json() if r.status == 503 else await r.text()
            return r.status, r.headers.get("Retry-After", ""), body

    results = await asyncio.gather(*(call() for _ in range(4)))
    refused = [r for r in results if r[0] == 503]
    assert sorted(r[0] for r in results) == [200, 200, 503, 503]
    assert all(r[1] == "1" and r[2]["error"]["code"] == "unavailable" for r in refused)
    assert (await function(http, gw, "narrow"))["pool"]["rejected"] == 2
