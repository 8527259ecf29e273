"""Readiness probe of a freshly started instance: GET /_/health until it answers 200.

An image function's instance is polled on its own health path instead, and is ready once
it answers 2xx or 3xx (its server may answer 5xx while it warms up).
"""

from __future__ import annotations

import asyncio
import json
import time

from scheduler.errors import StartFailed
from scheduler.models import RUNTIME_HEALTH_PATH, FunctionSpec

PROBE_INTERVAL_S = 0.005


async def health(address: str, path: str = RUNTIME_HEALTH_PATH) -> tuple[int, bytes]:
    """One health request over a fresh connection; (status, body)."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: instance\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def identity(body: bytes) -> tuple[str, int, int] | None:
    """(function, version, in flight) from a health answer; None for a generic one."""
    try:
        data = json.loads(body)
        return str(data["function"]), int(data["version"]), int(data.get("in_flight", 0))
    except (ValueError, KeyError, TypeError):
        return None


async def in_flight(address: str) -> int | None:
    """Invocations the runtime is serving now (from every gateway); None if unknown."""
    try:
        status, body = await asyncio.wait_for(health(address), 1.0)
    except (OSError, TimeoutError, IndexError, ValueError):
        return None
    found = identity(body) if status == 200 else None
    return None if found is None else found[2]


def error_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:300].decode(errors="replace")


def healthy(spec: FunctionSpec | None, status: int) -> bool:
    """Whether a health answer says an instance of `spec` (None: a runtime's) is ready."""
    if spec is not None and spec.from_image:
        return 200 <= status < 400
    return status == 200


async def wait_ready(address: str, deadline: float, spec: FunctionSpec | None = None) -> None:
    """Poll until the instance is healthy; raise StartFailed on a load error or the deadline.

    `spec`: what it serves (its health path); None: a runtime not yet given a function."""
    path = RUNTIME_HEALTH_PATH if spec is None else spec.probe_path
    while True:
        try:
            status, body = await asyncio.wait_for(health(address, path), 1.0)
            if healthy(spec, status):
                return
            if status >= 500 and (spec is None or not spec.from_image):
                raise StartFailed(f"handler failed to load: {error_message(body)}")
        except (OSError, TimeoutError, IndexError, ValueError):
            pass
        if time.monotonic() >= deadline:
            raise StartFailed(f"instance at {address} did not become healthy in time")
        await asyncio.sleep(PROBE_INTERVAL_S)


async def post_json(address: str, path: str, body: bytes) -> tuple[int, bytes]:
    """One POST over a fresh connection; (status, body)."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: instance\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        data = await reader.read(-1)
    finally:
        writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest
