"""Fixtures of the whole suite: a real Postgres, a real Docker engine, real gateways."""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import docker
import pytest

from infra.images import ensure_base_images
from infra.postgres import start_embedded, stop_embedded, url
from tests.support import GatewayProcess, cleanup_namespace, new_namespace


class PostgresServer:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="kapal-test-pg-"))
        self.external = os.environ.get("KAPAL_TEST_DATABASE_URL")
        self.pgdata: Path | None = None
        if not self.external:
            self.pgdata = self.tmp / "pg"
            start_embedded(self.pgdata)

    @property
    def admin_url(self) -> str:
        if self.external:
            return self.external
        assert self.pgdata is not None
        return url(self.pgdata, "postgres")

    def new_database(self) -> str:
        name = "t_" + secrets.token_hex(4)
        import asyncio

        import asyncpg

        async def create() -> None:
            conn = await asyncpg.connect(self.admin_url)
            try:
                await conn.execute(f"CREATE DATABASE {name}")
            finally:
                await conn.close()

        # Called from sync and async tests alike: run on a thread with a loop of its own.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, create()).result()
        if self.pgdata is not None:
            return url(self.pgdata, name)
        base, _, rest = self.admin_url.rpartition("/")
        query = "?" + rest.split("?", 1)[1] if "?" in rest else ""
        return f"{base}/{name}{query}"

    def stop(self) -> None:
        if self.pgdata is not None:
            stop_embedded(self.pgdata)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    client.ping()
    # Rebuilt when the runtime's files changed (instant when not), under a tag naming its
    # inputs: the gateways of this run (which inherit the environment) build on the runtime
    # of this checkout, whatever another checkout on the engine builds meanwhile.
    images = ensure_base_images(client, Path(__file__).resolve().parent.parent)
    os.environ["KAPAL_RUNTIME_IMAGE_PYTHON"] = images["python"]
    os.environ["KAPAL_RUNTIME_IMAGE_NODEJS"] = images["nodejs"]
    yield client
    client.close()


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-logs")


GatewayFactory = Callable[..., GatewayProcess]


@pytest.fixture
def make_gateway(
    postgres: PostgresServer, docker_client: docker.DockerClient, log_dir: Path
) -> Iterator[GatewayFactory]:
    """Start gateways; each is stopped and its namespace checked for leftovers after the test."""
    started: list[GatewayProcess] = []

    def make(
        database_url: str | None = None, namespace: str | None = None, **env: str
    ) -> GatewayProcess:
        # A second gateway on a database shares the first one's admin key.
        admin_key = next((g.admin_key for g in started if g.database_url == database_url), None)
        gw = GatewayProcess(
            database_url or postgres.new_database(),
            namespace or new_namespace(),
            log_dir,
            admin_key=admin_key,
            **env,
        )
        gw.start()
        started.append(gw)
        return gw

    yield make
    leftovers = []
    for gw in started:
        gw.stop()
    for ns in {gw.namespace for gw in started}:
        leftovers += cleanup_namespace(docker_client, ns)
    assert not leftovers, f"left behind after the gateway stopped: {leftovers}"


@pytest.fixture(scope="module")
def shared_gateway(
    postgres: PostgresServer, docker_client: docker.DockerClient, log_dir: Path
) -> Iterator[GatewayProcess]:
    """One gateway for a whole test module (deploys are the slow part)."""
    gw = GatewayProcess(postgres.new_database(), new_namespace(), log_dir)
    gw.start()
    yield gw
    gw.stop()
    leftovers = cleanup_namespace(docker_client, gw.namespace)
    assert not leftovers, f"left behind after the gateway stopped: {leftovers}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session
