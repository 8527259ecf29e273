"""Fixtures of the gateway tests: a gateway with a fast queue and the `flaky` function."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import docker
import pytest

from tests.conftest import PostgresServer
from tests.gateway.queue_support import FAST_QUEUE, FLAKY
from tests.support import GatewayProcess, cleanup_namespace, deploy, new_namespace


@pytest.fixture(scope="module")
def gw(
    postgres: PostgresServer, docker_client: docker.DockerClient, log_dir: Path
) -> Iterator[GatewayProcess]:
    """One gateway per module, fast retries, `flaky` deployed (one instance, 3 retries)."""
    gateway = GatewayProcess(postgres.new_database(), new_namespace(), log_dir, **FAST_QUEUE)
    gateway.start()

    async def deploy_flaky() -> None:
        async with aiohttp.ClientSession() as http:
            spec = {"name": "flaky", "scaling": {"max": 1}, "async": {"max_retries": 3}}
            status, body = await deploy(http, gateway, {"handler.py": FLAKY}, spec)
            assert status == 201, body
            assert body["async"] == {"max_retries": 3, "concurrency": 16}

    try:
        asyncio.run(deploy_flaky())
        yield gateway
    finally:
        gateway.stop()
        leftovers = cleanup_namespace(docker_client, gateway.namespace)
        assert not leftovers, leftovers
