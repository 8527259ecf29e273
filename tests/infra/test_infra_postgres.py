"""Postgres for `up`: the configured one, else an embedded server with a `kapal` database."""

import asyncio
import os
import pwd
import stat
from pathlib import Path

import asyncpg
import pytest

from infra.postgres import SERVER_USER, ensure_postgres, postmaster_pid, stop_recorded_postgres


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
