"""Schedules on real gateways sharing one database: one invocation per tick, catch-up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest

from tests.conftest import GatewayFactory
from tests.gateway.queue_support import FAST_QUEUE, wait_final
from tests.support import GatewayProcess

pytestmark = pytest.mark.integration


@pytest.fixture
async def http(gw: GatewayProcess) -> AsyncIterator[aiohttp.ClientSession]:
    """This module's requests carry the gateway's admin key (the API is locked down)."""
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(headers=gw.headers, timeout=timeout) as session:
        yield session


async def create(http: aiohttp.ClientSession, gw: GatewayProcess, **body: object) -> dict[str, str]:
    async with http.post(f"{gw.url}/v1/schedules", json=body) as r:
        assert r.status == 201, await r.text()
        out: dict[str, str] = await r.json()
        return out


async def test_missed_ticks_fire_once_across_two_gateways(
    gw: GatewayProcess, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    other = make_gateway(database_url=gw.database_url, **FAST_QUEUE)
    schedules = [
        await create(http, gw, function="flaky", cron="* * * * *", payload={"n": n})
        for n in range(5)
    ]
    for s in schedules:
        assert datetime.fromisoformat(s["next_run"]) > datetime.now(UTC)
    conn = await asyncpg.connect(gw.database_url)
    try:
        # As if Kapal had been down for ten minutes: several ticks missed.
        outage_end: datetime = await conn.fetchval(
            "UPDATE schedules SET next_run = now() - interval '10 minutes' RETURNING now()"
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            late = await conn.fetchval("SELECT count(*) FROM schedules WHERE next_run <= now()")
            if late == 0:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # both gateways have had more rounds to double-fire
        rows = await conn.fetch(
            "SELECT id, idempotency_key, body FROM invocations"
            " WHERE idempotency_key LIKE 'schedule:%'"
        )
    finally:
        await conn.close()
    for s in schedules:
        mine = [r for r in rows if r["idempotency_key"].startswith(f"schedule:{s['id']}:")]
        ticks = sorted(datetime.fromisoformat(r["idempotency_key"].split(":", 2)[2]) for r in mine)
        missed = [t for t in ticks if t <= outage_end]
        # The latest missed tick only, once; a tick that came due while the test ran
        # (a minute boundary crossed) is a new one and fires normally.
        assert len(missed) == 1, ticks
        assert outage_end - timedelta(minutes=1) < missed[0] <= outage_end
        assert len(ticks) - len(missed) <= 1, ticks
        async with http.get(f"{other.url}/v1/schedules/{s['id']}") as r:
            got = await r.json()
        assert datetime.fromisoformat(got["last_run"]) == ticks[-1]
        assert datetime.fromisoformat(got["next_run"]) > ticks[-1]
    done = await wait_final(http, gw, str(rows[0]["id"]))
    assert done["status"] == "succeeded"


async def test_manage_and_validate(gw: GatewayProcess, http: aiohttp.ClientSession) -> None:
    s = await create(
        http, gw, function="flaky", cron="0 9 * * mon-fri", timezone="Europe/Paris", payload=[1]
    )
    assert s["timezone"] == "Europe/Paris" and s["payload"] == [1]
    async with http.get(f"{gw.url}/v1/schedules") as r:
        assert s["id"] in [x["id"] for x in (await r.json())["schedules"]]
    async with http.delete(f"{gw.url}/v1/schedules/{s['id']}") as r:
        assert r.status == 204
    async with http.get(f"{gw.url}/v1/schedules/{s['id']}") as r:
        assert r.status == 404
    for body, status, word in (
        ({"function": "flaky", "cron": "61 * * * *"}, 422, "cron"),
        ({"function": "flaky", "cron": "* * * * *", "timezone": "Mars/Base"}, 422, "timezone"),
        ({"function": "nope", "cron": "* * * * *"}, 404, "nope"),
        ({"cron": "* * * * *"}, 422, "function"),
    ):
        async with http.post(f"{gw.url}/v1/schedules", json=body) as r:
            assert r.status == status
            assert word in (await r.json())["error"]["message"]
