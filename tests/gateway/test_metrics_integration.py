"""GET /metrics on a real gateway: who may read it, and that it counts what happened."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GatewayFactory
from tests.gateway.queue_support import wait_final
from tests.support import GatewayProcess, deploy, free_port

pytestmark = pytest.mark.integration

HELLO = "def handle(event, context):\n    return 'hello'\n"
SLOW = "import time\n\ndef handle(event, context):\n    time.sleep(2)\n    return 'slow'\n"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def new_key(http: aiohttp.ClientSession, gw: GatewayProcess, scopes: list[str]) -> str:
    body = {"name": "scraper", "scopes": scopes}
    async with http.post(f"{gw.url}/v1/keys", json=body, headers=gw.headers) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["key"])


async def scrape(http: aiohttp.ClientSession, gw: GatewayProcess, key: str) -> Samples:
    async with http.get(f"{gw.url}/metrics", headers=bearer(key)) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape_until(
    http: aiohttp.ClientSession,
    gw: GatewayProcess,
    key: str,
    done: Callable[[Samples], bool],
    timeout_s: float = 20.0,
) -> Samples:
    deadline = time.monotonic() + timeout_s
    while True:
        samples = await scrape(http, gw, key)
        if done(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen in {timeout_s:g} s: {samples}")
        await asyncio.sleep(0.2)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over the samples carrying `labels` (0 when there are none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture(scope="module")
def deployed(gw: GatewayProcess) -> GatewayProcess:
    async def deploy_all() -> None:
        async with aiohttp.ClientSession() as http:
            for files, spec in (
                ({"handler.py": HELLO}, {"name": "hello", "public": True}),
                ({"handler.py": HELLO}, {"name": "limited", "public": True, "limits": {"rps": 1}}),
                ({"handler.py": SLOW}, {"name": "slow", "async": {"concurrency": 1}}),
            ):
                status, body = await deploy(http, gw, files, spec)
                assert status == 201, body

    asyncio.run(deploy_all())
    return gw


async def test_metrics_need_a_key_with_the_scope(
    deployed: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{deployed.url}/metrics") as r:
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "unauthorized"
    invoker = await new_key(http, deployed, ["invoke"])
    async with http.get(f"{deployed.url}/metrics", headers=bearer(invoker)) as r:
        assert r.status == 403
    scraper = await new_key(http, deployed, ["metrics"])
    samples = await scrape(http, deployed, scraper)
    assert samples[("kapal_event_loop_lag_seconds_count", frozenset())] >= 1
    assert ("kapal_leading", frozenset()) in samples
    assert ("process_cpu_seconds_total", frozenset()) in samples
    # The scraper's key may read metrics and nothing else.
    async with http.get(f"{deployed.url}/v1/functions", headers=bearer(scraper)) as r:
        assert r.status == 403
    await scrape(http, deployed, deployed.admin_key or "")  # admin may do everything


async def test_calls_show_at_once_with_their_cold_start_and_instances(
    deployed: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    key = await new_key(http, deployed, ["metrics"])
    async with http.get(f"{deployed.url}/fn/hello") as r:
        assert r.status == 200
        tier = r.headers["X-Kapal-Cold-Start"]
    before = await scrape(http, deployed, key)
    assert total(before, "kapal_cold_starts_total", function="hello", tier=tier) == 1
    for _ in range(10):
        async with http.get(f"{deployed.url}/fn/hello") as r:
            assert r.status == 200
    after = await scrape(http, deployed, key)
    calls = "kapal_invocations_total"
    ok = {"function": "hello", "trigger": "http", "status": "2xx"}
    assert total(after, calls, **ok) - total(before, calls, **ok) == 10
    assert total(after, calls, **ok) == 11
    duration = "kapal_invocation_duration_seconds_count"
    assert total(after, duration, function="hello") == 11
    assert total(after, "kapal_invocation_wait_seconds_count", function="hello") == 11
    states = {
        dict(labels)["state"]: v
        for (name, labels), v in after.items()
        if name == "kapal_instances" and dict(labels)["function"] == "hello"
    }
    assert {"ready", "busy", "paused", "starting", "draining"} <= set(states)
    assert states["ready"] >= 1
    assert total(after, "kapal_requests_waiting", function="hello") == 0
    assert total(after, "kapal_build_duration_seconds_count", result="ok") >= 3


async def test_rate_limited_calls_are_rejections(
    deployed: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    key = await new_key(http, deployed, ["metrics"])
    statuses = []
    for _ in range(5):
        async with http.get(f"{deployed.url}/fn/limited") as r:
            statuses.append(r.status)
    samples = await scrape(http, deployed, key)
    rejected = total(samples, "kapal_rejections_total", function="limited", reason="rate_limit")
    assert rejected == statuses.count(429) >= 1


async def test_queued_work_retries_and_dead_letters(
    deployed: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    key = await new_key(http, deployed, ["metrics"])
    ids = []
    for _ in range(3):  # one runs at a time: the others wait in the queue
        async with http.post(f"{deployed.url}/async/fn/slow", headers=deployed.headers) as r:
            assert r.status == 202
            ids.append((await r.json())["id"])
    # Read at most once a second: an earlier scrape's answer may still stand.
    samples = await scrape_until(
        http, deployed, key, lambda s: total(s, "kapal_queue_depth", function="slow") >= 1
    )
    assert total(samples, "kapal_queue_oldest_age_seconds", function="slow") >= 0

    async def queue(admin: aiohttp.ClientSession, path: str) -> Any:
        async with admin.post(f"{deployed.url}/async/fn/flaky{path}") as r:
            assert r.status == 202
            return await wait_final(admin, deployed, (await r.json())["id"])

    before = await scrape(http, deployed, key)
    # Two 503s then a 200: two retries; always a 500: three retries, then dead.
    async with aiohttp.ClientSession(headers=deployed.headers) as admin:
        until, broken = await asyncio.gather(
            queue(admin, "/until?n=3&key=m1"), queue(admin, "/broken?key=m2")
        )
    assert until["status"] == "succeeded" and broken["status"] == "dead"
    after = await scrape(http, deployed, key)
    retries = "kapal_async_retries_total"
    assert total(after, retries, function="flaky") - total(before, retries, function="flaky") == 5
    dead = "kapal_dead_letters_total"
    assert total(after, dead, function="flaky") - total(before, dead, function="flaky") == 1
    attempts = {"function": "flaky", "trigger": "async"}
    calls = "kapal_invocations_total"
    assert total(after, calls, **attempts) - total(before, calls, **attempts) == 7
    await scrape_until(  # the slow ones drain
        http, deployed, key, lambda s: total(s, "kapal_queue_depth", function="slow") == 0
    )


def consecutive_free_ports(n: int) -> int:
    """The first of `n` consecutive ports nothing listens on (as far as can be told)."""
    for _ in range(50):
        first = free_port()
        try:
            with contextlib.ExitStack() as held:
                for port in range(first, first + n):
                    s = held.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise AssertionError("no consecutive free ports")


async def test_each_worker_is_a_target_of_its_own(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    port = consecutive_free_ports(2)
    gw = make_gateway(KAPAL_WORKERS="2", KAPAL_METRICS_LISTEN=f"127.0.0.1:{port}")
    targets = [f"http://127.0.0.1:{p}/metrics" for p in (port, port + 1)]

    async def leading() -> list[float] | None:
        """Each worker's kapal_leading; None while one does not answer yet."""
        out = []
        for url in targets:
            try:
                async with http.get(url, headers=gw.headers) as r:
                    assert r.status == 200, await r.text()
                    text = await r.text()
            except aiohttp.ClientConnectorError:
                return None  # the gateway answered once one worker was up
            samples = {
                s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            }
            out.append(samples["kapal_leading"])
        return out

    deadline = time.monotonic() + 20
    while (seen := await leading()) not in ([1.0, 0.0], [0.0, 1.0]):
        assert time.monotonic() < deadline, f"not one leader among the workers: {seen}"
        await asyncio.sleep(0.2)
    async with http.get(targets[0]) as r:
        assert r.status == 401
    async with http.get(f"http://127.0.0.1:{port}/v1/functions", headers=gw.headers) as r:
        assert r.status == 404  # metrics only
