"""`python -m bench swarm`: Kapal on a local 3-node swarm (two gateways as a service).

- `cold_new_task_p50_ms`: a function with no replica, its first call through a gateway
  until the 200 (the service is made, a task placed, pulled, started and found);
- `seconds_to_replicas`: a burst needing N replicas from none, until N answer;
- `nodes_used`: nodes the burst's tasks ran on;
- `warm_added_p50_us`: from a container on the overlay, a call through a gateway against
  one straight to a task (sequential, kept-alive), the p50s' difference;
- `node_kill_failed_requests`, `node_kill_heal_s`: a worker node killed (`docker kill`)
  under load through both gateways: the calls that failed, and the seconds until the
  function runs its replicas on the other nodes and the gateways route to them;
- `errors`: failed calls anywhere but in the node kill.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import docker

from bench.harness import say
from infra.engine import ensure_engine, stop_engine
from infra.images import ensure_base_images
from infra.local import REPO, tar_gz
from infra.swarm_kapal import gateway_service
from infra.swarm_lab import SwarmLab, swarm_lab

NAME = "kapal-bench"
NAMESPACE = "bench"
DOOMED = f"{NAME}-node-3"
HANDLER = """\
import time

def handle(event, context):
    s = float(event.query.get("s", 0))
    if s:
        time.sleep(s)
    return {"ok": True}
"""
# Run on the overlay: sequential kept-alive GETs to two addresses, each one's p50 (µs).
PROBE = """\
import http.client, json, sys, time
def p50(host, port, path, headers, n):
    c = http.client.HTTPConnection(host, port, timeout=10)
    took = []
    for i in range(n + n // 5):
        t = time.perf_counter()
        c.request("GET", path, headers=headers)
        r = c.getresponse(); r.read()
        if r.status != 200: raise SystemExit(f"{host}{path}: {r.status}")
        if i >= n // 5: took.append(time.perf_counter() - t)
    took.sort()
    return took[len(took) // 2] * 1e6
a = json.loads(sys.argv[1])
h = {"Authorization": "Bearer " + a["key"]}
direct = p50(a["task"], 8080, "/", {}, a["n"])
gateway = p50(a["gateway"], 8080, "/fn/" + a["fn"], h, a["n"])
print(json.dumps({"direct": direct, "gateway": gateway}))
"""


def run(quick: bool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="kapal-bench-swarm-"))
    engine = ensure_engine(tmp, log=say)
    try:
        images = ensure_base_images(engine.client, REPO, log=say)
        with swarm_lab(
            engine.client,
            tmp,
            REPO,
            name=NAME,
            namespace=NAMESPACE,
            runtime_images={"python": images["python"]},
            gateway_constraints=[f"node.hostname!={DOOMED}"],
            # No per-key rate limit: the overlay probe calls as fast as it can.
            env={
                "KAPAL_AUTOSCALE_STABLE_WINDOW_S": "10",
                "KAPAL_LOG_LEVEL": "WARNING",
                "KAPAL_KEY_RPS": "0",
            },
            log=say,
        ) as lab:
            return asyncio.run(_measure(lab, engine.client, images["python"], quick))
    finally:
        if engine.started_by_us:
            stop_engine(engine, log=say)
        shutil.rmtree(tmp, ignore_errors=True)


async def _measure(
    lab: SwarmLab, client: docker.DockerClient, runtime_image: str, quick: bool
) -> dict[str, Any]:
    errors = 0
    async with aiohttp.ClientSession(headers=lab.headers) as http:
        gw = lab.urls[0]
        colds: list[float] = []
        for i in range(3 if quick else 7):
            await _deploy(http, gw, f"cold{i}", {})
            began = time.perf_counter()
            async with http.get(f"{gw}/fn/cold{i}") as r:
                await r.read()
                if r.status != 200 or r.headers.get("X-Kapal-Cold-Start") != "new":
                    errors += 1
            colds.append((time.perf_counter() - began) * 1000)
            say(f"cold start {i}: {colds[-1]:.0f} ms")

        wanted = 4 if quick else 6
        await _deploy(http, gw, "burst", {"scaling": {"concurrency": 1, "max": wanted}})
        began = time.monotonic()
        calls = [
            asyncio.ensure_future(_ok(http, f"{lab.urls[i % 2]}/fn/burst?s=3"))
            for i in range(wanted)
        ]
        to_replicas = await _until(lambda: _ready(http, gw, "burst", wanted), 60) - began
        nodes_used = len({t["NodeID"] for t in _tasks(lab, "burst")})
        errors += sum(not ok for ok in await asyncio.gather(*calls))
        say(f"0 -> {wanted} replicas in {to_replicas:.2f} s on {nodes_used} nodes")

        await _deploy(http, gw, "warm", {"scaling": {"min": 1, "concurrency": 16}})
        await _until(lambda: _ready(http, gw, "warm", 1), 60)
        added = _overlay_probe(lab, runtime_image, 300 if quick else 2000)
        say(f"through a gateway on the overlay: {added}")

        failed, heal_s = await _node_kill(lab, client, http)
    return {
        "scenario": "swarm",
        "nodes": len(lab.swarm.nodes),
        "nodes_used": nodes_used,
        "gateways": len(lab.urls),
        "cold_new_task_p50_ms": round(statistics.median(colds), 1),
        "cold_new_task_samples_ms": [round(c, 1) for c in colds],
        "seconds_to_replicas": round(to_replicas, 2),
        "replicas": wanted,
        "direct_p50_us": round(added["direct"], 1),
        "gateway_p50_us": round(added["gateway"], 1),
        "warm_added_p50_us": round(added["gateway"] - added["direct"], 1),
        "errors": errors,
        "node_kill_failed_requests": failed,
        "node_kill_heal_s": round(heal_s, 2),
    }


async def _deploy(http: aiohttp.ClientSession, gw: str, name: str, spec: dict[str, Any]) -> None:
    form = aiohttp.FormData()
    form.add_field("spec", json.dumps({"name": name, **spec}), content_type="application/json")
    code = tar_gz({"handler.py": HANDLER})
    form.add_field("code", code, filename="code.tar.gz", content_type="application/gzip")
    async with http.post(f"{gw}/v1/functions", data=form) as r:
        if r.status != 201:
            raise RuntimeError(f"deploy of {name} failed: {r.status} {await r.text()}")


async def _ok(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as r:
            await r.read()
            return r.status == 200
    except (aiohttp.ClientError, OSError):
        return False


async def _ready(http: aiohttp.ClientSession, gw: str, name: str, n: int) -> bool:
    async with http.get(f"{gw}/v1/functions/{name}") as r:
        found = (await r.json()).get("instances") or []
    return sum(1 for i in found if i["state"] == "ready") >= n


async def _until(check: Callable[[], Any], timeout_s: float) -> float:
    """The monotonic time at which `check()` (sync or async) first held."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError(f"not done within {timeout_s:.0f} s")
        await asyncio.sleep(0.05)


def _tasks(lab: SwarmLab, name: str, service: str | None = None) -> list[dict[str, Any]]:
    with lab.swarm.manager.engine() as engine:
        tasks: list[dict[str, Any]] = engine.api.tasks(  # type: ignore[no-untyped-call]
            filters={"service": service or f"{NAMESPACE}-{name}-1", "desired-state": "running"}
        )
    return [t for t in tasks if t["Status"]["State"] == "running"]


def _overlay_address(task: dict[str, Any], network: str) -> str:
    for attachment in task.get("NetworksAttachments") or []:
        if attachment["Network"]["Spec"]["Name"] == network:
            return str(attachment["Addresses"][0].split("/")[0])
    raise RuntimeError(f"task {task['ID']} is not on {network}")


def _overlay_probe(lab: SwarmLab, image: str, n: int) -> dict[str, float]:
    """From a container on the overlay (on the manager): p50 µs straight to a task of
    `warm` and through a gateway replica."""
    overlay = lab.swarm.overlay
    task = _overlay_address(_tasks(lab, "warm")[0], overlay)
    gateway = _overlay_address(_tasks(lab, "", gateway_service(NAMESPACE))[0], overlay)
    args = {"task": task, "gateway": gateway, "fn": "warm", "key": lab.admin_key, "n": n}
    with lab.swarm.manager.engine() as engine:
        out = engine.containers.run(
            image,
            entrypoint=["python3", "-c", PROBE, json.dumps(args)],
            network=overlay,
            remove=True,
            labels={"kapal.swarm": lab.swarm.name},
        )
    result: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def _node_kill(
    lab: SwarmLab, client: docker.DockerClient, http: aiohttp.ClientSession
) -> tuple[int, float]:
    """Kill the node no gateway runs on, under load; (failed calls, seconds to heal)."""
    gw = lab.urls[0]
    await _deploy(http, gw, "work", {"scaling": {"min": 3, "concurrency": 4}})
    await _until(lambda: _ready(http, gw, "work", 3), 90)
    doomed = {i for i, host in lab.node_names().items() if host == DOOMED}
    if not doomed & {t["NodeID"] for t in _tasks(lab, "work")}:
        say("no task of work on the node to kill: its kill measures nothing")
    stop = asyncio.Event()
    failed = 0

    async def caller(url: str) -> None:
        nonlocal failed
        while not stop.is_set():
            if not await _ok(http, f"{url}/fn/work?s=0.1"):
                failed += 1

    callers = [asyncio.ensure_future(caller(lab.urls[i % 2])) for i in range(6)]
    await asyncio.sleep(2)
    client.containers.get(DOOMED).kill()
    killed = time.monotonic()

    def healed() -> bool:
        return len([t for t in _tasks(lab, "work") if t["NodeID"] not in doomed]) >= 3

    await _until(healed, 90)
    done = await _until(lambda: _ready(http, gw, "work", 3), 60)
    await asyncio.sleep(1)
    stop.set()
    await asyncio.gather(*callers)
    return failed, done - killed
