"""The queue's I/O: every query against Postgres, returning plain records."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from gateway.queue.lanes import Lane, payload
from gateway.queue.models import Claimed, NewInvocation, Outcome
from gateway.sqlfile import load

Q = load(Path(__file__).with_name("queries.sql"))
CHANNEL = "kapal_queue"
# Lanes of invocations outside any job (an index expression cannot hold NULL = NULL).
NO_JOB = uuid.UUID(int=0)


@dataclass(frozen=True)
class LaneDepth:
    lane: Lane
    job_concurrency: int | None
    queued: int


@dataclass(frozen=True)
class QueueStats:
    """What the queue holds, for /metrics."""

    # function -> (queued invocations outside jobs, seconds the oldest ready one waited).
    queued: dict[str, tuple[int, float]]
    # (function, state) -> items of unfinished jobs.
    job_items: dict[tuple[str, str], int]


class QueueStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def enqueue(self, items: Sequence[NewInvocation]) -> list[uuid.UUID | BaseException]:
        """Store a batch in one statement; returns each item's id (the first one's for a
        repeated idempotency key) and wakes the workers.

        Should the database refuse an item's data, the items are stored one by one so that
        only the bad one fails.
        """
        async with self.pool.acquire() as conn:
            try:
                return list(await self.enqueue_on(conn, items))
            except asyncpg.DataError:
                if len(items) == 1:
                    raise
            out: list[uuid.UUID | BaseException] = []
            for item in items:
                try:
                    out.extend(await self.enqueue_on(conn, [item]))
                except asyncpg.DataError as e:
                    out.append(e)
            return out

    async def enqueue_on(
        self, conn: asyncpg.Connection, items: Sequence[NewInvocation]
    ) -> list[uuid.UUID]:
        """`enqueue` on the caller's connection (and inside its transaction, if any)."""
        inserted = {
            r["id"]
            for r in await conn.fetch(
                Q["enqueue"],
                [i.id for i in items],
                [i.function for i in items],
                [i.method for i in items],
                [i.path for i in items],
                [json.dumps(i.headers) for i in items],
                [i.body for i in items],
                [i.max_retries for i in items],
                [i.idempotency_key for i in items],
                [i.callback_url for i in items],
                payload(Lane(i.function) for i in items),
                [i.trigger for i in items],
            )
        }
        out = [i.id for i in items]
        lost = [n for n, i in enumerate(items) if i.id not in inserted]
        if lost:
            rows = await conn.fetch(
                Q["existing_ids"],
                [items[n].function for n in lost],
                [items[n].idempotency_key for n in lost],
            )
            first = {(r["function"], r["idempotency_key"]): r["id"] for r in rows}
            for n in lost:
                out[n] = first[(items[n].function, items[n].idempotency_key)]
        return out

    async def claim(
        self,
        lane: Lane,
        limit: int,
        worker: str,
        lease_s: float,
        function_concurrency: int,
        job_concurrency: int | None = None,
    ) -> list[Claimed]:
        """Up to `limit` ready rows of one lane, now running under this worker's lease;
        fewer when the function or job already runs its concurrency (on any gateway)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(Q["claim_lock"], lane.function)
            rows = await conn.fetch(
                Q["claim"],
                lane.function,
                lane.job or NO_JOB,
                limit,
                worker,
                lease_s,
                function_concurrency,
                job_concurrency,
            )
        return [Claimed.from_row(r) for r in rows]

    async def job_limits(self, jobs: list[uuid.UUID]) -> dict[uuid.UUID, int | None]:
        rows = await self.pool.fetch(Q["job_limits"], jobs)
        return {r["id"]: r["max_concurrency"] for r in rows}

    async def finish(self, worker: str, outcomes: Sequence[Outcome]) -> set[uuid.UUID]:
        """Write attempt outcomes; returns the ids whose claim was still ours."""
        rows = await self.pool.fetch(
            Q["finish"],
            [o.id for o in outcomes],
            [o.attempt for o in outcomes],
            [o.status for o in outcomes],
            [o.run_at for o in outcomes],
            [o.result_status for o in outcomes],
            [None if o.result_headers is None else json.dumps(o.result_headers) for o in outcomes],
            [o.result_body for o in outcomes],
            [o.error for o in outcomes],
            worker,
        )
        return {r["id"] for r in rows}

    async def heartbeat(self, worker: str, lease_s: float) -> None:
        await self.pool.execute(Q["heartbeat"], worker, lease_s)

    async def recover_expired(self) -> list[tuple[str, str]]:
        """Rows of lost workers queued again or dead: (function, new status) of each."""
        return [(r["function"], r["status"]) for r in await self.pool.fetch(Q["recover_expired"])]

    async def release_own(self, worker: str) -> None:
        await self.pool.execute(Q["release_own"], worker)

    async def depth(self) -> list[LaneDepth]:
        return [
            LaneDepth(Lane(r["function"], r["job_id"]), r["job_concurrency"], r["n"])
            for r in await self.pool.fetch(Q["depth"])
        ]

    async def stats(self) -> QueueStats:
        queued: dict[str, tuple[int, float]] = {}
        job_items: dict[tuple[str, str], int] = {}
        for r in await self.pool.fetch(Q["stats"]):
            if r["state"] is None:
                queued[r["function"]] = (r["n"], r["oldest_s"])
            else:
                job_items[(r["function"], r["state"])] = r["n"]
        return QueueStats(queued, job_items)

    async def get(self, id: uuid.UUID) -> asyncpg.Record | None:
        return await self.pool.fetchrow(Q["get"], id)

    async def find(
        self, function: str | None, status: str | None, limit: int
    ) -> list[asyncpg.Record]:
        return list(await self.pool.fetch(Q["list"], function, status, limit))

    async def retain(self, days: int) -> int:
        """Delete finished rows and jobs older than `days`; returns the rows deleted."""
        deleted = 0
        while True:
            status = await self.pool.execute(Q["retain"], days)
            n = int(status.split()[-1])
            deleted += n
            if n < 10_000:
                break
        status = await self.pool.execute(Q["retain_jobs"], days)
        return deleted + int(status.split()[-1])

    async def redrive(self, id: uuid.UUID) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            done = await conn.fetchrow(Q["redrive"], id)
            if done is not None:
                await conn.execute(Q["notify"], Lane(done["function"], done["job_id"]).encode())
        return done is not None

    async def claim_callbacks(self, limit: int, lease_s: float) -> list[asyncpg.Record]:
        return list(await self.pool.fetch(Q["claim_callbacks"], limit, lease_s))

    async def callback_done(self, id: uuid.UUID, state: str, next_at: datetime | None) -> None:
        await self.pool.execute(Q["callback_done"], id, state, next_at)
