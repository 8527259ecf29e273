"""`image`: an image function beside a code function, in one run.

- deploy: an image function's deploy (resolve and pin, nothing built) and a code
  function's (an image built), each of a new function.
- new / paused: first-request latency of an image function from a new container and from
  a paused standby, beside a code function's `new` tier (its own image, no prewarm).
- docker_run: `docker run -d` of the same user image until it answers a first request.

The user image is a Python http.server built FROM the base runtime image, on the local
engine (its reference names no registry), removed at the end.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import statistics
import tarfile
import time
from typing import Any

import aiohttp
import docker

from bench.cold import docker_run_ms, first_request_ms, wait_paused
from bench.harness import deploy, get_function, kapal, say
from infra.local import GatewayProcess

NOOP = "def handle(event, context):\n    return 'ok'\n"
SERVER = """\
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""
DOCKERFILE = """\
FROM {base}
COPY server.py /srv/server.py
CMD ["python3", "/srv/server.py"]
"""


def build_image(client: docker.DockerClient, base: str, tag: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in (("Dockerfile", DOCKERFILE.format(base=base)), ("server.py", SERVER)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=tag, network_mode="none", rm=True)


def deploy_image(gw: GatewayProcess, name: str, image: str, spec: dict[str, Any]) -> None:
    async def go() -> None:
        body = {"name": name, "image": image, "public": True, **spec}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{gw.url}/v1/functions", json=body, headers=gw.headers) as r:
                if r.status != 201:
                    raise RuntimeError(f"deploy failed: {r.status} {await r.text()}")

    asyncio.run(go())


def timed(fn: Any, *args: Any) -> float:
    began = time.perf_counter()
    fn(*args)
    return time.perf_counter() - began


def run(quick: bool) -> dict[str, Any]:
    samples = 3 if quick else 7
    env = {"KAPAL_AUTOSCALE_STABLE_WINDOW_S": "1", "KAPAL_AUTOSCALE_PANIC_WINDOW_S": "1"}
    ms: dict[str, list[float]] = {"new": [], "paused": [], "code_new": [], "docker_run": []}
    deploy_s: dict[str, list[float]] = {"image": [], "code": []}
    seen: dict[str, set[str]] = {k: set() for k in ms}
    client = docker.from_env()
    tag = f"kapal-bench-image-{secrets.token_hex(3)}:1"
    try:
        with kapal(**env) as gw:
            build_image(client, gw.env["KAPAL_RUNTIME_IMAGE_PYTHON"], tag)
            say(f"deploying {2 * samples + 1} functions")
            for i in range(samples):
                deploy_s["image"].append(timed(deploy_image, gw, f"img{i}", tag, {}))
                # Other limits than the prewarmed containers': a container of its own.
                deploy_s["code"].append(
                    timed(deploy, gw, f"code{i}", NOOP, {"limits": {"memory_mb": 300}})
                )
            deploy_image(gw, "paused", tag, {"scaling": {"idle_timeout_s": 3600}})
            network = f"{gw.namespace}-functions"
            asyncio.run(first_request_ms(f"{gw.url}/fn/paused"))
            for i in range(samples):
                say(f"sample {i + 1}/{samples}")
                for key, url in (("new", f"img{i}"), ("code_new", f"code{i}")):
                    took, tier = asyncio.run(first_request_ms(f"{gw.url}/fn/{url}"))
                    ms[key].append(took)
                    seen[key].add(tier)
                wait_paused(gw, "paused")
                took, tier = asyncio.run(first_request_ms(f"{gw.url}/fn/paused"))
                ms["paused"].append(took)
                seen["paused"].add(tier)
                ms["docker_run"].append(docker_run_ms(get_function(gw, "img0")["image"], network))
    finally:
        client.images.remove(tag, force=True)
        client.close()
    for key, want in (("new", "new"), ("code_new", "new"), ("paused", "paused")):
        if seen[key] != {want}:
            raise RuntimeError(f"{key} samples were served from tiers {seen[key]}")

    def p50(values: list[float], digits: int = 1) -> float:
        return round(float(statistics.median(values)), digits)

    return {
        "scenario": "image",
        "samples": samples,
        "deploy_image_p50_s": p50(deploy_s["image"], 3),
        "deploy_code_p50_s": p50(deploy_s["code"], 3),
        "cold_new_p50_ms_image": p50(ms["new"]),
        "cold_paused_p50_ms_image": p50(ms["paused"]),
        "cold_new_p50_ms_code": p50(ms["code_new"]),
        "docker_run_p50_ms_image": p50(ms["docker_run"]),
        "image_new_vs_docker_run": round(p50(ms["new"]) / p50(ms["docker_run"]), 3),
        "all_ms": {k: [round(v, 1) for v in vs] for k, vs in ms.items()},
    }
