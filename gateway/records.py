"""Invocation records: appended in memory on the hot path, written to Postgres in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable
from itertools import islice
from typing import NamedTuple

import asyncpg

log = logging.getLogger("kapal.gateway.records")

# Records kept in memory while Postgres is unreachable; older ones are dropped past it.
MAX_PENDING = 100_000
MAX_PATH = 512


class InvocationRecord(NamedTuple):
    """One invocation, as the hot path has it: bytes and numbers, nothing converted.

    A batch is written as COPY text into a per-session staging table and moved into
    `invocation_records` by Postgres (`to_timestamp`, the uuid parse): building uuid and
    datetime objects per request cost the gateway about twice as much CPU.
    """

    id: bytes  # 32 hex digits
    function: str
    version: int
    trigger: str  # http | async | webhook | job | schedule
    method: bytes
    target: bytes  # the request target; the query is cut off when written
    status: int
    tier: str  # the cold-start tier; "" when warm
    instance: str
    started_at: float  # seconds since the epoch
    duration_ms: float
    wait_ms: float  # queued for a slot, cold start included
    init_ms: float  # of that wait, starting the instance it got
    parent: bytes  # the async invocation (32 hex digits) an attempt belongs to, or b""


COLUMNS = (
    "id, function, version, trigger, method, path, status, tier, instance, started_at,"
    " duration_ms, wait_ms, init_ms, parent"
)
STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS invocation_records_in ("
    " id uuid, function text, version integer, trigger text, method text, path text,"
    " status integer, tier text, instance text, started_at double precision,"
    " duration_ms double precision, wait_ms double precision, init_ms double precision,"
    " parent uuid) ON COMMIT DELETE ROWS"
)
MOVE = (
    f"INSERT INTO invocation_records ({COLUMNS})"
    " SELECT id, function, version, trigger, method, path, status, tier, instance,"
    " to_timestamp(started_at), duration_ms, wait_ms, init_ms, parent"
    " FROM invocation_records_in"
)


# What COPY's text format would read as a delimiter or an escape.
_SPECIAL = re.compile(rb"[\\\t\n\r]")
_ESCAPES = {b"\\": b"\\\\", b"\t": b"\\t", b"\n": b"\\n", b"\r": b"\\r"}


def _escape(m: re.Match[bytes]) -> bytes:
    return _ESCAPES[m.group()]


def copy_text(batch: list[InvocationRecord]) -> bytes:
    """The batch in COPY's text format (tab-separated, backslash escapes)."""
    lines = []
    for r in batch:
        path = r.target.split(b"?", 1)[0][:MAX_PATH]
        if not path.isascii():  # kept as it was read, one character per byte
            path = path.decode("latin-1").encode()
        if _SPECIAL.search(path):
            path = _SPECIAL.sub(_escape, path)
        lines.append(
            b"%s\t%s\t%d\t%s\t%s\t%s\t%d\t%s\t%s\t%r\t%r\t%r\t%r\t%s\n"
            % (
                r.id,
                r.function.encode(),
                r.version,
                r.trigger.encode(),
                r.method,
                path,
                r.status,
                r.tier.encode() or b"\\N",
                r.instance.encode(),
                r.started_at,
                r.duration_ms,
                r.wait_ms,
                r.init_ms,
                r.parent or b"\\N",
            )
        )
    return b"".join(lines)


Fold = Callable[[Iterable[InvocationRecord]], None]


class Recorder:
    """Records kept in `pending` until flushed; `fold` (the metrics) sees each one once,
    before its flush or at a scrape (`fold_pending`), whichever comes first."""

    def __init__(
        self, db: asyncpg.Pool, flush_s: float, retention_days: int, fold: Fold | None = None
    ) -> None:
        self.db = db
        self.flush_s = flush_s
        self.retention_days = retention_days
        self.fold = fold
        self.pending: list[InvocationRecord] = []
        # How many records at the start of `pending` were folded already.
        self.folded = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, record: InvocationRecord) -> None:
        self.pending.append(record)
        if len(self.pending) > MAX_PENDING:
            self._trim()

    def _trim(self) -> None:
        excess = len(self.pending) - MAX_PENDING
        if self.fold is not None and self.folded < excess:  # counted, if never stored
            self.fold(islice(self.pending, self.folded, excess))
        del self.pending[:excess]
        self.folded = max(0, self.folded - excess)

    def fold_pending(self) -> None:
        """Fold the records not folded yet (a scrape: current without waiting for a flush)."""
        if self.fold is not None and self.folded < len(self.pending):
            self.fold(islice(self.pending, self.folded, None))
            self.folded = len(self.pending)

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
        self.fold_pending()
        batch, self.pending, self.folded = self.pending, [], 0
        counts = Counter(r.function for r in batch)
        try:
            async with self.db.acquire() as conn, conn.transaction():
                await conn.execute(STAGE)
                await conn.copy_to_table(
                    "invocation_records_in", source=memoryview(copy_text(batch)), format="text"
                )
                await conn.execute(MOVE)
                await conn.execute(
                    "UPDATE functions f SET invocations = f.invocations + c.n"
                    " FROM unnest($1::text[], $2::bigint[]) AS c(name, n) WHERE f.name = c.name",
                    list(counts),
                    list(counts.values()),
                )
        except asyncpg.DataError as e:  # never accepted, however often retried
            log.error("invocation records dropped", extra={"error": str(e), "count": len(batch)})
        except (OSError, asyncpg.PostgresError) as e:
            log.warning("writing invocation records failed; will retry", extra={"error": str(e)})
            self.pending[:0] = batch
            self.folded += len(batch)

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
