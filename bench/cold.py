"""`cold`: first-request latency from each cold-start tier, and a plain `docker run` baseline.

- new: a function whose limits differ from the prewarmed containers' (its own image).
- prewarm: a generic prewarmed container specialized with the function's code.
- paused: a standby paused by scale-down, unpaused.
- fork: a worker forked in the function's running container (its one instance busy).
- docker_run: `docker run -d` of the same image until it answers its first request.

`new` and `prewarm` are measured for Node.js functions too (`*_node`).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import time
from typing import Any

import aiohttp

from bench.harness import deploy, get_function, kapal, say
from infra.local import GatewayProcess

NOOP = "def handle(event, context):\n    return 'ok'\n"
SLEEPY = (
    "import time\n"
    "def handle(event, context):\n"
    "    time.sleep(float(event.query.get('s', '0')))\n"
    "    return 'ok'\n"
)
NODE_NOOP = "exports.handler = async () => 'ok';\n"
NODE = {"runtime": "nodejs"}


async def first_request_ms(url: str) -> tuple[float, str]:
    async with aiohttp.ClientSession() as http:
        began = time.perf_counter()
        async with http.get(url) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"{url}: {r.status}")
            return (time.perf_counter() - began) * 1000, r.headers.get("X-Kapal-Cold-Start", "")


async def fork_ms(url: str) -> tuple[float, str]:
    """A request while the function's one instance (concurrency 1) is busy: it waits for
    the worker forked for it."""
    async with aiohttp.ClientSession() as http:
        busy = asyncio.create_task(http.get(f"{url}?s=1"))
        await asyncio.sleep(0.05)
        result = await first_request_ms(url)
        (await busy).release()
        return result


def wait_forks_gone(gw: GatewayProcess, name: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        instances = get_function(gw, name)["instances"]
        if [i["state"] for i in instances] == ["ready"] and instances[0]["tier"] != "fork":
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name} still has forked workers")


def wait_paused(gw: GatewayProcess, name: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pool = get_function(gw, name)["pool"]
        if pool["paused"] >= 1 and pool["ready"] == 0 and pool["starting"] == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name} was not paused in time")


def docker_run_ms(image: str, network: str) -> float:
    """`docker run` of the image, until its runtime answers a first request."""
    began = time.perf_counter()
    cid = subprocess.run(
        ["docker", "run", "-d", "--rm", "--network", network, "--label", "kapal.bench=true", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        info = json.loads(
            subprocess.run(
                ["docker", "inspect", cid], capture_output=True, text=True, check=True
            ).stdout
        )
        ip = info[0]["NetworkSettings"]["Networks"][network]["IPAddress"]

        async def poll() -> None:
            async with aiohttp.ClientSession() as http:
                while True:
                    try:
                        async with http.get(f"http://{ip}:8080/") as r:
                            if r.status == 200:
                                return
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.005)

        asyncio.run(poll())
        return (time.perf_counter() - began) * 1000
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)


def run(quick: bool) -> dict[str, Any]:
    samples = 3 if quick else 7
    env = {
        "KAPAL_AUTOSCALE_STABLE_WINDOW_S": "1",
        "KAPAL_AUTOSCALE_PANIC_WINDOW_S": "1",
        "KAPAL_PREWARM_NODEJS": "2",
    }
    tiers: dict[str, list[float]] = {
        "new": [],
        "prewarm": [],
        "paused": [],
        "fork": [],
        "docker_run": [],
        "new_node": [],
        "prewarm_node": [],
    }
    seen: dict[str, set[str]] = {k: set() for k in tiers}
    with kapal(**env) as gw:
        say(f"deploying {4 * samples + 1} functions")
        for i in range(samples):
            deploy(gw, f"new{i}", NOOP, {"limits": {"memory_mb": 300}})
            deploy(gw, f"pre{i}", NOOP, {})
            deploy(gw, f"newn{i}", NODE_NOOP, {**NODE, "limits": {"memory_mb": 300}}, "index.js")
            deploy(gw, f"pren{i}", NODE_NOOP, NODE, "index.js")
        deploy(gw, "paused", NOOP, {"scaling": {"idle_timeout_s": 3600}})
        forky = {"scaling": {"concurrency": 1, "min": 1, "idle_timeout_s": 3600}}
        deploy(gw, "forky", SLEEPY, forky)
        image = get_function(gw, "new0")["image"]
        network = f"{gw.namespace}-functions"
        asyncio.run(first_request_ms(f"{gw.url}/fn/paused"))
        for i in range(samples):
            say(f"sample {i + 1}/{samples}")
            ms, tier = asyncio.run(first_request_ms(f"{gw.url}/fn/new{i}"))
            tiers["new"].append(ms)
            seen["new"].add(tier)
            time.sleep(1.0)  # let the prewarmed pool refill
            ms, tier = asyncio.run(first_request_ms(f"{gw.url}/fn/pre{i}"))
            tiers["prewarm"].append(ms)
            seen["prewarm"].add(tier)
            wait_paused(gw, "paused")
            ms, tier = asyncio.run(first_request_ms(f"{gw.url}/fn/paused"))
            tiers["paused"].append(ms)
            seen["paused"].add(tier)
            for _ in range(3):  # again if the autoscaler forked before the request came
                wait_forks_gone(gw, "forky")
                ms, tier = asyncio.run(fork_ms(f"{gw.url}/fn/forky"))
                if tier == "fork":
                    break
            tiers["fork"].append(ms)
            seen["fork"].add(tier)
            tiers["docker_run"].append(docker_run_ms(image, network))
            for runtime_tier, name in (("new_node", f"newn{i}"), ("prewarm_node", f"pren{i}")):
                ms, tier = asyncio.run(first_request_ms(f"{gw.url}/fn/{name}"))
                tiers[runtime_tier].append(ms)
                seen[runtime_tier].add(tier)
            time.sleep(1.0)  # let the prewarmed pools refill
    for tier, got in seen.items():
        if tier != "docker_run" and got != {tier.removesuffix("_node")}:
            raise RuntimeError(f"{tier} samples were served from tiers {got}")

    def p50(k: str) -> float:
        return round(float(statistics.median(tiers[k])), 1)

    return {
        "scenario": "cold",
        "samples": samples,
        "cold_new_p50_ms": p50("new"),
        "cold_prewarm_p50_ms": p50("prewarm"),
        "cold_paused_p50_ms": p50("paused"),
        "cold_fork_p50_ms": p50("fork"),
        "docker_run_p50_ms": p50("docker_run"),
        "cold_new_p50_ms_node": p50("new_node"),
        "cold_prewarm_p50_ms_node": p50("prewarm_node"),
        "new_vs_docker_run": round(p50("new") / p50("docker_run"), 3),
        "all_ms": {k: [round(v, 1) for v in vs] for k, vs in tiers.items()},
    }
