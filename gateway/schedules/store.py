"""Schedules in Postgres, and firing the due ones exactly once per tick."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from gateway.errors import NotFound
from gateway.queue.models import NewInvocation
from gateway.queue.store import QueueStore
from gateway.schedules.cron import Cron
from gateway.sqlfile import load

Q = load(Path(__file__).with_name("queries.sql"))
log = logging.getLogger("kapal.gateway.schedules")


@dataclass(frozen=True)
class ScheduleRow:
    id: uuid.UUID
    function: str
    cron: str
    timezone: str
    payload: Any
    next_run: datetime
    last_run: datetime | None
    created_at: datetime

    @classmethod
    def from_row(cls, r: asyncpg.Record) -> ScheduleRow:
        data = dict(r)
        data["payload"] = json.loads(data["payload"])
        return cls(**data)


class ScheduleStore:
    def __init__(self, pool: asyncpg.Pool, queue: QueueStore) -> None:
        self.pool = pool
        self.queue = queue

    async def create(
        self, function: str, cron: str, timezone: str, payload: Any, next_run: datetime
    ) -> ScheduleRow:
        row = await self.pool.fetchrow(
            Q["insert"], uuid.uuid4(), function, cron, timezone, json.dumps(payload), next_run
        )
        return ScheduleRow.from_row(row)

    async def get(self, id: uuid.UUID) -> ScheduleRow:
        row = await self.pool.fetchrow(Q["get"], id)
        if row is None:
            raise NotFound(f"schedule {id} not found")
        return ScheduleRow.from_row(row)

    async def all(self) -> list[ScheduleRow]:
        return [ScheduleRow.from_row(r) for r in await self.pool.fetch(Q["list"])]

    async def delete(self, id: uuid.UUID) -> None:
        if await self.pool.fetchval(Q["delete"], id) is None:
            raise NotFound(f"schedule {id} not found")

    async def fire_due(self, max_retries: dict[str, int], limit: int = 100) -> int:
        """Enqueue the latest missed tick of each due schedule and move it to its next tick.

        One transaction: the row lock makes one gateway fire a tick, and the tick's
        idempotency key keeps it to one invocation even if two ever did.
        """
        fired = 0
        async with self.pool.acquire() as conn, conn.transaction():
            for r in await conn.fetch(Q["due"], limit):
                cron, tz = Cron.parse(r["cron"]), ZoneInfo(r["timezone"])
                now: datetime = r["db_now"]
                tick = cron.last_at_or_before(now, r["next_run"], tz)
                if tick is not None:
                    stamp = tick.isoformat()
                    item = NewInvocation(
                        uuid.uuid4(),
                        r["function"],
                        "POST",
                        "/",
                        [
                            ("Content-Type", "application/json"),
                            ("X-Kapal-Schedule-Id", str(r["id"])),
                            ("X-Kapal-Scheduled-Time", stamp),
                        ],
                        r["payload"].encode(),
                        max_retries.get(r["function"], 0),
                        f"schedule:{r['id']}:{stamp}",
                        trigger="schedule",
                    )
                    await self.queue.enqueue_on(conn, [item])
                    fired += 1
                    log.info(
                        "schedule fired",
                        extra={"schedule": str(r["id"]), "function": r["function"], "tick": stamp},
                    )
                await conn.execute(Q["advance"], r["id"], cron.next_after(now, tz), tick)
        return fired
