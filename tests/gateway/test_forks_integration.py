"""Instances forked inside a running container under a burst, on a real gateway and engine:
their own processes, their own logs, the container's limits following them, crash
detection, and forks going first on the way down."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import docker
import pytest

from infra.local import GatewayProcess
from tests.conftest import GatewayFactory
from tests.support import deploy, eventually

pytestmark = pytest.mark.integration

PIDS = {
    "handler.py": (
        "import os\n"
        "import time\n"
        "def handle(event, context):\n"
        "    time.sleep(float(event.query.get('s', '0')))\n"
        "    print('served by', os.getpid())\n"
        "    return {'pid': os.getpid(), 'host': os.uname().nodename}\n"
    )
}
MEMORY_MB = 96
# Run in the container: its zygote's list of workers.
ASK_ZYGOTE = (
    "import socket; s = socket.create_connection(('127.0.0.1', 8079));"
    " s.sendall(b'list\\n'); print(s.makefile().readline())"
)


async def instances(http: aiohttp.ClientSession, gw: GatewayProcess) -> list[dict[str, Any]]:
    async with http.get(f"{gw.url}/v1/functions/forky", headers=gw.headers) as r:
        found: list[dict[str, Any]] = (await r.json())["instances"]
        return found


async def burst(http: aiohttp.ClientSession, gw: GatewayProcess, n: int) -> list[dict[str, Any]]:
    async def one() -> dict[str, Any]:
        async with http.get(f"{gw.url}/fn/forky?s=0.3", headers=gw.headers) as r:
            assert r.status == 200, await r.text()
            answer: dict[str, Any] = await r.json()
            answer["tier"] = r.headers.get("X-Kapal-Cold-Start", "")
            return answer

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_a_burst_forks_workers_in_the_container_and_they_go_first_after(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, docker_client: docker.DockerClient
) -> None:
    # No prewarmed containers: the first instance is a new container, the rest forks.
    gw = make_gateway(
        KAPAL_PREWARM_PYTHON="0",
        KAPAL_AUTOSCALE_STABLE_WINDOW_S="2",
        KAPAL_AUTOSCALE_PANIC_WINDOW_S="1",
    )
    spec = {
        "name": "forky",
        "limits": {"memory_mb": MEMORY_MB},
        "scaling": {"concurrency": 1, "max": 8, "idle_timeout_s": 30},
    }
    status, body = await deploy(http, gw, PIDS, spec)
    assert status == 201, body
    await burst(http, gw, 1)
    # Three calls in flight at all times until the end: forks stay (the stable window).
    stop = asyncio.Event()
    served: list[dict[str, Any]] = []

    async def load() -> None:
        while not stop.is_set():
            served.extend(await burst(http, gw, 3))

    loader = asyncio.create_task(load())
    try:
        await eventually(lambda: instances_with(http, gw, "fork"))
        views = await instances(http, gw)
        forks = [i for i in views if i["tier"] == "fork"]
        # A forked worker runs in a container the pool started for an instance of its own.
        host = forks[0]["container"]
        assert any(i["container"] == host and i["tier"] != "fork" for i in views)
        container = docker_client.containers.get(host)
        assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True  # hardening as ever

        def memory_mb() -> int:
            container.reload()
            return int(container.attrs["HostConfig"]["Memory"]) // (1024 * 1024)

        # The container's limits are its workers' worth.
        async def limits_follow() -> bool:
            workers = [i for i in await instances(http, gw) if i["container"] == host]
            return memory_mb() == MEMORY_MB * len(workers)

        await eventually(limits_follow)

        # Forked workers are processes of their own in that container (its zygote says).
        listed = container.exec_run(["python3", "-c", ASK_ZYGOTE], user="10001:10001")
        by_port = {w["port"]: w for w in json.loads(listed.output)["workers"]}
        victim = next(
            i
            for i in await instances(http, gw)
            if i["tier"] == "fork" and int(i["address"].rsplit(":", 1)[1]) in by_port
        )
        fork_pid = by_port[int(victim["address"].rsplit(":", 1)[1])]["pid"]
        assert fork_pid != by_port[8080]["pid"]

        async def fork_served() -> bool:
            hostname = container.attrs["Config"]["Hostname"]
            return any(a["pid"] == fork_pid and a["host"] == hostname for a in served)

        await eventually(fork_served)

        # Each worker's lines reach the function's log, from its own log port.
        async def logged() -> bool:
            url = f"{gw.url}/v1/functions/forky/logs"
            async with http.get(url, headers=gw.headers) as r:
                return f"served by {fork_pid}" in await r.text()

        await eventually(logged)

        # A forked worker that dies is dropped from routing at the first request that
        # finds it gone (sent to another instance: no error); the function serves on.
        # Killed between two rounds of calls: one it was serving would fail (502).
        stop.set()
        await loader
        stop.clear()
        killed = container.exec_run(
            ["python3", "-c", f"import os, signal; os.kill({fork_pid}, signal.SIGKILL)"],
            user="10001:10001",
        )
        assert killed.exit_code == 0, killed.output
        loader = asyncio.create_task(load())

        async def dropped() -> bool:
            return victim["id"] not in [i["id"] for i in await instances(http, gw)]

        await eventually(dropped)
    finally:
        stop.set()
        await loader  # every call answered 200 (burst asserts it)

    # On the way down forks go first: the container stays (a standby), its limits again
    # one instance's.
    async def no_forks() -> bool:
        views = await instances(http, gw)
        return bool(views) and all(i["tier"] != "fork" for i in views)

    await eventually(no_forks)
    await eventually(lambda: asyncio.to_thread(lambda: memory_mb() == MEMORY_MB))


async def instances_with(http: aiohttp.ClientSession, gw: GatewayProcess, tier: str) -> bool:
    return any(i["tier"] == tier for i in await instances(http, gw))
