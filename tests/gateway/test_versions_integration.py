"""Versions, rollback, unchanged re-deploys, the streamed deploy, job lists and stats, on a
real gateway, Docker engine and Postgres."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from tests.support import GatewayProcess, deploy, tar_gz

pytestmark = pytest.mark.integration


def says(tag: str) -> dict[str, str | bytes]:
    return {"handler.py": f"def handle(event, context):\n    return {tag!r}\n"}


async def call(http: aiohttp.ClientSession, gw: GatewayProcess, name: str) -> tuple[int, str]:
    # Public functions, called without a key: the key's own rate limit stays out of it.
    async with http.get(f"{gw.url}/fn/{name}") as r:
        return r.status, await r.text()


async def serves(http: aiohttp.ClientSession, gw: GatewayProcess, name: str, text: str) -> None:
    """Wait until every one of a few calls answers `text` (pools roll over as they drain)."""
    deadline = time.monotonic() + 60
    while True:
        answers = [await call(http, gw, name) for _ in range(5)]
        if all(a == (200, text) for a in answers):
            return
        assert time.monotonic() < deadline, f"{name} still answers {answers}, not {text!r}"
        await asyncio.sleep(0.2)


async def versions(http: aiohttp.ClientSession, gw: GatewayProcess, name: str) -> list[Any]:
    async with http.get(f"{gw.url}/v1/functions/{name}/versions", headers=gw.headers) as r:
        assert r.status == 200, await r.text()
        return list((await r.json())["versions"])


async def rollback(
    http: aiohttp.ClientSession, gw: GatewayProcess, name: str, body: dict[str, Any]
) -> tuple[int, Any]:
    url = f"{gw.url}/v1/functions/{name}/rollback"
    async with http.post(url, json=body, headers=gw.headers) as r:
        return r.status, await r.json()


async def test_rollback_serves_an_earlier_version_without_a_failed_call(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    gw = shared_gateway
    spec = {"name": "rb", "public": True, "scaling": {"concurrency": 4}}
    assert (await deploy(http, gw, says("v1"), spec))[0] == 201
    status, body = await deploy(http, gw, says("v2"), spec, name="rb", update=True)
    assert (status, body["version"]) == (200, 2)
    await serves(http, gw, "rb", "v2")
    listed = await versions(http, gw, "rb")
    assert [(v["version"], v["current"]) for v in listed] == [(1, False), (2, True)]
    assert listed[0]["spec"]["scaling"]["concurrency"] == 4
    assert listed[0]["code_sha256"] != listed[1]["code_sha256"]

    answers: list[tuple[int, str]] = []
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            answers.append(await call(http, gw, "rb"))

    callers = [asyncio.create_task(caller()) for _ in range(4)]
    await asyncio.sleep(0.5)
    status, body = await rollback(http, gw, "rb", {})
    assert (status, body["version"]) == (200, 1), body
    await serves(http, gw, "rb", "v1")
    stop.set()
    await asyncio.gather(*callers)
    assert {s for s, _ in answers} == {200}, "a call failed during the rollback"
    assert {t for _, t in answers} == {"v1", "v2"}

    # The next deploy takes a number never used; a rollback may point forward again.
    status, body = await deploy(http, gw, says("v3"), spec, name="rb", update=True)
    assert (status, body["version"]) == (200, 3), body
    assert (await rollback(http, gw, "rb", {"version": 2}))[1]["version"] == 2
    await serves(http, gw, "rb", "v2")
    assert [v["version"] for v in await versions(http, gw, "rb") if v["current"]] == [2]
    # Pointing at the current one changes nothing.
    assert (await rollback(http, gw, "rb", {"version": 2}))[1]["version"] == 2

    status, body = await rollback(http, gw, "rb", {"version": 9})
    assert (status, body["error"]["code"]) == (404, "version_not_found")
    status, body = await rollback(http, gw, "rb", {"version": "two"})
    assert status == 422 and "version" in body["error"]["message"]
    status, body = await rollback(http, gw, "nope", {})
    assert (status, body["error"]["code"]) == (404, "function_not_found")


async def test_no_earlier_version_is_a_conflict(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    gw = shared_gateway
    assert (await deploy(http, gw, says("only"), {"name": "one-version"}))[0] == 201
    status, body = await rollback(http, gw, "one-version", {})
    assert (status, body["error"]["code"]) == (409, "no_earlier_version")
    async with http.get(f"{gw.url}/v1/functions/nope/versions", headers=gw.headers) as r:
        assert r.status == 404


async def put(
    http: aiohttp.ClientSession,
    gw: GatewayProcess,
    name: str,
    files: dict[str, str | bytes],
    spec: dict[str, Any],
) -> tuple[int, str, Any]:
    form = aiohttp.FormData()
    form.add_field("spec", json.dumps(spec), content_type="application/json")
    form.add_field("code", tar_gz(files), filename="code.tar.gz")
    url = f"{gw.url}/v1/functions/{name}?skip_unchanged=true"
    async with http.put(url, data=form, headers=gw.headers) as r:
        return r.status, r.headers["X-Kapal-Version-Created"], await r.json()


async def test_an_unchanged_redeploy_makes_no_version(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    gw = shared_gateway
    spec = {"name": "same", "env": {"A": "1"}}
    assert (await deploy(http, gw, says("same"), spec))[0] == 201
    status, created, body = await put(http, gw, "same", says("same"), spec)
    assert (status, created, body["version"]) == (200, "false", 1)
    # Either a new spec or new code makes one.
    status, created, body = await put(http, gw, "same", says("same"), {**spec, "env": {"A": "2"}})
    assert (status, created, body["version"]) == (200, "true", 2)
    status, created, body = await put(http, gw, "same", says("other"), {**spec, "env": {"A": "2"}})
    assert (status, created, body["version"]) == (200, "true", 3)
    # Without skip_unchanged every PUT is a version, as before.
    status, body = await deploy(http, gw, says("other"), spec, name="same", update=True)
    assert (status, body["version"]) == (200, 4)


async def streamed(
    http: aiohttp.ClientSession, gw: GatewayProcess, files: dict[str, str | bytes], spec: Any
) -> tuple[int, str, list[Any]]:
    form = aiohttp.FormData()
    form.add_field("spec", json.dumps(spec), content_type="application/json")
    form.add_field("code", tar_gz(files), filename="code.tar.gz")
    headers = {**gw.headers, "Accept": "application/x-ndjson"}
    async with http.post(f"{gw.url}/v1/functions", data=form, headers=headers) as r:
        events = [json.loads(line) async for line in r.content if line.strip()]
        return r.status, r.headers["Content-Type"], events


async def test_a_deploy_streams_its_progress(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    gw = shared_gateway
    status, media, events = await streamed(
        http, gw, says("streamed"), {"name": "streamed", "public": True}
    )
    assert (status, media) == (200, "application/x-ndjson")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-2:] == ["built", "done"], kinds
    assert events[0] == {"event": "started", "function": "streamed", "version": 1}
    assert "build" in kinds
    assert all(isinstance(e["line"], str) for e in events if e["event"] == "build")
    done = events[-1]
    assert (done["status"], done["function"]["name"], done["function"]["version"]) == (
        201,
        "streamed",
        1,
    )
    assert await call(http, gw, "streamed") == (200, "streamed")

    # Found before the build: an ordinary error, not a stream.
    status, media, events = await streamed(http, gw, says("x"), {"name": "streamed"})
    assert (status, events[0]["error"]["code"]) == (409, "function_exists")
    status, media, events = await streamed(http, gw, says("x"), {"name": "bad", "handler": "1x"})
    assert (status, events[0]["error"]["code"]) == (422, "invalid_spec")
    assert media.startswith("application/json")
    # Found by the build: the stream's last event.
    bad = {
        "handler.py": "def handle(e, c):\n    return 1\n",
        "requirements.txt": "no-such-pkg-kapal==9\n",
    }
    status, media, events = await streamed(http, gw, bad, {"name": "unbuildable"})
    assert status == 200
    assert events[-1]["event"] == "error" and events[-1]["status"] >= 400, events[-1]
    async with http.get(f"{gw.url}/v1/functions/unbuildable", headers=gw.headers) as r:
        assert r.status == 404


async def test_jobs_are_listed_and_stats_count_calls(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    gw = shared_gateway
    assert (await deploy(http, gw, says("counted"), {"name": "counted", "public": True}))[0] == 201
    for _ in range(5):
        assert await call(http, gw, "counted") == (200, "counted")
    job = {"function": "counted", "items": [1, 2, 3]}
    async with http.post(f"{gw.url}/v1/jobs", json=job, headers=gw.headers) as r:
        assert r.status == 201
        job_id = (await r.json())["id"]
    async with http.get(f"{gw.url}/v1/jobs?function=counted", headers=gw.headers) as r:
        jobs = (await r.json())["jobs"]
    assert [(j["id"], j["total"]) for j in jobs] == [(job_id, 3)]
    async with http.get(f"{gw.url}/v1/jobs?function=rb&limit=5", headers=gw.headers) as r:
        assert (await r.json())["jobs"] == []
    async with http.get(f"{gw.url}/v1/jobs?limit=0", headers=gw.headers) as r:
        assert r.status == 422

    # Records reach Postgres about a second after the calls: wait for the 5 calls and 3 items.
    deadline = time.monotonic() + 30
    while True:
        async with http.get(
            f"{gw.url}/v1/functions/counted/stats?minutes=5", headers=gw.headers
        ) as r:
            one = await r.json()
        if one["total"]["count"] >= 8 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    assert one["function"] == "counted" and one["step_s"] == 60
    assert one["total"]["count"] == 8 and one["total"]["errors"] == 0
    assert one["total"]["rps"] > 0 and one["total"]["p50_ms"] > 0
    assert len(one["series"]) == 5
    assert sum(p["count"] for p in one["series"]) == 8
    assert one["series"][0]["p50_ms"] is None or one["series"][0]["count"] > 0

    async with http.get(f"{gw.url}/v1/stats", headers=gw.headers) as r:
        every = await r.json()
    assert every["minutes"] == 15
    assert every["functions"]["counted"]["total"]["count"] == 8
    assert len(every["functions"]["counted"]["series"]) == 15
    async with http.get(f"{gw.url}/v1/stats?minutes=0", headers=gw.headers) as r:
        assert r.status == 422
    async with http.get(f"{gw.url}/v1/functions/nope/stats", headers=gw.headers) as r:
        assert r.status == 404
