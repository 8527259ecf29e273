"""Helpers of the queue's integration tests: a gateway with fast retries, polling."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from tests.support import GatewayProcess

# Retries and polls fast enough for tests; leases short enough for the crash test.
FAST_QUEUE = {
    "KAPAL_QUEUE_RETRY_BASE_S": "0.05",
    "KAPAL_QUEUE_RETRY_CAP_S": "0.5",
    "KAPAL_QUEUE_POLL_S": "0.1",
    "KAPAL_QUEUE_LEASE_S": "3",
}
FINAL = {"succeeded", "failed", "dead", "cancelled"}

FLAKY = """
import os

def _count(key):
    path = "/tmp/count-" + key
    n = int(open(path).read()) + 1 if os.path.exists(path) else 1
    with open(path, "w") as f:
        f.write(str(n))
    return n

def handle(event, context):
    key = event.query.get("key", "k")
    if event.path == "/fix":
        open("/tmp/fixed-" + key, "w").close()
        return "fixed"
    n = _count(key)
    if event.path == "/until":
        if n < int(event.query.get("n", "3")):
            return {"statusCode": 503, "body": {"n": n}}
        return {"statusCode": 200, "body": {
            "n": n,
            "body": event.body.decode(),
            "attempt": event.headers.get("X-Kapal-Attempt"),
            "invocation": event.headers.get("X-Kapal-Invocation-Id"),
            "method": event.method,
        }}
    if event.path == "/broken":
        if os.path.exists("/tmp/fixed-" + key):
            return {"statusCode": 200, "body": {"n": n}}
        return {"statusCode": 500, "body": "broken"}
    if event.path == "/bad":
        return {"statusCode": 400, "body": {"error": "bad input"}}
    if event.path == "/binary":
        return b"\\xff\\xfe\\x00"
    return {"statusCode": 200, "body": {"n": n, "body": event.body.decode()}}
"""

NOOP = """
def handle(event, context):
    return event.body
"""


async def wait_final(
    http: aiohttp.ClientSession, gw: GatewayProcess, id: str, timeout_s: float = 60.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        async with http.get(f"{gw.url}/v1/invocations/{id}") as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        if body["status"] in FINAL:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"invocation {id} not final in time: {body}\n{gw.logs()[-3000:]}")
