"""Function logs and invocation records end to end: real runtime containers, a real gateway,
real Postgres. A line printed in a handler is found by its request id, after its container
is gone, after the gateway restarted, and live."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import asyncpg
import docker
import pytest

from tests.conftest import GatewayFactory
from tests.support import GatewayProcess, deploy, eventually, managed_containers

pytestmark = pytest.mark.integration

CHATTY = """
import logging
import sys
import threading

def handle(event, context):
    what = event.query.get("do", "print")
    if what == "print":
        print("hello from", context.request_id)
    elif what == "thread":
        t = threading.Thread(target=lambda: print("from a thread"))
        t.start()
        t.join()
    elif what == "fail":
        print("about to fail")
        raise ValueError("boom " + context.request_id)
    elif what == "flood":
        for n in range(5000):
            print("flood line", n, "x" * 40)
    elif what == "binary":
        sys.stdout.buffer.write(b"bad \\xff\\xfe bytes\\n")
        sys.stdout.flush()
    elif what == "log":
        logging.getLogger("mine").warning("careful %s", 42)
    elif what == "say":
        print(event.query["text"])
    return "ok"
"""


async def read_lines(
    http: aiohttp.ClientSession, gw: GatewayProcess, name: str, **query: str
) -> list[dict[str, Any]]:
    url = f"{gw.url}/v1/functions/{name}/logs"
    async with http.get(url, params=query, headers=gw.headers) as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "application/x-ndjson"
        return [json.loads(line) for line in (await r.text()).splitlines() if line]


async def call(
    http: aiohttp.ClientSession, gw: GatewayProcess, name: str, **query: str
) -> tuple[int, str, dict[str, Any] | str]:
    async with http.get(f"{gw.url}/fn/{name}", params=query, headers=gw.headers) as r:
        text = await r.text()
        body: dict[str, Any] | str = (
            json.loads(text) if r.content_type == "application/json" else text
        )
        return r.status, r.headers["X-Kapal-Request-Id"], body


@pytest.fixture(scope="module")
def gw(shared_gateway: GatewayProcess) -> GatewayProcess:
    async def deploy_it() -> None:
        async with aiohttp.ClientSession() as http:
            spec = {"name": "chatty", "scaling": {"concurrency": 8}}
            status, body = await deploy(http, shared_gateway, {"handler.py": CHATTY}, spec)
            assert status == 201, body

    asyncio.run(deploy_it())
    return shared_gateway


async def test_a_print_is_found_by_its_request_id(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    status, rid, _ = await call(http, gw, "chatty", do="print")
    assert status == 200
    started = time.monotonic()

    async def found() -> list[dict[str, Any]]:
        return [
            ln
            for ln in await read_lines(http, gw, "chatty", request_id=rid)
            if ln["stream"] == "stdout"
        ]

    lines = await eventually(found)
    print(f"print readable after {time.monotonic() - started:.3f} s")
    assert lines[0]["line"] == f"hello from {rid}"
    assert lines[0]["function"] == "chatty" and lines[0]["version"] == 1
    assert lines[0]["instance"]


async def test_a_thread_the_handler_starts_is_tagged(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    _, rid, _ = await call(http, gw, "chatty", do="thread")

    async def found() -> list[dict[str, Any]]:
        return [
            ln
            for ln in await read_lines(http, gw, "chatty", request_id=rid)
            if ln["line"] == "from a thread"
        ]

    await eventually(found)


async def test_logging_and_binary_output(gw: GatewayProcess, http: aiohttp.ClientSession) -> None:
    _, logged, _ = await call(http, gw, "chatty", do="log")
    _, binary, _ = await call(http, gw, "chatty", do="binary")

    async def found(rid: str) -> list[dict[str, Any]]:
        return await read_lines(http, gw, "chatty", request_id=rid)

    line = (await eventually(lambda: found(logged)))[0]
    assert (line["stream"], line["level"]) == ("log", "warning") and "careful 42" in line["line"]
    line = (await eventually(lambda: found(binary)))[0]
    assert line["line"] == "bad \\xff\\xfe bytes"


async def test_one_invocation_past_its_cap_is_cut_with_a_marker(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    status, rid, _ = await call(http, gw, "chatty", do="flood")
    assert status == 200

    async def marked() -> list[dict[str, Any]]:
        lines = await read_lines(http, gw, "chatty", request_id=rid, limit="10000")
        return lines if any("truncated" in ln["line"] for ln in lines) else []

    lines = await eventually(marked)
    floods = [ln for ln in lines if ln["line"].startswith("flood line")]
    assert 0 < len(floods) < 5000
    assert sum(len(ln["line"]) + 1 for ln in floods) <= 64 * 1024
    assert next(ln for ln in lines if "truncated" in ln["line"])["stream"] == "runtime"


async def test_follow_streams_a_line_printed_after_it_started(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    url = f"{gw.url}/v1/functions/chatty/logs"
    params = {"follow": "1", "since": "1s"}
    async with http.get(url, params=params, headers=gw.headers) as r:
        assert r.status == 200
        await asyncio.sleep(0.3)
        _, rid, _ = await call(http, gw, "chatty", do="say", text="live line")

        async def next_matching() -> dict[str, Any]:
            async for raw in r.content:
                line = json.loads(raw)
                if line["line"] == "live line":
                    return dict(line)
            raise AssertionError("the stream ended")

        line = await asyncio.wait_for(next_matching(), 30)
        assert line["request_id"] == rid


async def test_bad_queries_are_refused_naming_the_parameter(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    base = f"{gw.url}/v1/functions"
    for path, query, field in (
        ("chatty/logs", {"since": "yesterday-ish"}, "since"),
        ("chatty/logs", {"limit": "0"}, "limit"),
        ("chatty/logs", {"bogus": "1"}, "bogus"),
        ("chatty/invocations", {"cursor": "!!!"}, "cursor"),
        ("chatty/invocations", {"status": "7xx"}, "status"),
        ("chatty/invocations", {"trigger": "carrier-pigeon"}, "trigger"),
    ):
        async with http.get(f"{base}/{path}", params=query, headers=gw.headers) as r:
            assert r.status == 422, (path, query, await r.text())
            assert field in (await r.json())["error"]["message"]
    for path in ("nope/logs", "nope/invocations", "chatty/invocations/" + "0" * 32):
        async with http.get(f"{base}/{path}", headers=gw.headers) as r:
            assert r.status == 404, path
    async with http.get(f"{base}/chatty/logs") as r:
        assert r.status == 401


async def test_records_of_a_call_page_newest_first_with_its_lines(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    rids = [(await call(http, gw, "chatty", do="print"))[1] for _ in range(3)]
    url = f"{gw.url}/v1/functions/chatty/invocations"

    async def page(**query: str) -> dict[str, Any]:
        async with http.get(url, params=query, headers=gw.headers) as r:
            assert r.status == 200, await r.text()
            return dict(await r.json())

    async def recorded() -> bool:
        ids = [i["id"] for i in (await page(limit="1000"))["invocations"]]
        return all(rid in ids for rid in rids)

    await eventually(recorded)
    first = await page(limit="2")
    assert len(first["invocations"]) == 2 and first["next_cursor"]
    second = await page(limit="2", cursor=first["next_cursor"])
    newest = [i["id"] for i in first["invocations"] + second["invocations"]]
    assert newest[:3] == rids[::-1]
    record = first["invocations"][0]
    assert record["trigger"] == "http" and record["status"] == 200 and record["method"] == "GET"

    async def detail() -> dict[str, Any] | None:
        async with http.get(f"{url}/{rids[-1]}", headers=gw.headers) as r:
            found = dict(await r.json())
            return found if found["logs"] else None

    found = await eventually(detail)
    assert found["record"]["id"] == rids[-1]
    assert [ln["line"] for ln in found["logs"] if ln["stream"] == "stdout"] == [
        f"hello from {rids[-1]}"
    ]


async def test_a_traceback_outlives_its_container_and_the_gateway(
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    docker_client: docker.DockerClient,
) -> None:
    gw = make_gateway(KAPAL_PAUSE_STANDBYS="0", KAPAL_PREWARM_PYTHON="0")
    spec = {"name": "failing", "scaling": {"idle_timeout_s": 1}}
    status, body = await deploy(http, gw, {"handler.py": CHATTY}, spec)
    assert status == 201, body
    status, rid, error = await call(http, gw, "failing", do="fail")
    assert status == 500
    assert isinstance(error, dict) and error["error"]["request_id"] == rid

    def gone() -> bool:
        return not managed_containers(docker_client, gw.namespace, "failing")

    async def scaled_to_zero() -> bool:
        return gone()

    await eventually(scaled_to_zero, within=90)

    async def traceback() -> list[dict[str, Any]]:
        lines = await read_lines(http, gw, "failing", request_id=rid)
        return [ln for ln in lines if "Traceback" in ln["line"]]

    tb = (await eventually(traceback))[0]
    assert f"ValueError: boom {rid}" in tb["line"] and tb["level"] == "error"
    assert tb["stream"] == "stderr"
    platform = [
        ln["line"] for ln in await read_lines(http, gw, "failing") if ln["stream"] == "platform"
    ]
    assert any(p.startswith("image") and "built" in p for p in platform)
    assert any(p.startswith("instance started (new)") for p in platform)
    assert any(p.startswith("instance stopped") for p in platform)

    gw.stop()
    gw.start()
    lines = await read_lines(http, gw, "failing", request_id=rid)
    assert [ln["line"] for ln in lines if ln["stream"] == "stdout"] == ["about to fail"]


async def test_records_carry_each_trigger(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = make_gateway(KAPAL_PREWARM_PYTHON="0")
    status, body = await deploy(http, gw, {"handler.py": CHATTY}, {"name": "every"})
    assert status == 201, body
    async with http.post(f"{gw.url}/async/fn/every", headers=gw.headers) as r:
        assert r.status == 202
        async_id = (await r.json())["id"]
    async with http.post(
        f"{gw.url}/v1/jobs", json={"function": "every", "items": [1, 2]}, headers=gw.headers
    ) as r:
        assert r.status == 201, await r.text()
    schedule = {"function": "every", "cron": "* * * * *", "payload": {}}
    async with http.post(f"{gw.url}/v1/schedules", json=schedule, headers=gw.headers) as r:
        assert r.status == 201, await r.text()
    conn = await asyncpg.connect(gw.database_url)
    try:
        await conn.execute("UPDATE schedules SET next_run = now() - interval '2 minutes'")
    finally:
        await conn.close()
    await call(http, gw, "every", do="print")
    url = f"{gw.url}/v1/functions/every/invocations"

    async def all_triggers() -> list[dict[str, Any]]:
        async with http.get(url, params={"limit": "100"}, headers=gw.headers) as r:
            records = list((await r.json())["invocations"])
        triggers = {rec["trigger"] for rec in records}
        return records if {"http", "async", "job", "schedule"} <= triggers else []

    records = await eventually(all_triggers, within=60)
    # The first call of a function with no instance waited for a new container.
    first = min(records, key=lambda rec: rec["started_at"])
    assert first["cold"] and first["tier"] == "new" and first["init_ms"] > 0
    async_records = [rec for rec in records if rec["trigger"] == "async"]
    assert async_records[0]["parent"] == async_id.replace("-", "")
    async with http.get(f"{url}/{async_id}", headers=gw.headers) as r:
        assert r.status == 200
        detail = await r.json()
    assert detail["record"] is None and [a["trigger"] for a in detail["attempts"]] == ["async"]
    async with http.get(url, params={"trigger": "job"}, headers=gw.headers) as r:
        assert {rec["trigger"] for rec in (await r.json())["invocations"]} == {"job"}


async def test_following_a_deleted_function_ends_the_stream(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = make_gateway(KAPAL_PREWARM_PYTHON="0")
    status, body = await deploy(http, gw, {"handler.py": CHATTY}, {"name": "brief"})
    assert status == 201, body
    url = f"{gw.url}/v1/functions/brief/logs"
    async with http.get(url, params={"follow": "1"}, headers=gw.headers) as r:
        assert r.status == 200
        async with http.delete(f"{gw.url}/v1/functions/brief", headers=gw.headers) as d:
            assert d.status == 204
        await asyncio.wait_for(r.read(), 30)  # ends: nothing more will come
