"""Invocation records: appended in memory on the hot path, written to Postgres in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from datetime import datetime
from typing import NamedTuple

import asyncpg

log = logging.getLogger("kapal.gateway.records")

COLUMNS = (
    "id",
    "function",
    "version",
    "method",
    "path",
    "status",
    "cold",
    "instance",
    "started_at",
    "duration_ms",
)
# Records kept in memory while Postgres is unreachable; older ones are dropped past it.
MAX_PENDING = 100_000


class InvocationRecord(NamedTuple):
    """One invocation; a tuple, so a batch goes to COPY as it is (this is on the hot path)."""

    id: uuid.UUID
    function: str
    version: int
    method: str
    path: str
    status: int
    cold: bool
    instance: str
    started_at: datetime
    duration_ms: float


class Recorder:
    def __init__(self, db: asyncpg.Pool, flush_s: float, retention_days: int) -> None:
        self.db = db
        self.flush_s = flush_s
        self.retention_days = retention_days
        self.pending: list[InvocationRecord] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, record: InvocationRecord) -> None:
        self.pending.append(record)
        if len(self.pending) > MAX_PENDING:
            del self.pending[: len(self.pending) - MAX_PENDING]

    def pending_count(self, function: str) -> int:
        return sum(1 for r in self.pending if r.function == function)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="kapal-records")

    async def _loop(self) -> None:
        ticks = 0
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.flush_s)
            await self.flush()
            ticks += 1
            if ticks % max(1, int(3600 / self.flush_s)) == 1:
                await self._retain()

    async def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        counts = Counter(r.function for r in batch)
        try:
            async with self.db.acquire() as conn, conn.transaction():
                await conn.copy_records_to_table(
                    "invocation_records", records=batch, columns=COLUMNS
                )
                await conn.execute(
                    "UPDATE functions f SET invocations = f.invocations + c.n"
                    " FROM unnest($1::text[], $2::bigint[]) AS c(name, n) WHERE f.name = c.name",
                    list(counts),
                    list(counts.values()),
                )
        except (OSError, asyncpg.PostgresError) as e:
            log.warning("writing invocation records failed; will retry", extra={"error": str(e)})
            self.pending[:0] = batch

    async def _retain(self) -> None:
        try:
            await self.db.execute(
                "DELETE FROM invocation_records"
                " WHERE started_at < now() - make_interval(days => $1)",
                self.retention_days,
            )
        except (OSError, asyncpg.PostgresError) as e:
            log.warning("retention failed", extra={"error": str(e)})

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.flush()
