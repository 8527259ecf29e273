"""`cold-steps`: where each cold-start tier's time goes, step by step, on the engine itself.

No gateway: the scheduler's own backend and probe, on the Python base runtime image.
- new: engine create, start, inspect (the IP), then the runtime until /_/health answers;
- joined: the same container joining a network namespace made ahead (scheduler/netns.py):
  create, start (no inspect: the holder's IP is known), runtime until /_/health answers;
- prewarm: /_/init of a small function into a ready generic container;
- paused: the engine's unpause call, then the first health answer after it.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import statistics
import tarfile
import time
from typing import Any

import docker

from bench.harness import say
from infra.images import ensure_base_images
from infra.local import REPO
from scheduler import netns, probe
from scheduler.docker_backend import DockerBackend, container_config
from scheduler.models import PREWARM_NAME, FunctionSpec
from scheduler.pool import new_instance_id

NOOP = b"def handle(event, context):\n    return 'ok'\n"


def code_tar_gz() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo("handler.py")
        info.size = len(NOOP)
        tar.addfile(info, io.BytesIO(NOOP))
    return out.getvalue()


def ms(began: float) -> float:
    return (time.perf_counter() - began) * 1000


async def spare_ready(backend: DockerBackend) -> None:
    assert backend.spares is not None
    for _ in range(600):
        if backend.spares.ready(backend.network):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("no spare network namespace was made")


async def joined(backend: DockerBackend, spec: FunctionSpec) -> dict[str, float]:
    """A new container that joins a spare network namespace, step by step."""
    api, spares = backend.api, backend.spares
    assert spares is not None
    await spare_ready(backend)
    holder = spares.take(backend.network)
    assert holder is not None
    cfg = netns.joined(
        container_config(spec, backend.namespace, backend.network, new_instance_id()), holder
    )
    got: dict[str, float] = {}
    began = time.perf_counter()
    cid = await backend._run(
        api.create_container,
        cfg["image"],
        name=cfg["name"],
        labels=cfg["labels"],
        environment=cfg["environment"],
        host_config=api.create_host_config(**cfg["host_config"]),
    )
    got["joined_create_ms"] = ms(began)
    try:
        t = time.perf_counter()
        await backend._run(api.start, cid["Id"])
        got["joined_start_ms"] = ms(t)
        t = time.perf_counter()
        await probe.wait_ready(f"{holder.ip}:8080", time.monotonic() + 30)
        got["joined_runtime_ready_ms"] = ms(t)
        got["joined_total_ms"] = ms(began)
    finally:
        await backend.remove(cid["Id"])  # and its holder
        spares.refill_soon(backend.network)
    await spare_ready(backend)  # made now, not during the next sample's steps
    return got


async def sample(backend: DockerBackend, spec: FunctionSpec, code: bytes) -> dict[str, float]:
    """One container through every tier: new, specialized, paused and unpaused; then one
    that joins a spare network namespace."""
    api = backend.api
    cfg = container_config(spec, backend.namespace, backend.network, new_instance_id())
    got: dict[str, float] = {}
    began = time.perf_counter()
    t = time.perf_counter()
    cid = await backend._run(
        api.create_container,
        cfg["image"],
        name=cfg["name"],
        labels=cfg["labels"],
        environment=cfg["environment"],
        host_config=api.create_host_config(**cfg["host_config"]),
    )
    got["create_ms"] = ms(t)
    try:
        t = time.perf_counter()
        await backend._run(api.start, cid["Id"])
        got["start_ms"] = ms(t)
        t = time.perf_counter()
        info = await backend._run(api.inspect_container, cid["Id"])
        got["inspect_ms"] = ms(t)
        ip = info["NetworkSettings"]["Networks"][backend.network]["IPAddress"]
        address = f"{ip}:8080"
        t = time.perf_counter()
        await probe.wait_ready(address, time.monotonic() + 30)
        got["runtime_ready_ms"] = ms(t)
        got["new_total_ms"] = ms(began)
        body = json.dumps(
            {
                "function": "steps",
                "version": 1,
                "handler": "handler.handle",
                "style": None,
                "env": {},
                "concurrency": 1,
                "code": base64.b64encode(code).decode(),
            }
        ).encode()
        t = time.perf_counter()
        status, answer = await probe.post_json(address, "/_/init", body)
        got["init_ms"] = ms(t)
        if status != 200:
            raise RuntimeError(f"init: {status} {answer[:200]!r}")
        await backend.pause(cid["Id"])
        await asyncio.sleep(0.2)
        t = time.perf_counter()
        await backend.unpause(cid["Id"])
        got["unpause_ms"] = ms(t)
        t = time.perf_counter()
        await probe.health(address)
        got["health_after_unpause_ms"] = ms(t)
    finally:
        await backend.remove(cid["Id"])
    return {**got, **await joined(backend, spec)}


def run(quick: bool) -> dict[str, Any]:
    samples = 3 if quick else 9
    client = docker.from_env()
    images = ensure_base_images(client, REPO, log=say)
    namespace = f"ks{new_instance_id()}"
    backend = DockerBackend(
        namespace,
        f"{namespace}-functions",
        client,
        isolate_host=False,
        netns_image=images["python"],
    )
    spec = FunctionSpec(
        name=PREWARM_NAME,
        version=0,
        runtime="python",
        image=images["python"],
        env={"KAPAL_PREWARM": "1"},
    )

    async def main() -> list[dict[str, float]]:
        await backend.ensure_network()
        try:
            return [await sample(backend, spec, code_tar_gz()) for _ in range(samples)]
        finally:
            await backend.remove_network()

    try:
        found = asyncio.run(main())
    finally:
        backend.close()
    keys = list(found[0])
    return {
        "scenario": "cold-steps",
        "samples": samples,
        **{
            f"{k.removesuffix('_ms')}_p50_ms": round(statistics.median(s[k] for s in found), 1)
            for k in keys
        },
        "all_ms": {k: [round(s[k], 1) for s in found] for k in keys},
    }
