"""`starts`: how fast the engine starts containers, by how many it is asked for at once.

N containers of the Python runtime image (Kapal's limits and hardening, prewarm mode) are
created and started with 1, 2, 4 and N at once, in both orders; figures per setting:
total seconds, starts per second, and each start's p50/max in ms. Sizes
`KAPAL_STARTS_AT_ONCE`: the fewest at once that keep the engine's full rate.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.harness import say
from infra.engine import ensure_engine
from infra.images import ensure_base_images
from infra.local import REPO

LABELS = {"kapal.bench": "true"}


def _start(api: Any, image: str) -> tuple[str, float]:
    began = time.monotonic()
    host = api.create_host_config(
        mem_limit=128 * 2**20,
        pids_limit=512,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        read_only=True,
        tmpfs={"/tmp": "rw,nosuid,nodev,size=64m"},
    )
    cid: str = api.create_container(
        image, labels=LABELS, host_config=host, environment={"KAPAL_PREWARM": "1"}
    )["Id"]
    api.start(cid)
    api.inspect_container(cid)
    return cid, time.monotonic() - began


def _round(api: Any, image: str, n: int, at_once: int) -> dict[str, float]:
    began = time.monotonic()
    with ThreadPoolExecutor(at_once) as pool:
        done = list(pool.map(lambda _: _start(api, image), range(n)))
    total = time.monotonic() - began
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda d: api.remove_container(d[0], force=True), done))
    each = sorted(d[1] for d in done)
    return {
        "total_s": round(total, 2),
        "per_s": round(n / total, 2),
        "start_p50_ms": round(statistics.median(each) * 1000),
        "start_max_ms": round(each[-1] * 1000),
    }


def run(quick: bool) -> dict[str, Any]:
    n = 8 if quick else 12
    engine = ensure_engine(Path(tempfile.mkdtemp(prefix="kapal-bench-")), log=say)
    image = ensure_base_images(engine.client, REPO, log=say)["python"]
    api = engine.client.api
    settings = [1, 2, 4, n]
    figures: dict[str, list[dict[str, float]]] = {str(s): [] for s in settings}
    for order in (settings, settings[::-1]):
        for at_once in order:
            say(f"{n} starts, {at_once} at once")
            figures[str(at_once)].append(_round(api, image, n, at_once))
    result: dict[str, Any] = {"scenario": "starts", "containers": n}
    for setting, rounds in figures.items():
        for key in ("per_s", "start_p50_ms"):
            result[f"at_once_{setting}_{key}"] = round(statistics.mean(r[key] for r in rounds), 2)
    result["rounds"] = figures
    return result
