"""`async`: durable enqueue rate, end-to-end job completions/s, queue-to-start latency."""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.harness import Kapal, log

NOOP = "def handle(event, context):\n    return event.body\n"
SPEC = {
    "name": "noop",
    "scaling": {"min": 1, "max": 2, "concurrency": 64},
    "async": {"concurrency": 128},
}
# A slow consumer (one invocation a second): measures accepting a burst, not running it.
SLOW = "import time\n\ndef handle(event, context):\n    time.sleep(1)\n"
SINK = {"name": "sink", "scaling": {"max": 1}, "async": {"concurrency": 1}}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"hello": "kapal"}'
wrk.headers["Content-Type"] = "application/json"
"""


async def _scalar(url: str, sql: str, *args: object) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def _drain(k: Kapal, timeout_s: float) -> None:
    """Wait until nothing is queued or running (earlier phases must not skew later ones)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = await _scalar(
            k.database_url,
            "SELECT count(*) FROM invocations WHERE status IN ('queued', 'running')",
        )
        if left == 0:
            return
        await asyncio.sleep(0.25)
    raise RuntimeError(f"queue did not drain in {timeout_s}s")


def _wrk_enqueue(k: Kapal, function: str, seconds: int, connections: int) -> dict[str, float]:
    """wrk POSTing async invocations; counts only 2xx answers (202 = durably stored)."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT)
        script = f.name
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                script,
                f"{k.url}/async/fn/{function}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        Path(script).unlink()
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    failed = int(errors.group(1)) if errors else 0
    duration = float(re.search(r"requests in ([\d.]+)s", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "per_s": round((total - failed) / duration, 1),
        "errors": failed,
        "p50_ms": round(float(p50.group(1)) * scale[p50.group(2)], 3) if p50 else -1,
    }


async def _complete(k: Kapal, http: aiohttp.ClientSession, items: int) -> dict[str, float]:
    body = {"function": "noop", "items": [{"i": i} for i in range(items)]}
    async with http.post(f"{k.url}/v1/jobs", json=body, headers=k.headers) as r:
        job = await r.json()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        async with http.get(f"{k.url}/v1/jobs/{job['id']}", headers=k.headers) as r:
            status = await r.json()
        if status["done"] == items:
            break
        await asyncio.sleep(0.2)
    seconds = await _scalar(
        k.database_url,
        "SELECT extract(epoch FROM max(i.finished_at) - j.created_at)::float8"
        " FROM invocations i JOIN jobs j ON j.id = i.job_id WHERE j.id = $1 GROUP BY j.created_at",
        __import__("uuid").UUID(job["id"]),
    )
    return {
        "job_items": items,
        "job_succeeded": status["counts"]["succeeded"],
        "complete_per_s": round(items / seconds, 1),
    }


async def _queue_to_start(k: Kapal, http: aiohttp.ClientSession, n: int) -> float:
    """Light load (one request every 10 ms): how soon a worker starts an accepted request."""
    ids = []
    for _ in range(n):
        async with http.post(f"{k.url}/async/fn/noop", data=b"{}") as r:
            ids.append((await r.json())["id"])
        await asyncio.sleep(0.01)
    await _drain(k, 60)
    conn = await asyncpg.connect(k.database_url)
    try:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM started_at - created_at)::float8 * 1000 AS ms"
            " FROM invocations WHERE id = ANY($1::uuid[])",
            ids,
        )
    finally:
        await conn.close()
    return round(float(statistics.median(r["ms"] for r in rows)), 2)


async def _run(quick: bool) -> dict[str, Any]:
    with Kapal() as k:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            await k.deploy(http, NOOP, SPEC)
            await k.deploy(http, SLOW, SINK)
            log("warming up")
            await _queue_to_start(k, http, 20)
            seconds = 4 if quick else 15
            result: dict[str, Any] = {"scenario": "async", "quick": quick}
            log(f"enqueue burst: wrk, 64 connections, {seconds} s, to a function run 1 at a time")
            cpu = k.cpu_s()
            burst = _wrk_enqueue(k, "sink", seconds, 64)
            accepted = burst["per_s"] * seconds
            result["enqueue_per_s"] = burst["per_s"]
            result["enqueue_errors"] = burst["errors"]
            result["enqueue_p50_ms"] = burst["p50_ms"]
            # CPU per operation is steadier than rates on a shared machine.
            result["gateway_cpu_us_per_enqueue"] = round((k.cpu_s() - cpu) / accepted * 1e6, 1)
            await _scalar(
                k.database_url,
                "UPDATE invocations SET status = 'cancelled' WHERE function = 'sink'"
                " AND status = 'queued'",
            )
            await _drain(k, 60)
            log(f"enqueue while the same gateway runs them: wrk, 64 connections, {seconds} s")
            busy = _wrk_enqueue(k, "noop", seconds, 64)
            result["enqueue_while_processing_per_s"] = busy["per_s"]
            result["enqueue_while_processing_errors"] = busy["errors"]
            log("draining what was enqueued")
            await _drain(k, 120 if quick else 300)
            log("job of 10,000 items")
            cpu = k.cpu_s()
            result.update(await _complete(k, http, 10_000))
            result["gateway_cpu_us_per_completion"] = round((k.cpu_s() - cpu) / 10_000 * 1e6, 1)
            log("queue-to-start latency")
            result["p50_queue_to_start_ms"] = await _queue_to_start(k, http, 100 if quick else 300)
            return result


def run_async(quick: bool) -> dict[str, Any]:
    return asyncio.run(_run(quick))
