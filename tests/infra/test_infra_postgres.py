"""Postgres for `up`: the configured one, else an embedded server with a `kapal` database."""

import asyncio
import os
import pwd
import socket
import stat
from pathlib import Path

import asyncpg
import pytest

from infra.postgres import (
    SERVER_USER,
    TcpAccess,
    ensure_postgres,
    postmaster_pid,
    serve_over_tcp,
    stop_embedded,
    stop_recorded_postgres,
    url,
)


def test_kapal_database_url_is_used_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAPAL_DATABASE_URL", "postgresql://u@db.example/kapal")
    postgres = ensure_postgres(tmp_path, log=lambda _: None)
    assert postgres.url == "postgresql://u@db.example/kapal"
    assert not postgres.started_by_us
    postgres.stop()  # a no-op for a server we did not start
    assert not (tmp_path / "pg").exists()


@pytest.mark.integration
def test_embedded_postgres_serves_the_kapal_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAPAL_DATABASE_URL", raising=False)
    postgres = ensure_postgres(tmp_path, log=lambda _: None)
    try:
        assert postgres.started_by_us

        async def database() -> str:
            conn = await asyncpg.connect(postgres.url)
            try:
                return str(await conn.fetchval("SELECT current_database()"))
            finally:
                await conn.close()

        assert asyncio.run(database()) == "kapal"
        again = ensure_postgres(tmp_path, log=lambda _: None)
        assert again.url == postgres.url and not again.started_by_us
    finally:
        postgres.stop()
    assert stop_recorded_postgres(tmp_path, log=lambda _: None) is False


def modes(path: Path) -> list[tuple[str, int, int]]:
    """Mode and owner of `path` and of every parent."""
    return [(str(p), p.stat().st_mode, p.stat().st_uid) for p in (path, *path.parents)]


@pytest.mark.integration
def test_embedded_postgres_changes_nothing_outside_its_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # KAPAL_HOME under a directory only its owner may enter, as under /root.
    monkeypatch.delenv("KAPAL_DATABASE_URL", raising=False)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    home = private / "kapal"
    home.mkdir(mode=0o700)
    before = modes(home)
    postgres = ensure_postgres(home, log=lambda _: None)
    try:
        assert modes(home) == before
        pgdata = home / "pg"
        assert stat.S_IMODE(pgdata.stat().st_mode) == 0o700
        if os.geteuid() == 0:  # the server is not root, and owns its data dir
            pid = postmaster_pid(pgdata)
            assert pid is not None
            server_uid = pwd.getpwnam(SERVER_USER).pw_uid
            assert pgdata.stat().st_uid == server_uid
            assert Path(f"/proc/{pid}").stat().st_uid == server_uid

        async def database() -> str:
            conn = await asyncpg.connect(postgres.url)
            try:
                return str(await conn.fetchval("SELECT current_database()"))
            finally:
                await conn.close()

        assert asyncio.run(database()) == "kapal"
    finally:
        postgres.stop()
    assert postmaster_pid(home / "pg") is None
    assert modes(home) == before


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_tcp_url_carries_the_password_quoted() -> None:
    tcp = TcpAccess("10.213.0.1", 5433, "p@ss/word")
    assert tcp.url() == "postgresql://postgres:p%40ss%2Fword@10.213.0.1:5433/kapal"
    assert tcp.url("other").endswith(":5433/other")


@pytest.mark.integration
def test_over_tcp_every_login_needs_the_password_and_the_socket_stays_open(
    tmp_path: Path,
) -> None:
    tcp = TcpAccess("127.0.0.1", free_port(), "tcp-s3cret'pass")
    pgdata = tmp_path / "pg"
    database_url = serve_over_tcp(pgdata, tcp, "swarmdb")
    try:
        assert database_url == tcp.url("swarmdb")

        async def login(dsn: str) -> str:
            conn = await asyncpg.connect(dsn)
            try:
                return str(await conn.fetchval("SELECT current_database()"))
            finally:
                await conn.close()

        assert asyncio.run(login(database_url)) == "swarmdb"
        with pytest.raises(asyncpg.InvalidPasswordError):
            asyncio.run(login(TcpAccess(tcp.address, tcp.port, "wrong").url("swarmdb")))
        with pytest.raises(asyncpg.InvalidPasswordError):
            asyncio.run(login(f"postgresql://postgres@127.0.0.1:{tcp.port}/swarmdb"))
        # Beside it, the unix socket (named after the port) lets this host in without one.
        assert asyncio.run(login(url(pgdata, "swarmdb", tcp.port))) == "swarmdb"
    finally:
        stop_embedded(pgdata)
    assert postmaster_pid(pgdata) is None
