"""Postgres for `up`: the configured one, else an embedded server with a `kapal` database."""

import asyncio
from pathlib import Path

import asyncpg
import pytest

from infra.postgres import ensure_postgres, stop_recorded_postgres


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
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))  # restored afterwards
    (tmp_path / "run").mkdir(mode=0o700)
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
