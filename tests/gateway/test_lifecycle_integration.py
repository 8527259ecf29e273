"""Update, delete, restart and dependencies, on a real gateway, Docker engine and Postgres."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import docker
import pytest

from tests.conftest import GatewayFactory
from tests.support import deploy, managed_containers

pytestmark = pytest.mark.integration


def version_fn(tag: str) -> dict[str, str | bytes]:
    return {
        "handler.py": (
            f"import time\ndef handle(event, context):\n    time.sleep(0.02)\n    return {tag!r}\n"
        )
    }


async def test_update_rolls_to_new_version_without_dropping_requests(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = make_gateway()
    spec = {"name": "roll", "scaling": {"concurrency": 4}}
    status, body = await deploy(http, gw, version_fn("v1"), spec)
    assert status == 201, body
    results: list[tuple[int, str]] = []
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            async with http.get(f"{gw.url}/fn/roll", headers=gw.headers) as r:
                results.append((r.status, await r.text()))

    callers = [asyncio.create_task(caller()) for _ in range(6)]
    # The update comes while v1 serves (its first answers may take a while on a busy host).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(1 for _, t in results if t == "v1") < 20:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    status, body = await deploy(http, gw, version_fn("v2"), spec, name="roll", update=True)
    assert status == 200, body
    assert body["version"] == 2
    # Keep calling until the new version has served for a while.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(1 for _, t in results[-50:] if t == "v2") < 50:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*callers)

    assert results, "no request completed"
    bad = [r for r in results if r[0] != 200]
    assert not bad, f"{len(bad)} of {len(results)} requests failed: {bad[:5]}"
    texts = [t for _, t in results]
    assert set(texts) == {"v1", "v2"}
    first_v2 = texts.index("v2")
    # Once the new version answers, new requests do not go back to the old one
    # (a request already in flight on v1 may still finish just after).
    assert texts[first_v2 + 20 :].count("v1") == 0
    async with http.get(f"{gw.url}/v1/functions/roll", headers=gw.headers) as r:
        fn = await r.json()
    assert [v["version"] for v in fn["versions"]] == [1, 2]
    # The old version's instances drain and go away.
    for _ in range(100):
        async with http.get(f"{gw.url}/v1/functions/roll", headers=gw.headers) as r:
            fn = await r.json()
        if all(i["version"] == 2 for i in fn["instances"]):
            break
        await asyncio.sleep(0.1)
    assert all(i["version"] == 2 for i in fn["instances"]), fn["instances"]


async def test_delete_stops_instances_and_removes_images(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, docker_client: docker.DockerClient
) -> None:
    gw = make_gateway()
    status, body = await deploy(http, gw, version_fn("x"), {"name": "gone"})
    assert status == 201, body
    async with http.get(f"{gw.url}/fn/gone", headers=gw.headers) as r:
        assert r.status == 200
    async with http.get(f"{gw.url}/v1/functions/gone", headers=gw.headers) as r:
        containers = [i["container"] for i in (await r.json())["instances"]]
    running = {c.id[:12] for c in managed_containers(docker_client, gw.namespace)}
    assert containers and set(containers) <= running
    async with http.delete(f"{gw.url}/v1/functions/gone", headers=gw.headers) as r:
        assert r.status == 204
    async with http.get(f"{gw.url}/fn/gone", headers=gw.headers) as r:
        assert r.status == 404
    async with http.get(f"{gw.url}/v1/functions/gone", headers=gw.headers) as r:
        assert r.status == 404
    async with http.delete(f"{gw.url}/v1/functions/gone", headers=gw.headers) as r:
        assert r.status == 404
    running = {c.id[:12] for c in managed_containers(docker_client, gw.namespace)}
    assert not set(containers) & running
    assert docker_client.images.list(name=f"{gw.namespace}-fn/gone") == []
    # The name can be used again.
    status, body = await deploy(http, gw, version_fn("y"), {"name": "gone"})
    assert status == 201, body
    async with http.get(f"{gw.url}/fn/gone", headers=gw.headers) as r:
        assert await r.text() == "y"


async def test_functions_survive_a_restart(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, docker_client: docker.DockerClient
) -> None:
    first = make_gateway()
    status, body = await deploy(http, first, version_fn("durable"), {"name": "durable"})
    assert status == 201, body
    async with http.get(f"{first.url}/fn/durable", headers=first.headers) as r:
        assert await r.text() == "durable"
    assert first.stop() == 0
    assert managed_containers(docker_client, first.namespace) == [], "shutdown left containers"

    second = make_gateway(database_url=first.database_url, namespace=first.namespace)
    async with http.get(f"{second.url}/v1/functions", headers=second.headers) as r:
        assert [f["name"] for f in (await r.json())["functions"]] == ["durable"]
    async with http.get(f"{second.url}/fn/durable", headers=second.headers) as r:
        assert r.status == 200
        assert await r.text() == "durable"


async def test_leftover_containers_are_adopted_or_removed_at_start_up(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, docker_client: docker.DockerClient
) -> None:
    first = make_gateway()
    # Not the default limits: its instance is a container of its own image (a specialized
    # prewarmed container carries no function label, so it would be removed, not adopted).
    spec = {"name": "kept", "limits": {"memory_mb": 128}}
    status, body = await deploy(http, first, version_fn("kept"), spec)
    assert status == 201, body
    async with http.get(f"{first.url}/fn/kept", headers=first.headers) as r:
        assert r.status == 200
        assert r.headers["X-Kapal-Cold-Start"] == "new"
    first.kill()  # no clean shutdown: its instance stays running
    left = managed_containers(docker_client, first.namespace, function="kept")
    assert len(left) == 1
    second = make_gateway(database_url=first.database_url, namespace=first.namespace)
    async with http.get(f"{second.url}/v1/functions/kept", headers=second.headers) as r:
        instances = (await r.json())["instances"]
    assert [i["state"] for i in instances] == ["ready"]
    assert managed_containers(docker_client, first.namespace, "kept")[0].id == left[0].id
    async with http.get(f"{second.url}/fn/kept", headers=second.headers) as r:
        assert r.status == 200
        assert "X-Kapal-Cold-Start" not in r.headers


async def test_requirements_txt_is_installed_into_the_image(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = make_gateway()
    files = {
        "requirements.txt": "six==1.16.0\n",
        "handler.py": "import six\ndef handle(event, context):\n    return six.__version__\n",
    }
    status, body = await deploy(http, gw, files, {"name": "deps"})
    assert status == 201, body
    async with http.get(f"{gw.url}/fn/deps", headers=gw.headers) as r:
        assert r.status == 200
        assert await r.text() == "1.16.0"


async def test_unresolvable_requirement_fails_the_deploy_cleanly(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = make_gateway()
    files = {
        "requirements.txt": "kapal-no-such-package-xyz==0.0.1\n",
        "handler.py": "def handle(event, context):\n    return 1\n",
    }
    status, body = await deploy(http, gw, files, {"name": "baddeps"})
    assert status == 422, body
    assert body["error"]["code"] == "requirements_unresolvable"
    assert "kapal-no-such-package-xyz" in body["error"]["message"]
    async with http.get(f"{gw.url}/v1/functions/baddeps", headers=gw.headers) as r:
        assert r.status == 404


async def test_handler_that_fails_to_load_is_reported(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = make_gateway()
    files = {"handler.py": "import no_such_module\ndef handle(event, context):\n    return 1\n"}
    status, body = await deploy(http, gw, files, {"name": "broken"})
    assert status == 201, body
    async with http.get(f"{gw.url}/fn/broken", headers=gw.headers) as r:
        assert r.status == 502
        err = (await r.json())["error"]
    assert err["code"] == "start_failed"
    assert "no_such_module" in err["message"]
