"""Helpers shared by the integration tests: code archives, deploys, a real gateway."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from infra.local import (
    GatewayProcess,
    cleanup_namespace,
    free_port,
    managed_containers,
    new_namespace,
    tar_gz,
)

__all__ = [
    "GatewayProcess",
    "cleanup_namespace",
    "deploy",
    "free_port",
    "managed_containers",
    "new_namespace",
    "tar_gz",
    "zip_bytes",
]


def zip_bytes(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


async def deploy(
    http: Any,
    gw: GatewayProcess,
    files: dict[str, str | bytes] | bytes,
    spec: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    update: bool = False,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """POST (or PUT with update=True) a function; returns (status, JSON body).

    Authenticated with the gateway's admin key unless `headers` says otherwise.
    """
    import json

    import aiohttp

    form = aiohttp.FormData()
    form.add_field("spec", json.dumps(spec or {}), content_type="application/json")
    code = files if isinstance(files, bytes) else tar_gz(files)
    form.add_field("code", code, filename="code.tar.gz", content_type="application/gzip")
    if update:
        url = f"{gw.url}/v1/functions/{name}"
        method = "PUT"
    else:
        url = f"{gw.url}/v1/functions"
        method = "POST"
    async with http.request(
        method, url, data=form, headers=gw.headers if headers is None else headers
    ) as r:
        return r.status, await r.json()


T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T | None]], within: float = 30.0) -> T:
    """The first truthy value `check` gives, polling (never a timing assertion)."""
    end = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < end, "not there in time"
        await asyncio.sleep(0.1)
