"""Sync handlers behind a real gateway: a blocking one stalls nothing, a late one is replaced."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import GatewayFactory
from tests.support import GatewayProcess, deploy

pytestmark = pytest.mark.integration

BLOCKING = """
import time

def handle(event, context):
    if event.path == "/sleep":
        time.sleep(float(event.query.get("s", "1")))
        return "slept"
    return "ok"
"""


async def instance_ids(http: aiohttp.ClientSession, gw: GatewayProcess, name: str) -> set[str]:
    async with http.get(f"{gw.url}/v1/functions/{name}", headers=gw.headers) as r:
        return {i["id"] for i in (await r.json())["instances"]}


async def test_a_blocking_sync_handler_does_not_delay_a_second_request(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = make_gateway()
    spec = {"name": "blocking", "scaling": {"min": 1, "max": 1, "concurrency": 4}}
    status, body = await deploy(http, gw, {"handler.py": BLOCKING}, spec)
    assert status == 201, body
    url = f"{gw.url}/fn/blocking"
    async with http.get(f"{url}/", headers=gw.headers) as r:
        assert r.status == 200  # the one instance is up
    slow = asyncio.create_task(http.get(f"{url}/sleep?s=1", headers=gw.headers))
    await asyncio.sleep(0.2)  # the 1 s sleep has begun on the instance
    async with http.get(f"{url}/", headers=gw.headers) as r:
        assert (r.status, await r.text()) == (200, "ok")
    assert not slow.done()  # answered while the blocking handler still sleeps
    async with await slow as r:
        assert (r.status, await r.text()) == (200, "slept")
    assert len(await instance_ids(http, gw, "blocking")) == 1  # both ran on the same one


async def test_a_sync_handler_past_its_deadline_is_504_and_replaced(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = make_gateway()
    spec = {"name": "late", "limits": {"timeout_s": 1}, "scaling": {"concurrency": 4}}
    status, body = await deploy(http, gw, {"handler.py": BLOCKING}, spec)
    assert status == 201, body
    url = f"{gw.url}/fn/late"
    async with http.get(f"{url}/", headers=gw.headers) as r:
        assert r.status == 200
    before = await instance_ids(http, gw, "late")
    async with http.get(f"{url}/sleep?s=5", headers=gw.headers) as r:
        assert r.status == 504
        assert (await r.json())["error"]["code"] == "timeout"
    after = await instance_ids(http, gw, "late")
    assert before and not (before & after)
    async with http.get(f"{url}/", headers=gw.headers) as r:
        assert r.status == 200
