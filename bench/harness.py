"""A Kapal of its own for each benchmark: engine, base image, Postgres, gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from infra.engine import ensure_engine, stop_engine
from infra.images import ensure_base_images
from infra.local import REPO, GatewayProcess, cleanup_namespace, new_namespace, tar_gz
from infra.postgres import ensure_postgres
from infra.processes import descendants


def say(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def kapal(log_level: str = "WARNING", **env: str) -> Iterator[GatewayProcess]:
    """A gateway on a fresh embedded Postgres and namespace; everything removed after."""
    tmp = Path(tempfile.mkdtemp(prefix="kapal-bench-"))
    engine = ensure_engine(tmp, log=say)
    images = ensure_base_images(engine.client, REPO, log=say)
    # Always a throwaway embedded server, never a database named by the environment.
    external = os.environ.pop("KAPAL_DATABASE_URL", None)
    try:
        pg = ensure_postgres(tmp, log=say)
    finally:
        if external is not None:
            os.environ["KAPAL_DATABASE_URL"] = external
    env = {
        "KAPAL_RUNTIME_IMAGE_PYTHON": images["python"],
        "KAPAL_RUNTIME_IMAGE_NODEJS": images["nodejs"],
        **env,
    }
    gw = GatewayProcess(pg.url, new_namespace(), tmp, log_level=log_level, **env)
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()
        cleanup_namespace(engine.client, gw.namespace)
        pg.stop()
        if engine.started_by_us:
            stop_engine(engine, log=say)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def beside(gw: GatewayProcess, **env: str) -> Iterator[GatewayProcess]:
    """Another gateway on `gw`'s database and namespace (a peer); stopped first, so that
    `gw`, stopping last, is the one that removes what they shared."""
    other = GatewayProcess(
        gw.database_url,
        gw.namespace,
        gw.log_path.parent,
        log_level="WARNING",
        admin_key=gw.admin_key,
        **env,
    )
    try:
        other.start()
        yield other
    finally:
        other.stop()


def cpu_s(gw: GatewayProcess) -> float:
    """CPU seconds (user + system) used so far by the gateway and its worker processes."""
    assert gw.proc is not None
    total = 0
    for pid in (gw.proc.pid, *descendants(gw.proc.pid)):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def deploy(
    gw: GatewayProcess,
    name: str,
    handler: str,
    spec: dict[str, Any],
    filename: str = "handler.py",
) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        form = aiohttp.FormData()
        # Public: the load generator calls it without a key.
        fields = {"name": name, "public": True, **spec}
        form.add_field("spec", json.dumps(fields), content_type="application/json")
        form.add_field("code", tar_gz({filename: handler}), filename="code.tar.gz")
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{gw.url}/v1/functions", data=form, headers=gw.headers) as r:
                body: dict[str, Any] = await r.json()
                if r.status != 201:
                    raise RuntimeError(f"deploy failed: {r.status} {body}")
                return body

    return asyncio.run(go())


def get_function(gw: GatewayProcess, name: str) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{gw.url}/v1/functions/{name}", headers=gw.headers) as r:
                body: dict[str, Any] = await r.json()
                return body

    return asyncio.run(go())


log = say


class Kapal:
    """`with Kapal(**env) as k:` — k.url, k.database_url, k.headers; removed after."""

    def __init__(self, **env: str) -> None:
        self._cm = kapal(**env)
        self.gw: GatewayProcess | None = None

    def __enter__(self) -> Kapal:
        self.gw = self._cm.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(None, None, None)

    @property
    def _gw(self) -> GatewayProcess:
        assert self.gw is not None
        return self.gw

    @property
    def url(self) -> str:
        return self._gw.url

    @property
    def database_url(self) -> str:
        return self._gw.database_url

    @property
    def headers(self) -> dict[str, str]:
        return self._gw.headers

    def cpu_s(self) -> float:
        return cpu_s(self._gw)

    async def deploy(
        self, http: aiohttp.ClientSession, code: str, spec: dict[str, Any]
    ) -> dict[str, Any]:
        form = aiohttp.FormData()
        # Public: load generators call it without a key.
        form.add_field(
            "spec", json.dumps({"public": True, **spec}), content_type="application/json"
        )
        form.add_field(
            "code",
            tar_gz({"handler.py": code}),
            filename="code.tar.gz",
            content_type="application/gzip",
        )
        async with http.post(f"{self.url}/v1/functions", data=form, headers=self.headers) as r:
            body: dict[str, Any] = await r.json()
            if r.status != 201:
                raise RuntimeError(f"deploy failed: {body}")
            return body
