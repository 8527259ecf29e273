"""Jobs in Postgres: created with all their items in one transaction."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from gateway.errors import NotFound
from gateway.queue.lanes import Lane
from gateway.sqlfile import load

Q = load(Path(__file__).with_name("queries.sql"))
ITEM_COLUMNS = (
    "id",
    "function",
    "method",
    "path",
    "headers",
    "body",
    "max_retries",
    "job_id",
    "item_index",
    "trigger",
)
ITEM_HEADERS = json.dumps([["Content-Type", "application/json"]])


@dataclass(frozen=True)
class JobRow:
    id: uuid.UUID
    function: str
    total: int
    max_concurrency: int | None
    max_retries: int
    created_at: datetime
    cancelled_at: datetime | None


@dataclass(frozen=True)
class StateCount:
    status: str
    n: int
    first_start: datetime | None
    last_finish: datetime | None


class JobStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(
        self,
        function: str,
        items: Sequence[bytes],
        max_concurrency: int | None,
        max_retries: int,
    ) -> uuid.UUID:
        """The job and every item, durably, in one transaction (COPY for the items)."""
        job_id = uuid.uuid4()
        records = [
            (uuid.uuid4(), function, "POST", "/", ITEM_HEADERS, body, max_retries, job_id, n, "job")
            for n, body in enumerate(items)
        ]
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                Q["insert"], job_id, function, len(items), max_concurrency, max_retries
            )
            await conn.copy_records_to_table("invocations", records=records, columns=ITEM_COLUMNS)
            await conn.execute(Q["notify"], Lane(function, job_id).encode())
        return job_id

    async def get(self, id: uuid.UUID) -> JobRow:
        row = await self.pool.fetchrow(Q["get"], id)
        if row is None:
            raise NotFound(f"job {id} not found")
        return JobRow(**dict(row))

    async def counts(self, id: uuid.UUID) -> list[StateCount]:
        return [StateCount(**dict(r)) for r in await self.pool.fetch(Q["counts"], id)]

    async def recent(
        self, function: str | None, limit: int
    ) -> list[tuple[JobRow, list[StateCount]]]:
        """The newest jobs (of one function, or all) with their counts, in two queries."""
        async with self.pool.acquire() as conn:
            jobs = [JobRow(**dict(r)) for r in await conn.fetch(Q["list"], function, limit)]
            counts: dict[uuid.UUID, list[StateCount]] = {j.id: [] for j in jobs}
            for r in await conn.fetch(Q["counts_many"], list(counts)):
                row = dict(r)
                counts[row.pop("job_id")].append(StateCount(**row))
        return [(j, counts[j.id]) for j in jobs]

    async def results(self, id: uuid.UUID, prefetch: int = 1000) -> AsyncIterator[Any]:
        """Items in index order, read with a cursor (a job may hold millions)."""
        async with self.pool.acquire() as conn, conn.transaction():
            async for row in conn.cursor(Q["results"], id, prefetch=prefetch):
                yield row

    async def cancel(self, id: uuid.UUID) -> int:
        await self.get(id)
        return len(await self.pool.fetch(Q["cancel"], id))
