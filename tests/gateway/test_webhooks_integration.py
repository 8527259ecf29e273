"""Webhook endpoints on a real gateway: verified, deduplicated, durably queued."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from tests.gateway.queue_support import wait_final
from tests.support import GatewayProcess

pytestmark = pytest.mark.integration


@pytest.fixture
async def http(gw: GatewayProcess) -> AsyncIterator[aiohttp.ClientSession]:
    """This module's requests carry the gateway's admin key (the API is locked down)."""
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(headers=gw.headers, timeout=timeout) as session:
        yield session


def gh_headers(secret: str, body: bytes, delivery: str) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Delivery": delivery}


async def queued_rows(gw: GatewayProcess) -> int:
    conn = await asyncpg.connect(gw.database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM invocations"))
    finally:
        await conn.close()


async def create(
    http: aiohttp.ClientSession, gw: GatewayProcess, **body: object
) -> dict[str, object]:
    async with http.post(f"{gw.url}/v1/webhooks", json=body) as r:
        assert r.status == 201, await r.text()
        out: dict[str, object] = await r.json()
        return out


async def test_github_delivery_verified_deduplicated_and_run(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    hook = await create(http, gw, function="flaky", verify="github", secret="gh-secret-1")
    assert hook["secret"] == "gh-secret-1"
    assert str(hook["url"]).endswith(f"/hooks/{hook['id']}")
    conn = await asyncpg.connect(gw.database_url)
    try:
        stored = await conn.fetchrow("SELECT * FROM webhooks WHERE id = $1", hook["id"])
    finally:
        await conn.close()
    assert stored is not None and stored["secret"] is None  # sealed at rest
    assert all("gh-secret-1" not in str(v) for v in stored.values())
    body = json.dumps({"action": "opened"}).encode()
    before = await queued_rows(gw)

    async with http.post(
        str(hook["url"]), data=body, headers=gh_headers("wrong-secret", body, "d1")
    ) as r:
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "unauthorized"
    async with http.post(str(hook["url"]), data=body) as r:
        assert r.status == 401
    assert await queued_rows(gw) == before  # nothing queued for bad signatures

    ids = []
    for _ in range(2):  # GitHub redelivers with the same delivery id
        async with http.post(
            str(hook["url"]), data=body, headers=gh_headers("gh-secret-1", body, "d1")
        ) as r:
            assert r.status == 202, await r.text()
            ids.append((await r.json())["id"])
    assert ids[0] == ids[1]
    assert await queued_rows(gw) == before + 1
    done = await wait_final(http, gw, ids[0])
    assert done["status"] == "succeeded"
    assert json.loads(done["response"]["body"])["body"] == body.decode()
    assert done["method"] == "POST" and done["path"] == "/"


async def test_stripe_delivery_deduplicated_by_event_id(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    hook = await create(http, gw, function="flaky", verify="stripe")
    secret = str(hook["secret"])
    assert secret.startswith("whsec_")
    ids = []
    for n in range(2):
        body = json.dumps({"id": "evt_1", "attempt": n}).encode()
        t = str(int(time.time()))
        sig = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers = {"Stripe-Signature": f"t={t},v1={sig}"}
        async with http.post(str(hook["url"]), data=body, headers=headers) as r:
            assert r.status == 202, await r.text()
            ids.append((await r.json())["id"])
    assert ids[0] == ids[1]


async def test_manage_rotate_and_delete(gw: GatewayProcess, http: aiohttp.ClientSession) -> None:
    hook = await create(http, gw, function="flaky", verify="hmac-sha256", secret="first-secret")
    url = str(hook["url"])
    async with http.get(f"{gw.url}/v1/webhooks/{hook['id']}") as r:
        got = await r.json()
        assert got["id"] == hook["id"] and "secret" not in got
    async with http.get(f"{gw.url}/v1/webhooks") as r:
        listed = (await r.json())["webhooks"]
        assert hook["id"] in [h["id"] for h in listed]
        assert all("secret" not in h for h in listed)
    async with http.post(f"{gw.url}/v1/webhooks/{hook['id']}/rotate") as r:
        assert r.status == 200
        new_secret = (await r.json())["secret"]
        assert new_secret and new_secret != "first-secret"

    def signed(secret: str) -> dict[str, str]:
        digest = hmac.new(secret.encode(), b"x", hashlib.sha256).hexdigest()
        return {"X-Signature-256": f"sha256={digest}"}

    async with http.post(url, data=b"x", headers=signed("first-secret")) as r:
        assert r.status == 401
    async with http.post(url, data=b"x", headers=signed(new_secret)) as r:
        assert r.status == 202
    async with http.delete(f"{gw.url}/v1/webhooks/{hook['id']}") as r:
        assert r.status == 204
    async with http.post(url, data=b"x", headers=signed(new_secret)) as r:
        assert r.status == 404


async def test_bad_requests_name_the_field(gw: GatewayProcess, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{gw.url}/v1/webhooks", json={"function": "flaky", "verify": "md5"}) as r:
        assert r.status == 422
        error = (await r.json())["error"]
        assert error["code"] == "invalid_request" and "verify" in error["message"]
    async with http.post(f"{gw.url}/v1/webhooks", json={"function": "nope", "verify": "none"}) as r:
        assert r.status == 404
    async with http.post(f"{gw.url}/v1/webhooks", data=b"{not json") as r:
        assert r.status == 400
    async with http.post(
        f"{gw.url}/v1/webhooks", json={"function": "flaky", "verify": "github", "secret": "short"}
    ) as r:
        assert r.status == 422
        assert "secret" in (await r.json())["error"]["message"]
