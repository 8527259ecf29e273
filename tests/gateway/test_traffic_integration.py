"""Traffic splits between versions on a real gateway, Docker engine and Postgres: the
split lands as weighted, a rollback under load fails no request, a version at 0% drains
to no container, and a second gateway on the database routes by the same split."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp
import docker
import pytest

from tests.conftest import GatewayFactory
from tests.support import GatewayProcess, deploy, managed_containers

pytestmark = pytest.mark.integration

CALLS = 2000


def says(tag: str) -> dict[str, str | bytes]:
    return {"handler.py": f"def handle(event, context):\n    return {tag!r}\n"}


async def deploy_versions(
    http: aiohttp.ClientSession, gw: GatewayProcess, name: str, n: int, **spec: Any
) -> None:
    """Versions 1..n of `name`, each answering "v<version>"."""
    body = {"name": name, "public": True, **spec}
    assert (await deploy(http, gw, says("v1"), body))[0] == 201
    for v in range(2, n + 1):
        status, out = await deploy(http, gw, says(f"v{v}"), body, name=name, update=True)
        assert (status, out["version"]) == (200, v), out


async def put_traffic(
    http: aiohttp.ClientSession, gw: GatewayProcess, name: str, body: Any
) -> tuple[int, Any]:
    url = f"{gw.url}/v1/functions/{name}/traffic"
    async with http.put(url, json=body, headers=gw.headers) as r:
        return r.status, await r.json()


async def get_traffic(http: aiohttp.ClientSession, gw: GatewayProcess, name: str) -> Any:
    async with http.get(f"{gw.url}/v1/functions/{name}/traffic", headers=gw.headers) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def call(http: aiohttp.ClientSession, gw: GatewayProcess, name: str) -> tuple[int, str, str]:
    """(status, body, X-Kapal-Version) of one call."""
    async with http.get(f"{gw.url}/fn/{name}") as r:
        return r.status, await r.text(), r.headers.get("X-Kapal-Version", "")


async def spread(
    http: aiohttp.ClientSession, gw: GatewayProcess, name: str, calls: int = CALLS
) -> Counter[str]:
    """Calls made 16 at a time, counted by the version that served them; every one a 200
    whose body is that version's."""
    counts: Counter[str] = Counter()
    left = iter(range(calls))

    async def worker() -> None:
        for _ in left:
            status, text, version = await call(http, gw, name)
            assert (status, text) == (200, f"v{version}"), (status, text, version)
            counts[version] += 1

    await asyncio.gather(*(worker() for _ in range(16)))
    return counts


async def serves_only(
    http: aiohttp.ClientSession, gw: GatewayProcess, name: str, version: str
) -> None:
    deadline = time.monotonic() + 60
    while True:
        answers = [await call(http, gw, name) for _ in range(10)]
        if all(a == (200, f"v{version}", version) for a in answers):
            return
        assert time.monotonic() < deadline, f"{name} answers {answers}, not only v{version}"
        await asyncio.sleep(0.2)


async def no_containers_of(
    client: docker.DockerClient, gw: GatewayProcess, name: str, version: str
) -> None:
    """Wait until no container of `name`'s `version` is left (drained, scaled to zero)."""
    deadline = time.monotonic() + 60
    while True:
        left = [
            c.name
            for c in managed_containers(client, gw.namespace, name)
            if c.labels.get("kapal.version") == version
        ]
        if not left:
            return
        assert time.monotonic() < deadline, f"still running for version {version}: {left}"
        await asyncio.sleep(0.5)


async def record_version(
    http: aiohttp.ClientSession, gw: GatewayProcess, name: str, request_id: str
) -> int:
    """The version the invocation record of `request_id` names (records are batched)."""
    url = f"{gw.url}/v1/functions/{name}/invocations/{request_id}"
    deadline = time.monotonic() + 30
    while True:
        async with http.get(url, headers=gw.headers) as r:
            if r.status == 200:
                return int((await r.json())["record"]["version"])
        assert time.monotonic() < deadline, f"no record of {request_id}"
        await asyncio.sleep(0.3)


async def test_a_90_10_split_lands_within_five_percent_and_says_who_served(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    gw = shared_gateway
    await deploy_versions(http, gw, "split", 4)
    assert await get_traffic(http, gw, "split") == {"traffic": {"4": 100}}

    status, body = await put_traffic(http, gw, "split", {"traffic": {"3": 90, "4": 10, "1": 0}})
    assert (status, body) == (200, {"traffic": {"3": 90, "4": 10}}), body
    assert await get_traffic(http, gw, "split") == {"traffic": {"3": 90, "4": 10}}
    async with http.get(f"{gw.url}/v1/functions/split/versions", headers=gw.headers) as r:
        current = [v["version"] for v in (await r.json())["versions"] if v["current"]]
    assert current == [3]  # the largest share

    counts = await spread(http, gw, "split")
    assert set(counts) == {"3", "4"}, counts
    share = counts["4"] / CALLS
    assert 0.05 <= share <= 0.15, f"version 4 served {share:.1%} of {CALLS} calls, not 10%"

    # The record of each call names the version its header named.
    for version in ("3", "4"):
        while True:
            async with http.get(f"{gw.url}/fn/split") as r:
                if r.headers["X-Kapal-Version"] == version:
                    rid = r.headers["X-Kapal-Request-Id"]
                    break
        assert await record_version(http, gw, "split", rid) == int(version)

    # Queued invocations follow the split too; their answer says which version ran.
    async with http.post(f"{gw.url}/async/fn/split", headers=gw.headers) as r:
        assert r.status == 202
        location = r.headers["Location"]
    deadline = time.monotonic() + 30
    while True:
        async with http.get(f"{gw.url}{location}", headers=gw.headers) as r:
            done = await r.json()
        if done["status"] == "succeeded":
            break
        assert time.monotonic() < deadline, done
        await asyncio.sleep(0.2)
    headers = {k.lower(): v for k, v in done["response"]["headers"].items()}
    assert headers["x-kapal-version"] in ("3", "4")
    assert done["response"]["body"] == f"v{headers['x-kapal-version']}"

    # A plain deploy of a new version takes all of the traffic.
    status, out = await deploy(http, gw, says("v5"), {"public": True}, name="split", update=True)
    assert (status, out["version"]) == (200, 5)
    assert await get_traffic(http, gw, "split") == {"traffic": {"5": 100}}
    await serves_only(http, gw, "split", "5")


@pytest.mark.parametrize(
    ("body", "status", "says_"),
    [
        ({"traffic": {"1": 60, "2": 30}}, 422, "add up to 100, not 90"),
        ({"traffic": {"1": 110, "2": -10}}, 422, "traffic.2"),
        ({"traffic": {"1": 50.5, "2": 49.5}}, 422, "traffic.1"),
        ({"traffic": {"one": 100}}, 422, "traffic.one"),
        ({"traffic": {"0": 100}}, 422, "traffic.0"),
        ({"traffic": {}}, 422, "add up to 100, not 0"),
        ({"weights": {"1": 100}}, 422, "traffic"),
        ({"traffic": {"1": 50, "7": 40, "9": 10}}, 404, "has no version 7, 9"),
    ],
)
async def test_a_bad_split_is_refused_naming_the_problem(
    shared_gateway: GatewayProcess,
    http: aiohttp.ClientSession,
    body: Any,
    status: int,
    says_: str,
) -> None:
    gw = shared_gateway
    async with http.get(f"{gw.url}/v1/functions/bad-split", headers=gw.headers) as r:
        if r.status == 404:
            await deploy_versions(http, gw, "bad-split", 2)
    got, answer = await put_traffic(http, gw, "bad-split", body)
    assert got == status and says_ in answer["error"]["message"], answer
    assert await get_traffic(http, gw, "bad-split") == {"traffic": {"2": 100}}


async def test_traffic_of_no_function_and_a_body_not_json(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    gw = shared_gateway
    status, body = await put_traffic(http, gw, "nope", {"traffic": {"1": 100}})
    assert (status, body["error"]["code"]) == (404, "function_not_found")
    async with http.get(f"{gw.url}/v1/functions/nope/traffic", headers=gw.headers) as r:
        assert r.status == 404
    url = f"{gw.url}/v1/functions/nope/traffic"
    async with http.put(
        url, data=b"{", headers={**gw.headers, "Content-Type": "application/json"}
    ) as r:
        assert r.status == 400


async def test_shifting_and_rolling_back_under_load_fail_no_request_and_drain_to_zero(
    shared_gateway: GatewayProcess,
    http: aiohttp.ClientSession,
    docker_client: docker.DockerClient,
) -> None:
    gw = shared_gateway
    await deploy_versions(http, gw, "shift", 2, scaling={"concurrency": 4})
    await serves_only(http, gw, "shift", "2")
    answers: list[tuple[int, str, str]] = []
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            answers.append(await call(http, gw, "shift"))

    callers = [asyncio.create_task(caller()) for _ in range(4)]
    try:
        await asyncio.sleep(0.5)
        assert (await put_traffic(http, gw, "shift", {"traffic": {"1": 50, "2": 50}}))[0] == 200
        deadline = time.monotonic() + 60
        while {v for *_, v in answers[-50:]} != {"1", "2"}:
            assert time.monotonic() < deadline, "the split never served both versions"
            await asyncio.sleep(0.2)
        status, body = await put_traffic(http, gw, "shift", {"traffic": {"1": 0, "2": 100}})
        assert status == 200, body
        await serves_only(http, gw, "shift", "2")
        # Rolled back: all of it to version 1, no rebuild.
        async with http.post(
            f"{gw.url}/v1/functions/shift/rollback", json={}, headers=gw.headers
        ) as r:
            assert r.status == 200 and (await r.json())["version"] == 1
        await serves_only(http, gw, "shift", "1")
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*callers)
    failed = [a for a in answers if a[0] != 200 or a[1] != f"v{a[2]}"]
    assert not failed, f"{len(failed)} of {len(answers)} calls failed: {failed[:5]}"
    assert await get_traffic(http, gw, "shift") == {"traffic": {"1": 100}}
    await no_containers_of(docker_client, gw, "shift", "2")


async def test_a_second_gateway_routes_by_the_same_split(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    # Its periodic reload would take a minute: the split reaches it by notification.
    a = make_gateway(KAPAL_CATALOG_REFRESH_S="60")
    b = make_gateway(
        database_url=a.database_url, namespace=a.namespace, KAPAL_CATALOG_REFRESH_S="60"
    )
    await deploy_versions(http, a, "both", 2)
    assert await get_traffic(http, b, "both") == {"traffic": {"2": 100}}
    assert (await put_traffic(http, a, "both", {"traffic": {"1": 50, "2": 50}}))[0] == 200
    assert await get_traffic(http, b, "both") == {"traffic": {"1": 50, "2": 50}}
    deadline = time.monotonic() + 10
    while (await call(http, b, "both"))[2] != "1":  # heard of the split
        assert time.monotonic() < deadline, "the second gateway never routed to version 1"
    counts = await spread(http, b, "both", 400)
    assert 0.35 <= counts["1"] / 400 <= 0.65, counts
    assert (await put_traffic(http, b, "both", {"traffic": {"1": 100}}))[0] == 200
    await serves_only(http, a, "both", "1")
    await serves_only(http, b, "both", "1")
