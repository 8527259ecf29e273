"""The Postgres pool and schema migrations (numbered .sql files, applied under a lock)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import asyncpg

log = logging.getLogger("kapal.gateway.db")

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant shared by every gateway on the database; serializes migrations.
MIGRATION_LOCK = 0x6B6170616C


def migration_files() -> list[tuple[int, Path]]:
    out = []
    for path in sorted(MIGRATIONS.glob("*.sql")):
        number = int(path.name.split("_", 1)[0])
        out.append((number, path))
    numbers = [n for n, _ in out]
    if numbers != list(range(1, len(numbers) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, got {numbers}")
    return out


def _has_statements(sql: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in sql.splitlines())


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply pending migrations; returns the numbers applied."""
    applied: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for number, path in migration_files():
            if number in done:
                continue
            sql = path.read_text()
            async with conn.transaction():
                if _has_statements(sql):  # asyncpg fails on a comment-only query
                    await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", number)
            applied.append(number)
            log.info("migration applied", extra={"migration": path.name})
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied


async def connect(url: str) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=10)
    async with pool.acquire() as conn:
        await migrate(conn)
    return pool


async def listen(
    url: str,
    channel: str,
    received: Callable[[str], None],
    connected: Callable[[], None],
    stop: asyncio.Event,
    what: str,
) -> None:
    """LISTEN on `channel` until `stop`, reconnecting; `received(payload)` per notification,
    `connected()` after each (re)connect, for what was missed while not listening."""
    while not stop.is_set():
        try:
            conn = await asyncpg.connect(url)
        except (OSError, asyncpg.PostgresError) as e:
            log.warning(f"{what} listener cannot connect", extra={"error": str(e)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            continue
        try:
            await conn.add_listener(channel, lambda *args: received(str(args[-1])))
            connected()
            while not stop.is_set() and not conn.is_closed():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)
