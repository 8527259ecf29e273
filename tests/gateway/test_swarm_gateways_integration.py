"""Kapal on a real 3-node swarm made on this machine: two gateways as a Swarm service,
functions as services whose images go through a registry that needs credentials.

Deploy, scale across nodes and back to zero, roll a new version over, lose a gateway
(kill -9) and a worker node (docker kill) under load and with a job running. The order
matters: the node goes last."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import docker
import pytest

from infra.local import REPO
from infra.registry import RunningRegistry
from infra.swarm import LocalSwarm
from infra.swarm_lab import SwarmLab, swarm_lab
from tests.support import deploy

pytestmark = pytest.mark.integration

NAME = "kapal-e2e"
NAMESPACE = "e2e"
# Function images go to a registry of their own that needs a password.
USER, PASSWORD = "kapal-pusher", secrets.token_urlsafe(16)
# The node the node-kill test kills: no gateway runs there.
DOOMED = f"{NAME}-node-3"

HANDLER = """\
import os, time

def handle(event, context):
    time.sleep(float(event.query.get("s", 0)))
    item = event.json() if event.body else None
    x = item.get("x") if isinstance(item, dict) else None
    return {"v": os.environ["KAPAL_VERSION"], "x": x}
"""


def quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Gateway:
    """One gateway replica, as the deploy helper wants it."""

    url: str
    headers: dict[str, str]


@dataclass
class SwarmKapal:
    lab: SwarmLab
    gateways: list[Gateway]
    nodes: dict[str, str]  # node ID -> hostname

    @property
    def gw(self) -> Gateway:
        return self.gateways[0]

    @property
    def swarm(self) -> LocalSwarm:
        return self.lab.swarm


@pytest.fixture(scope="module")
def kapal(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SwarmKapal]:
    with swarm_lab(
        docker_client,
        tmp_path_factory.mktemp("swarm-e2e"),
        REPO,
        name=NAME,
        namespace=NAMESPACE,
        runtime_images={"python": os.environ["KAPAL_RUNTIME_IMAGE_PYTHON"]},
        credentials=(USER, PASSWORD),
        gateway_constraints=[f"node.hostname!={DOOMED}"],
        env={
            # Scale-down and lease expiry within a test's patience.
            "KAPAL_AUTOSCALE_STABLE_WINDOW_S": "4",
            "KAPAL_AUTOSCALE_PANIC_WINDOW_S": "2",
            "KAPAL_QUEUE_LEASE_S": "3",
        },
        log=quiet,
    ) as lab:
        gateways = [Gateway(url, lab.headers) for url in lab.urls]
        yield SwarmKapal(lab, gateways, lab.node_names())


# -- helpers ----------------------------------------------------------------------------


async def deployed(
    http: aiohttp.ClientSession,
    kapal: SwarmKapal,
    name: str,
    spec: dict[str, Any],
    *,
    update: bool = False,
) -> None:
    status, body = await deploy(
        http, kapal.gw, {"handler.py": HANDLER}, {"name": name, **spec}, name=name, update=update
    )  # type: ignore[arg-type]
    assert status in (200, 201), body


async def instances(http: aiohttp.ClientSession, gw: Gateway, name: str) -> list[dict[str, Any]]:
    async with http.get(f"{gw.url}/v1/functions/{name}", headers=gw.headers) as r:
        assert r.status == 200, await r.text()
        return [i for i in (await r.json())["instances"] if i["state"] == "ready"]


def service_tasks(kapal: SwarmKapal, name: str, version: int = 1) -> list[dict[str, Any]]:
    with kapal.swarm.manager.engine() as engine:
        tasks: list[dict[str, Any]] = engine.api.tasks(
            filters={"service": f"{NAMESPACE}-{name}-{version}", "desired-state": "running"}
        )
    return [t for t in tasks if t["Status"]["State"] == "running"]


def replicas(kapal: SwarmKapal, name: str, version: int = 1) -> int | None:
    with kapal.swarm.manager.engine() as engine:
        found = engine.api.services(filters={"name": f"{NAMESPACE}-{name}-{version}"})
    return int(found[0]["Spec"]["Mode"]["Replicated"]["Replicas"]) if found else None


async def until(what: str, check: Any, timeout_s: float = 60.0) -> float:
    """Seconds until `check()` (sync or async) is true; fails past `timeout_s`."""
    began = time.monotonic()
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return time.monotonic() - began
        if time.monotonic() - began > timeout_s:
            raise AssertionError(f"not {what} within {timeout_s:.0f} s")
        await asyncio.sleep(0.2)


def registry_tags(registry: RunningRegistry, repository: str, auth: bool = True) -> list[str]:
    request = urllib.request.Request(f"http://{registry.push}/v2/{repository}/tags/list")
    if auth:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as r:
        return list(json.loads(r.read())["tags"] or [])


@dataclass
class Load:
    """Callers through every gateway until stopped; what each call got."""

    ok: int = 0
    failed: list[tuple[str, int, str]] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)


async def load(
    http: aiohttp.ClientSession,
    gateways: list[Gateway],
    name: str,
    stop: asyncio.Event,
    callers: int,
    seconds: float = 0.1,
) -> Load:
    got = Load()

    async def caller(gw: Gateway) -> None:
        while not stop.is_set():
            try:
                async with http.get(f"{gw.url}/fn/{name}?s={seconds}", headers=gw.headers) as r:
                    body = await r.read()
                    if r.status == 200:
                        got.ok += 1
                        got.versions[r.headers.get("X-Kapal-Version", "")] += 1
                    else:
                        got.failed.append((gw.url, r.status, body.decode(errors="replace")[:300]))
            except (aiohttp.ClientError, OSError) as e:
                got.failed.append((gw.url, 0, repr(e)))
                await asyncio.sleep(0.05)

    await asyncio.gather(*(caller(gateways[i % len(gateways)]) for i in range(callers)))
    return got


async def run_job(http: aiohttp.ClientSession, gw: Gateway, name: str, items: int) -> str:
    body = {"function": name, "items": [{"x": i} for i in range(items)], "max_concurrency": 4}
    async with http.post(f"{gw.url}/v1/jobs", json=body, headers=gw.headers) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["id"])


async def job_results(
    http: aiohttp.ClientSession, gateways: list[Gateway], id: str, items: int
) -> list[dict[str, Any]]:
    async def done() -> bool:
        for gw in gateways:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(f"{gw.url}/v1/jobs/{id}", headers=gw.headers) as r:
                    job = await r.json()
                    return bool(job["done"] == job["total"])
        return False

    await until("the job done", done, 120)
    for gw in gateways:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with http.get(f"{gw.url}/v1/jobs/{id}/results", headers=gw.headers) as r:
                lines = [json.loads(line) for line in (await r.text()).splitlines()]
                assert len(lines) == items
                return lines
    raise AssertionError("no gateway answered")


def assert_one_result_per_item(lines: list[dict[str, Any]], items: int) -> None:
    assert sorted(line["index"] for line in lines) == list(range(items))
    assert [line["status"] for line in lines] == ["succeeded"] * items, lines
    assert sorted(line["result"]["x"] for line in lines) == list(range(items))


# -- the tests ----------------------------------------------------------------------------


async def test_a_deploy_is_pushed_and_its_tasks_on_several_nodes_answer_through_every_gateway(
    kapal: SwarmKapal, http: aiohttp.ClientSession
) -> None:
    await deployed(http, kapal, "hello", {"scaling": {"min": 3}})
    repository = f"kapal-fn/{NAMESPACE}-hello"
    assert registry_tags(kapal.lab.registry, repository) == ["1"]
    with pytest.raises(urllib.error.HTTPError, match="401"):
        registry_tags(kapal.lab.registry, repository, auth=False)
    for gw in kapal.gateways:
        await until("3 ready instances", lambda gw=gw: _count(http, gw, "hello", 3))
    tasks = service_tasks(kapal, "hello")
    assert len({t["NodeID"] for t in tasks}) >= 2
    assert all("@sha256:" in t["Spec"]["ContainerSpec"]["Image"] for t in tasks)
    assert all(
        t["Spec"]["ContainerSpec"]["Image"].startswith(
            f"{kapal.lab.registry.address}/{repository}@"
        )
        for t in tasks
    )
    for gw in kapal.gateways:
        for _ in range(6):
            async with http.get(f"{gw.url}/fn/hello", headers=gw.headers) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["v"] == "1"
    async with http.delete(f"{kapal.gw.url}/v1/functions/hello", headers=kapal.gw.headers) as r:
        assert r.status == 204, await r.text()
    await until("the service gone", lambda: replicas(kapal, "hello") is None)
    assert registry_tags(kapal.lab.registry, repository) == []


async def _count(http: aiohttp.ClientSession, gw: Gateway, name: str, n: int) -> bool:
    return len(await instances(http, gw, name)) >= n


async def test_a_step_of_load_scales_across_nodes_then_back_to_zero(
    kapal: SwarmKapal, http: aiohttp.ClientSession
) -> None:
    await deployed(http, kapal, "step", {"scaling": {"concurrency": 1, "max": 6}})
    async with http.get(f"{kapal.gw.url}/fn/step", headers=kapal.gw.headers) as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-Kapal-Cold-Start"] == "new"
    stop = asyncio.Event()
    running = asyncio.ensure_future(
        load(http, kapal.gateways, "step", stop, callers=8, seconds=0.2)
    )
    most, nodes = 0, set()
    began = time.monotonic()
    while time.monotonic() - began < 10:
        tasks = service_tasks(kapal, "step")
        most = max(most, len(tasks))
        nodes |= {t["NodeID"] for t in tasks}
        await asyncio.sleep(0.5)
    stop.set()
    got = await running
    assert got.failed == [] and got.ok > 0
    assert most >= 3 and len(nodes) >= 2, (most, nodes)
    await until(
        "scaled to zero",
        lambda: replicas(kapal, "step") == 0 and not service_tasks(kapal, "step"),
        90,
    )
    assert await instances(http, kapal.gw, "step") == []


async def test_a_new_version_rolls_over_without_a_failed_request(
    kapal: SwarmKapal, http: aiohttp.ClientSession
) -> None:
    await deployed(http, kapal, "roll", {"scaling": {"min": 2}})
    for gw in kapal.gateways:
        await until("2 ready instances", lambda gw=gw: _count(http, gw, "roll", 2))
    stop = asyncio.Event()
    running = asyncio.ensure_future(
        load(http, kapal.gateways, "roll", stop, callers=4, seconds=0.05)
    )
    await asyncio.sleep(2)
    await deployed(http, kapal, "roll", {"scaling": {"min": 2}, "env": {"NEXT": "1"}}, update=True)
    await until("version 1 gone", lambda: replicas(kapal, "roll", 1) is None, 90)
    await asyncio.sleep(1)
    stop.set()
    got = await running
    assert got.failed == []
    assert got.versions["1"] > 0 and got.versions["2"] > 0


async def test_a_gateway_killed_mid_job_loses_nothing(
    kapal: SwarmKapal, http: aiohttp.ClientSession
) -> None:
    await deployed(
        http, kapal, "jobs", {"scaling": {"min": 2, "concurrency": 2}, "async": {"max_retries": 3}}
    )
    await until("2 ready instances", lambda: _count(http, kapal.gw, "jobs", 2))
    items = 60
    id = await run_job(http, kapal.gateways[1], "jobs", items)
    await asyncio.sleep(1.0)
    victim = kapal.gateways[1].url.split("//")[1].split(":")[0]
    node = next(n for n in kapal.swarm.nodes if n.address == victim)
    with node.engine() as engine:
        gateway = engine.containers.list(
            filters={"label": f"com.docker.swarm.service.name={NAMESPACE}-gateway"},
            ignore_removed=True,
        )
        assert len(gateway) == 1
        gateway[0].kill("SIGKILL")
    lines = await job_results(http, kapal.gateways, id, items)
    assert_one_result_per_item(lines, items)
    await until("the gateway back", lambda: _healthy(kapal.gateways[1].url), 60)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


async def test_a_worker_node_killed_under_load_fails_only_what_ran_there(
    kapal: SwarmKapal, http: aiohttp.ClientSession, docker_client: docker.DockerClient
) -> None:
    await deployed(
        http, kapal, "work", {"scaling": {"min": 3, "concurrency": 4}, "async": {"max_retries": 3}}
    )
    for gw in kapal.gateways:
        await until("3 ready instances", lambda gw=gw: _count(http, gw, "work", 3))
    doomed = {i for i, host in kapal.nodes.items() if host == DOOMED}
    await until(
        "a task on the doomed node",
        lambda: doomed & {t["NodeID"] for t in service_tasks(kapal, "work")},
    )
    stop = asyncio.Event()
    callers = 6
    running = asyncio.ensure_future(
        load(http, kapal.gateways, "work", stop, callers=callers, seconds=0.2)
    )
    items = 40
    id = await run_job(http, kapal.gw, "work", items)
    await asyncio.sleep(1.5)
    docker_client.containers.get(DOOMED).kill()
    killed = time.monotonic()

    def healed() -> bool:
        tasks = service_tasks(kapal, "work")
        alive = [t for t in tasks if t["NodeID"] not in doomed]
        return len(alive) >= 3

    await until("3 tasks on the other nodes", healed, 60)
    await until("3 ready instances", lambda: _count(http, kapal.gw, "work", 3), 30)
    heal_s = time.monotonic() - killed
    await asyncio.sleep(2)
    stop.set()
    got = await running
    lines = await job_results(http, kapal.gateways, id, items)
    assert_one_result_per_item(lines, items)
    # Only requests in flight on the node's tasks fail, each a 502 with a JSON error.
    assert len(got.failed) <= callers, got.failed
    for _, status, body in got.failed:
        assert status == 502, body
        assert json.loads(body)["error"]["code"] == "instance_failed"
    assert got.ok > 0
    print(f"node kill: {len(got.failed)} of {got.ok + len(got.failed)} failed, {heal_s:.1f} s")
