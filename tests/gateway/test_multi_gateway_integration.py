"""Two gateway processes over one Postgres and one engine behave as one Kapal."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import aiohttp
import docker
import pytest

from scheduler.freezer import Freezer
from tests.conftest import GatewayFactory
from tests.gateway.queue_support import FAST_QUEUE, wait_final
from tests.support import GatewayProcess, deploy, managed_containers

pytestmark = pytest.mark.integration

HELLO = "def handle(event, context):\n    return 'v1'\n"
V2 = "def handle(event, context):\n    return 'v2'\n"
SLOW = "import time\n\ndef handle(event, context):\n    time.sleep(0.5)\n    return 'ok'\n"
# Counts the handlers running at once inside one instance; answers the most it saw.
COUNTING = """
import threading, time
lock = threading.Lock()
now = [0, 0]

def handle(event, context):
    with lock:
        now[0] += 1
        now[1] = max(now[1], now[0])
    time.sleep(0.05)
    with lock:
        now[0] -= 1
    return str(now[1])
"""
# The catalog must follow notifications: its periodic reload would take a minute.
SLOW_RELOAD = {"KAPAL_CATALOG_REFRESH_S": "60"}


def pair(make_gateway: GatewayFactory, **env: str) -> tuple[GatewayProcess, GatewayProcess]:
    a = make_gateway(**SLOW_RELOAD, **env)
    b = make_gateway(database_url=a.database_url, namespace=a.namespace, **SLOW_RELOAD, **env)
    return a, b


async def get(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, str]:
    async with http.get(url, **kw) as r:
        return r.status, await r.text()


async def until(
    http: aiohttp.ClientSession, url: str, want: tuple[int, str] | int, **kw: Any
) -> float:
    """Seconds until `url` answers `want` (status, or status and text); fails after 10 s."""
    began = time.monotonic()
    got: tuple[int, str] = (0, "")
    while time.monotonic() - began < 10:
        got = await get(http, url, **kw)
        if got == want or got[0] == want:
            return time.monotonic() - began
        await asyncio.sleep(0.02)
    raise AssertionError(f"{url} answered {got}, not {want}")


def running(client: docker.DockerClient, gw: GatewayProcess, function: str) -> set[str]:
    return {
        c.id
        for c in managed_containers(client, gw.namespace)
        if c.status == "running" and function in c.name
    }


async def test_a_second_gateway_removes_nothing_and_both_serve(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, docker_client: docker.DockerClient
) -> None:
    a = make_gateway()
    spec = {"name": "hello", "public": True, "scaling": {"min": 2}}
    status, body = await deploy(http, a, {"handler.py": HELLO}, spec)
    assert status == 201, body
    await until(http, f"{a.url}/fn/hello", (200, "v1"))
    for _ in range(100):
        if len(running(docker_client, a, "hello")) == 2:
            break
        await asyncio.sleep(0.1)
    before = running(docker_client, a, "hello")
    assert len(before) == 2

    b = make_gateway(database_url=a.database_url, namespace=a.namespace)
    assert await get(http, f"{b.url}/fn/hello") == (200, "v1")
    assert await get(http, f"{a.url}/fn/hello") == (200, "v1")
    assert running(docker_client, a, "hello") == before, "the second gateway changed instances"
    assert "leftover container removed" not in b.logs()
    # B routes to the instances A started (it starts none of its own).
    async with http.get(f"{b.url}/v1/functions/hello", headers=b.headers) as r:
        seen = {i["container"] for i in (await r.json())["instances"]}
    assert seen == {cid[:12] for cid in before}


async def test_deploy_update_delete_through_either_gateway(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, docker_client: docker.DockerClient
) -> None:
    a, b = pair(make_gateway)
    spec = {"name": "f", "public": True}
    status, body = await deploy(http, a, {"handler.py": HELLO}, spec)
    assert status == 201, body
    took = await until(http, f"{b.url}/fn/f", (200, "v1"))
    print(f"deploy on A served by B after {took:.3f} s")

    status, body = await deploy(http, b, {"handler.py": V2}, spec, name="f", update=True)
    assert status == 200, body
    await until(http, f"{a.url}/fn/f", (200, "v2"))

    async with http.post(
        f"{b.url}/v1/webhooks", json={"function": "f", "verify": "none"}, headers=b.headers
    ) as r:
        assert r.status == 201
        hook = (await r.json())["id"]
    async with http.post(
        f"{b.url}/v1/schedules", json={"function": "f", "cron": "0 0 1 1 *"}, headers=b.headers
    ) as r:
        assert r.status == 201
    async with http.delete(f"{a.url}/v1/functions/f", headers=a.headers) as r:
        assert r.status == 204
    # (Without a key, an unknown function looks like a private one: 401.)
    await until(http, f"{b.url}/fn/f", 404, headers=b.headers)
    async with http.get(f"{b.url}/v1/webhooks/{hook}", headers=b.headers) as r:
        assert r.status == 404
    async with http.get(f"{b.url}/v1/schedules", headers=b.headers) as r:
        assert (await r.json())["schedules"] == []
    for _ in range(100):
        if not [c for c in managed_containers(docker_client, a.namespace) if "-f-" in c.name]:
            break
        await asyncio.sleep(0.1)
    assert not [c.name for c in managed_containers(docker_client, a.namespace) if "-f-" in c.name]


async def test_async_work_queued_on_a_killed_gateway_runs_on_the_other(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a, b = pair(make_gateway, KAPAL_QUEUE_LEASE_S="2")
    spec = {"name": "slow", "public": True}
    status, body = await deploy(http, a, {"handler.py": SLOW}, spec)
    assert status == 201, body
    await until(http, f"{b.url}/fn/slow", (200, "ok"))
    ids = []
    for _ in range(5):
        async with http.post(f"{a.url}/async/fn/slow") as r:
            assert r.status == 202
            ids.append((await r.json())["id"])
    a.kill()
    for _ in range(300):
        states = []
        for id in ids:
            async with http.get(f"{b.url}/v1/invocations/{id}", headers=b.headers) as r:
                states.append((await r.json())["status"])
        if all(s == "succeeded" for s in states):
            break
        await asyncio.sleep(0.1)
    assert states == ["succeeded"] * 5


async def test_a_burst_through_both_starts_what_one_gateway_would(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, docker_client: docker.DockerClient
) -> None:
    a, b = pair(make_gateway, KAPAL_PREWARM_PYTHON="0")
    spec = {"name": "burst", "public": True, "scaling": {"concurrency": 2, "max": 20}}
    status, body = await deploy(http, a, {"handler.py": SLOW}, spec)
    assert status == 201, body
    calls = 12
    results = await asyncio.gather(
        *(get(http, f"{(a, b)[n % 2].url}/fn/burst") for n in range(calls))
    )
    assert all(r == (200, "ok") for r in results), results
    # One autoscaler, fed by both: instances for 12 requests at 2 each, 70% target.
    started = {c.id for c in managed_containers(docker_client, a.namespace) if "burst" in c.name}
    assert 1 <= len(started) <= math.ceil(calls / (2 * 0.7))


async def test_an_instance_never_runs_more_than_its_concurrency(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a, b = pair(make_gateway)
    spec = {"name": "count", "public": True, "scaling": {"concurrency": 2, "min": 1, "max": 1}}
    status, body = await deploy(http, a, {"handler.py": COUNTING}, spec)
    assert status == 201, body
    await until(http, f"{b.url}/fn/count", 200)
    results = await asyncio.gather(*(get(http, f"{(a, b)[n % 2].url}/fn/count") for n in range(40)))
    assert all(status == 200 for status, _ in results), results
    assert max(int(text) for _, text in results) <= 2


async def test_async_concurrency_holds_across_both_gateways(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a, b = pair(make_gateway, **FAST_QUEUE)
    spec = {
        "name": "acount",
        "public": True,
        # One instance with room for more: only the async limit holds the calls back.
        "scaling": {"concurrency": 8, "min": 1, "max": 1},
        "async": {"concurrency": 2},
    }
    status, body = await deploy(http, a, {"handler.py": COUNTING}, spec)
    assert status == 201, body
    await until(http, f"{b.url}/fn/acount", 200)
    ids = []
    for n in range(24):
        async with http.post(f"{(a, b)[n % 2].url}/async/fn/acount") as r:
            assert r.status == 202, await r.text()
            ids.append((await r.json())["id"])
    async with aiohttp.ClientSession(headers=a.headers) as admin:
        done = [await wait_final(admin, a, id) for id in ids]
    assert all(d["status"] == "succeeded" for d in done), done
    # Each answer is the most handlers the instance ran at once, so far.
    assert max(int(d["response"]["body"]) for d in done) <= 2


async def granted_rate(
    http: aiohttp.ClientSession, urls: list[str], headers: dict[str, str] | None = None
) -> float:
    """Requests a second answered 200 while 4 clients per URL ask as fast as they can."""
    granted: list[float] = []
    began = time.monotonic()
    run_s, skip_s = 6.0, 2.0  # the first seconds hold the buckets' initial bursts

    async def hammer(url: str) -> None:
        while time.monotonic() - began < run_s:
            status, _ = await get(http, url, headers=headers)
            if status == 200:
                granted.append(time.monotonic() - began)
            await asyncio.sleep(0.005)

    await asyncio.gather(*(hammer(url) for url in urls for _ in range(4)))
    return sum(1 for t in granted if t >= skip_s) / (run_s - skip_s)


async def test_a_function_rate_limit_holds_across_both_gateways(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a, b = pair(make_gateway)
    rate = 20.0
    spec = {"name": "limited", "public": True, "limits": {"rps": rate}}
    status, body = await deploy(http, a, {"handler.py": HELLO}, spec)
    assert status == 201, body
    await until(http, f"{b.url}/fn/limited", 200)
    measured = await granted_rate(http, [f"{a.url}/fn/limited", f"{b.url}/fn/limited"])
    assert rate * 0.9 <= measured <= rate * 1.1, f"{measured:.1f} requests/s granted"


async def test_a_key_rate_limit_holds_across_both_gateways(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a, b = pair(make_gateway)
    rate = 20.0
    status, body = await deploy(http, a, {"handler.py": HELLO}, {"name": "private"})
    assert status == 201, body
    # Made through A, known to B by the catalog's notification.
    async with http.post(
        f"{a.url}/v1/keys",
        json={"name": "slow", "scopes": ["invoke"], "rps": rate},
        headers=a.headers,
    ) as r:
        assert r.status == 201, await r.text()
        key = {"Authorization": f"Bearer {(await r.json())['key']}"}
    await until(http, f"{b.url}/fn/private", 200, headers=key)
    measured = await granted_rate(http, [f"{a.url}/fn/private", f"{b.url}/fn/private"], key)
    assert rate * 0.9 <= measured <= rate * 1.1, f"{measured:.1f} requests/s granted"


async def paused_on(http: aiohttp.ClientSession, gw: GatewayProcess, name: str) -> None:
    """Wait until `gw` sees the function's one instance as a paused standby."""
    pool: dict[str, Any] = {}
    for _ in range(300):
        async with http.get(f"{gw.url}/v1/functions/{name}", headers=gw.headers) as r:
            pool = (await r.json())["pool"]
        if pool["paused"] == 1 and pool["ready"] == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} not paused on {gw.url}: {pool}")


async def frozen(client: docker.DockerClient, gw: GatewayProcess, name: str) -> None:
    """Wait until the function's one container is frozen through its cgroup (parked
    standbys are frozen a moment later; the engine still says it runs)."""
    freezer = Freezer()
    for _ in range(300):
        found = [c for c in managed_containers(client, gw.namespace) if name in c.name]
        cgroup = freezer.locate(found[0].attrs["State"]["Pid"]) if len(found) == 1 else None
        if cgroup is not None and freezer.frozen(cgroup):
            assert found[0].status == "running"
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} not frozen")


async def test_a_standby_frozen_by_the_leader_serves_through_either_gateway(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, docker_client: docker.DockerClient
) -> None:
    # Frozen and thawed through its cgroup, no engine event tells the other gateway.
    a, b = pair(
        make_gateway, KAPAL_AUTOSCALE_STABLE_WINDOW_S="1", KAPAL_AUTOSCALE_PANIC_WINDOW_S="1"
    )
    spec = {"name": "standby", "public": True, "scaling": {"idle_timeout_s": 3600}}
    status, body = await deploy(http, a, {"handler.py": HELLO}, spec)
    assert status == 201, body
    await until(http, f"{b.url}/fn/standby", (200, "v1"))
    await paused_on(http, a, "standby")
    await paused_on(http, b, "standby")
    await frozen(docker_client, a, "standby")
    # The follower asks the leader, which thaws it and says so.
    await until(http, f"{b.url}/fn/standby", (200, "v1"))
    await paused_on(http, a, "standby")
    await paused_on(http, b, "standby")
    await frozen(docker_client, a, "standby")
    # The follower takes over: it must thaw the standby the dead leader froze.
    a.kill()
    for _ in range(300):
        async with http.get(f"{b.url}/v1/cluster", headers=b.headers) as r:
            if (await r.json())["leading"]:
                break
        await asyncio.sleep(0.1)
    assert await get(http, f"{b.url}/fn/standby") == (200, "v1")
    assert "instance discarded" not in b.logs()


async def test_a_standby_a_killed_gateway_froze_is_adopted_and_thawed_by_the_next(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, docker_client: docker.DockerClient
) -> None:
    # Alone, the gateway freezes its standby; killed, it leaves it frozen behind.
    a = make_gateway(KAPAL_AUTOSCALE_STABLE_WINDOW_S="1", KAPAL_AUTOSCALE_PANIC_WINDOW_S="1")
    spec = {"name": "left", "public": True, "scaling": {"idle_timeout_s": 3600}}
    status, body = await deploy(http, a, {"handler.py": HELLO}, spec)
    assert status == 201, body
    await until(http, f"{a.url}/fn/left", (200, "v1"))
    await paused_on(http, a, "left")
    await frozen(docker_client, a, "left")
    [container] = [c for c in managed_containers(docker_client, a.namespace) if "left" in c.name]
    a.kill()
    # The next gateway sees it frozen (the engine says running), keeps it as a standby,
    # and thaws it for the next request.
    b = make_gateway(database_url=a.database_url, namespace=a.namespace)
    await paused_on(http, b, "left")
    async with http.get(f"{b.url}/fn/left") as r:
        assert (r.status, await r.text()) == (200, "v1")
        assert r.headers["X-Kapal-Cold-Start"] == "paused"
    left = [c for c in managed_containers(docker_client, b.namespace) if "left" in c.name]
    assert [c.id for c in left] == [container.id]
