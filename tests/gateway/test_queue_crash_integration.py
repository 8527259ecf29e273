"""kill -9 a gateway in the middle of a job: a new one finishes it, nothing lost or doubled."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from tests.conftest import GatewayFactory
from tests.gateway.queue_support import FAST_QUEUE, NOOP
from tests.support import GatewayProcess, deploy

pytestmark = pytest.mark.integration

ITEMS = 5000


async def job_status(http: aiohttp.ClientSession, gw: GatewayProcess, id: str) -> dict[str, Any]:
    async with http.get(f"{gw.url}/v1/jobs/{id}") as r:
        assert r.status == 200, await r.text()
        out: dict[str, Any] = await r.json()
        return out


async def test_job_survives_kill_9_of_the_gateway(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    first = make_gateway(**FAST_QUEUE)
    http.headers.update(first.headers)  # the second gateway shares the database and keys
    spec = {
        "name": "noop",
        "scaling": {"max": 2, "concurrency": 32},
        "async": {"concurrency": 64, "max_retries": 5},
    }
    status, body = await deploy(http, first, {"handler.py": NOOP}, spec)
    assert status == 201, body
    items = [{"i": i} for i in range(ITEMS)]
    async with http.post(f"{first.url}/v1/jobs", json={"function": "noop", "items": items}) as r:
        assert r.status == 201, await r.text()
        id = (await r.json())["id"]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = await job_status(http, first, id)
        if job["done"] >= ITEMS // 4:
            break
        await asyncio.sleep(0.05)
    first.kill()
    assert job["done"] < ITEMS, "the job finished before the kill; nothing was tested"

    second = make_gateway(database_url=first.database_url, namespace=first.namespace, **FAST_QUEUE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job = await job_status(http, second, id)
        if job["done"] == ITEMS:
            break
        await asyncio.sleep(0.2)
    assert job["counts"]["succeeded"] == ITEMS, job

    async with http.get(f"{second.url}/v1/jobs/{id}/results") as r:
        lines = [json.loads(line) for line in (await r.text()).splitlines()]
    assert len(lines) == ITEMS
    assert [line["index"] for line in lines] == list(range(ITEMS))
    assert all(line["status"] == "succeeded" for line in lines)
    assert [line["result"] for line in lines] == items


SLOW = """
import time

def handle(event, context):
    time.sleep(0.3)
    return event.body
"""


async def test_sigterm_finishes_what_runs_and_hands_back_the_rest(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    import asyncpg

    first = make_gateway(**FAST_QUEUE)
    http.headers.update(first.headers)  # the second gateway shares the database and keys
    spec = {"name": "slow", "scaling": {"max": 1, "concurrency": 4}, "async": {"concurrency": 4}}
    status, body = await deploy(http, first, {"handler.py": SLOW}, spec)
    assert status == 201, body
    items = [{"i": i} for i in range(40)]
    async with http.post(f"{first.url}/v1/jobs", json={"function": "slow", "items": items}) as r:
        id = (await r.json())["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = await job_status(http, first, id)
        if job["counts"]["running"] and job["done"]:
            break
        await asyncio.sleep(0.05)
    assert first.stop() == 0

    conn = await asyncpg.connect(first.database_url)
    try:
        rows = await conn.fetch("SELECT status, attempts FROM invocations")
    finally:
        await conn.close()
    assert {r["status"] for r in rows} <= {"succeeded", "queued"}
    assert all(r["attempts"] == 0 for r in rows if r["status"] == "queued")
    assert 0 < sum(1 for r in rows if r["status"] == "queued") < 40

    second = make_gateway(database_url=first.database_url, namespace=first.namespace, **FAST_QUEUE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = await job_status(http, second, id)
        if job["done"] == 40:
            break
        await asyncio.sleep(0.1)
    assert job["counts"]["succeeded"] == 40, job
