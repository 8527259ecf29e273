"""Batch jobs on a real gateway: fan-out, progress, ordered results, cancellation."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support import GatewayProcess, deploy

pytestmark = pytest.mark.integration


@pytest.fixture
async def http(gw: GatewayProcess) -> AsyncIterator[aiohttp.ClientSession]:
    """This module's requests carry the gateway's admin key (the API is locked down)."""
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(headers=gw.headers, timeout=timeout) as session:
        yield session


SQUARE = """
import json, time

def handle(event, context):
    item = event.json()
    if item.get("bad"):
        return {"statusCode": 400, "body": {"error": "bad item"}}
    time.sleep(item.get("sleep", 0))
    return {"statusCode": 200, "body": {"sq": item["x"] * item["x"]}}
"""


@pytest.fixture(scope="module")
def jobs_gw(gw: GatewayProcess) -> GatewayProcess:
    async def deploy_square() -> None:
        async with aiohttp.ClientSession() as http:
            spec = {"name": "square", "scaling": {"max": 2}, "async": {"max_retries": 1}}
            status, body = await deploy(http, gw, {"handler.py": SQUARE}, spec)
            assert status == 201, body

    asyncio.run(deploy_square())
    return gw


async def wait_job(
    http: aiohttp.ClientSession, gw: GatewayProcess, id: str, timeout_s: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        async with http.get(f"{gw.url}/v1/jobs/{id}") as r:
            assert r.status == 200, await r.text()
            job = await r.json()
        if job["done"] == job["total"]:
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {id} not done in time: {job}")


async def results(http: aiohttp.ClientSession, gw: GatewayProcess, id: str) -> list[dict[str, Any]]:
    async with http.get(f"{gw.url}/v1/jobs/{id}/results") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in (await r.text()).splitlines()]


async def test_json_job_runs_every_item_and_streams_ordered_results(
    jobs_gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    items: list[dict[str, Any]] = [{"x": x} for x in range(30)] + [{"bad": True}]
    async with http.post(
        f"{jobs_gw.url}/v1/jobs", json={"function": "square", "items": items, "max_concurrency": 4}
    ) as r:
        assert r.status == 201, await r.text()
        created = await r.json()
    assert created["total"] == 31
    job = await wait_job(http, jobs_gw, created["id"])
    assert job["state"] == "completed"
    assert job["counts"]["succeeded"] == 30 and job["counts"]["failed"] == 1
    assert job["progress"] == 1.0 and job["eta_s"] == 0.0 and job["rate_per_s"] > 0
    lines = await results(http, jobs_gw, created["id"])
    assert [line["index"] for line in lines] == list(range(31))
    assert [line["result"]["sq"] for line in lines[:30]] == [x * x for x in range(30)]
    assert lines[30]["status"] == "failed"
    assert lines[30]["error"]["status"] == 400
    assert lines[30]["error"]["body"] == {"error": "bad item"}


async def test_json_lines_job_takes_parameters_from_the_query(
    jobs_gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    body = "\n".join(json.dumps({"x": x}) for x in range(5)) + "\n\n"
    async with http.post(
        f"{jobs_gw.url}/v1/jobs?function=square&max_concurrency=2&retries=0",
        data=body,
        headers={"Content-Type": "application/x-ndjson"},
    ) as r:
        assert r.status == 201, await r.text()
        created = await r.json()
    job = await wait_job(http, jobs_gw, created["id"])
    assert job["max_concurrency"] == 2 and job["max_retries"] == 0
    lines = await results(http, jobs_gw, created["id"])
    assert [line["result"]["sq"] for line in lines] == [0, 1, 4, 9, 16]


async def test_cancel_stops_what_has_not_run(
    jobs_gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    items = [{"x": x, "sleep": 0.3} for x in range(20)]
    async with http.post(
        f"{jobs_gw.url}/v1/jobs",
        json={"function": "square", "items": items, "max_concurrency": 1},
    ) as r:
        id = (await r.json())["id"]
    async with http.delete(f"{jobs_gw.url}/v1/jobs/{id}") as r:
        assert r.status == 200
        cancelled = await r.json()
    assert cancelled["state"] == "cancelled"
    assert cancelled["counts"]["cancelled"] >= 15
    job = await wait_job(http, jobs_gw, id)
    assert job["counts"]["cancelled"] + job["counts"]["succeeded"] == 20
    assert job["counts"]["cancelled"] == cancelled["counts"]["cancelled"]
    lines = await results(http, jobs_gw, id)
    assert {line["status"] for line in lines} <= {"cancelled", "succeeded"}
    assert sum(1 for line in lines if line["status"] == "cancelled") == job["counts"]["cancelled"]


async def test_bad_jobs_are_refused_naming_the_field(
    jobs_gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"items": [1]}, 422, "function"),
        ({"function": "square", "items": []}, 422, "items"),
        ({"function": "square", "items": [1], "retries": -1}, 422, "retries"),
        ({"function": "square", "items": [1], "max_concurrency": 0}, 422, "max_concurrency"),
        ({"function": "nope", "items": [1]}, 404, "nope"),
    ]
    for body, status, word in cases:
        async with http.post(f"{jobs_gw.url}/v1/jobs", json=body) as r:
            assert r.status == status, body
            assert word in (await r.json())["error"]["message"]
    async with http.post(
        f"{jobs_gw.url}/v1/jobs?function=square",
        data=b'{"x": 1}\n{oops\n',
        headers={"Content-Type": "application/x-ndjson"},
    ) as r:
        assert r.status == 422
        assert "items.1" in (await r.json())["error"]["message"]
    async with http.get(f"{jobs_gw.url}/v1/jobs/00000000-0000-0000-0000-000000000000") as r:
        assert r.status == 404
    async with http.get(f"{jobs_gw.url}/v1/jobs/nope/results") as r:
        assert r.status == 404
