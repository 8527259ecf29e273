"""`deploy`: how long deploys take, and what the dependency cache saves.

- deploy_noop_s: a function without requirements (the floor: a code layer and labels).
- deploy_with_numpy_s: the first deploy of a function needing numpy, on an empty
  dependency cache (this run's own): resolution, byte-code, the deps layer, the code.
- redeploy_numpy_code_only_s: the same function again with only its code changed: the
  resolved folder and the deps layer are reused.
- deploy_numpy_other_function_s: another function with the same requirements.
- redeploy_code_only_s: a function with a light requirement (six), code changed only.

Each deploy is timed from the request to the end of its streamed answer (the image
built and the version recorded); every one must answer its first call correctly.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp

from bench.harness import kapal, say
from infra.local import GatewayProcess, tar_gz

NUMPY = """\
import numpy as np


def handle(event, context):
    return {"version": %d, "sum": int(np.arange(100).sum())}
"""
SIX = """\
import six


def handle(event, context):
    return {"version": %d, "six": six.__version__}
"""
NOOP = "def handle(event, context):\n    return {'version': %d}\n"


async def timed_deploy(
    http: aiohttp.ClientSession,
    gw: GatewayProcess,
    name: str,
    files: dict[str, str | bytes],
    update: bool,
) -> tuple[float, dict[str, Any] | None]:
    """Seconds the deploy took, and its `dependencies` event (None without one)."""
    form = aiohttp.FormData()
    form.add_field("spec", json.dumps({"name": name, "public": True}))
    form.add_field("code", tar_gz(files), filename="code.tar.gz")
    headers = {**gw.headers, "Accept": "application/x-ndjson"}
    url = f"{gw.url}/v1/functions" + (f"/{name}" if update else "")
    began = time.perf_counter()
    async with http.request("PUT" if update else "POST", url, data=form, headers=headers) as r:
        events = [json.loads(line) async for line in r.content if line.strip()]
    seconds = time.perf_counter() - began
    if not events or events[-1]["event"] != "done":
        raise RuntimeError(f"deploy of {name} failed: {events[-1:]}")
    deps = [e for e in events if e["event"] == "dependencies"]
    return seconds, deps[0] if deps else None


async def check_answer(http: aiohttp.ClientSession, gw: GatewayProcess, name: str, v: int) -> None:
    async with http.get(f"{gw.url}/fn/{name}") as r:
        body = await r.json()
        if r.status != 200 or body.get("version") != v:
            raise RuntimeError(f"{name} answered {r.status} {body}, not version {v}")


async def measure(gw: GatewayProcess, redeploys: int) -> dict[str, Any]:
    async def deploy(
        name: str, code: str, requirements: str | None, v: int, update: bool, reused: bool | None
    ) -> float:
        files: dict[str, str | bytes] = {"handler.py": code % v}
        if requirements is not None:
            files["requirements.txt"] = requirements
        seconds, deps = await timed_deploy(http, gw, name, files, update)
        if (deps is None) != (reused is None) or (deps is not None and deps["reused"] != reused):
            raise RuntimeError(f"{name} v{v}: dependencies {deps}, expected reused={reused}")
        await check_answer(http, gw, name, v)
        say(f"{name} version {v}: {seconds:.2f} s")
        return seconds

    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        noop = await deploy("noop", NOOP, None, 1, False, None)
        numpy_first = await deploy("numpy", NUMPY, "numpy\n", 1, False, False)
        numpy_again = [
            await deploy("numpy", NUMPY, "numpy\n", v, True, True) for v in range(2, redeploys + 2)
        ]
        numpy_other = await deploy("numpy2", NUMPY, "numpy\n", 1, False, True)
        await deploy("six", SIX, "six==1.16.0\n", 1, False, False)
        six_again = [
            await deploy("six", SIX, "six==1.16.0\n", v, True, True)
            for v in range(2, redeploys + 2)
        ]
    redeploy_numpy = statistics.median(numpy_again)
    return {
        "scenario": "deploy",
        "samples": redeploys,
        "deploy_noop_s": round(noop, 3),
        "deploy_with_numpy_s": round(numpy_first, 3),
        "redeploy_numpy_code_only_s": round(redeploy_numpy, 3),
        "deploy_numpy_other_function_s": round(numpy_other, 3),
        "redeploy_code_only_s": round(statistics.median(six_again), 3),
        "numpy_redeploy_vs_first": round(redeploy_numpy / numpy_first, 3),
        "all_s": {
            "redeploy_numpy_code_only": [round(s, 3) for s in numpy_again],
            "redeploy_code_only": [round(s, 3) for s in six_again],
        },
    }


def run(quick: bool) -> dict[str, Any]:
    with kapal() as gw:
        return asyncio.run(measure(gw, 2 if quick else 5))
