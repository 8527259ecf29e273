"""Function log lines into Postgres, grouped: pulled batches COPYed as they came, events.

Lines arrive from the collector as the runtime sent them, already in COPY's text format
(`seq, ts, stream, level, request_id, line`), so a batch goes into Postgres without the
gateway touching each line: COPY into a per-session staging table, then one INSERT…SELECT
that adds the function, version and instance the collector vouches for. A chunk Postgres
refuses (a runtime sent rows that do not parse) is dropped alone. Platform events (an
instance started, paused, replaced; an image built) are written beside them.

Every flush takes one number from `function_logs_batch` and stamps its rows with it, and
announces the functions it wrote (NOTIFY kapal_logs): followers on any gateway read the
batches they have not seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

log = logging.getLogger("kapal.gateway.logs")

CHANNEL = "kapal_logs"
# Events kept while Postgres is unreachable; older ones are dropped past it.
MAX_EVENTS = 10_000
# Bytes of pulled lines waiting to be written before a flush is started early.
FLUSH_BYTES = 512 * 1024
COLUMNS = "function, version, instance, seq, ts, stream, level, request_id, line, batch"

STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS function_logs_in ("
    " seq bigint, ts double precision, stream text, level text, request_id text, line text"
    ") ON COMMIT DELETE ROWS"
)
# One chunk: staged rows moved (and cleared) with the instance they came from.
MOVE = (
    "WITH moved AS (DELETE FROM function_logs_in RETURNING *)"
    f" INSERT INTO function_logs ({COLUMNS})"
    " SELECT $1, $2, $3, seq, to_timestamp(ts), stream, level, request_id, line, $4 FROM moved"
)
CURSORS = (
    "INSERT INTO log_cursors (instance, seq)"
    " SELECT * FROM unnest($1::text[], $2::bigint[])"
    " ON CONFLICT (instance) DO UPDATE"
    " SET seq = GREATEST(log_cursors.seq, EXCLUDED.seq), updated_at = now()"
)
NOTIFY = f"SELECT pg_notify('{CHANNEL}', f) FROM unnest($1::text[]) AS f"


@dataclass
class Chunk:
    """Lines of one instance as its runtime sent them, and its cursor once they are stored."""

    function: str
    version: int
    instance: str
    rows: bytes
    last: int
    stored: asyncio.Future[bool] = field(repr=False)


@dataclass(frozen=True)
class Event:
    function: str
    version: int
    instance: str
    ts: float
    level: str
    text: str
    request_id: str | None = None


class LogWriter:
    def __init__(
        self,
        db: asyncpg.Pool,
        flush_s: float,
        retention_days: int,
        refused: Callable[[str, int], None] | None = None,
    ) -> None:
        self.db = db
        self.flush_s = flush_s
        self.retention_days = retention_days
        # Told how many lines of a function Postgres refused (they are dropped).
        self.refused = refused
        self._chunks: list[Chunk] = []
        self._bytes = 0
        self._events: list[Event] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def store(
        self, function: str, version: int, instance: str, rows: bytes, last: int
    ) -> bool:
        """Queue an instance's rows for the next flush; True once they are stored, False
        if Postgres refused them (they are dropped)."""
        stored: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._chunks.append(Chunk(function, version, instance, rows, last, stored))
        self._bytes += len(rows)
        if self._bytes >= FLUSH_BYTES:
            self._wake.set()
        return await stored

    def event(
        self,
        function: str,
        version: int,
        instance: str,
        text: str,
        level: str = "info",
        request_id: str | None = None,
    ) -> None:
        """A platform event in the function's log (never waits)."""
        self._events.append(
            Event(function, version, instance, time.time(), level, text, request_id)
        )
        if len(self._events) > MAX_EVENTS:
            del self._events[: len(self._events) - MAX_EVENTS]

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="kapal-logs-writer")

    async def _loop(self) -> None:
        last_retention = 0.0
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_s)
            self._wake.clear()
            await self.flush()
            if time.monotonic() - last_retention > 3600:
                last_retention = time.monotonic()
                await self._retain()

    async def flush(self) -> None:
        if not self._chunks and not self._events:
            return
        chunks, events = self._chunks, self._events
        self._chunks, self._events, self._bytes = [], [], 0
        try:
            async with self.db.acquire() as conn:
                try:
                    async with conn.transaction():
                        await self._write(conn, chunks, events)
                except asyncpg.DataError:
                    await self._write_apart(conn, chunks, events)
                    return
        except (OSError, asyncpg.PostgresError) as e:
            log.warning("writing function logs failed; will retry", extra={"error": str(e)})
            self._chunks[:0] = chunks
            self._bytes += sum(len(c.rows) for c in chunks)
            self._events[:0] = events
            await asyncio.sleep(min(self.flush_s * 4, 1.0))
            return
        for c in chunks:
            if not c.stored.done():
                c.stored.set_result(True)

    async def _write(
        self, conn: asyncpg.Connection, chunks: list[Chunk], events: list[Event]
    ) -> None:
        batch = await conn.fetchval("SELECT nextval('function_logs_batch')")
        if chunks:
            await conn.execute(STAGE)
            for c in chunks:
                # A memoryview: asyncpg would take bytes for a file name.
                source = memoryview(c.rows)
                await conn.copy_to_table("function_logs_in", source=source, format="text")
                await conn.execute(MOVE, c.function, c.version, c.instance, batch)
            cursors: dict[str, int] = {}
            for c in chunks:
                cursors[c.instance] = max(c.last, cursors.get(c.instance, 0))
            await conn.execute(CURSORS, list(cursors), list(cursors.values()))
        if events:
            await conn.copy_records_to_table(
                "function_logs",
                records=[
                    (
                        e.function,
                        e.version,
                        e.instance,
                        0,
                        datetime.fromtimestamp(e.ts, UTC),
                        "platform",
                        e.level,
                        e.request_id,
                        e.text.replace("\x00", "\\x00"),
                        batch,
                    )
                    for e in events
                ],
                columns=COLUMNS.split(", "),
            )
        functions = {c.function for c in chunks} | {e.function for e in events}
        await conn.execute(NOTIFY, sorted(functions))

    async def _write_apart(
        self, conn: asyncpg.Connection, chunks: list[Chunk], events: list[Event]
    ) -> None:
        """Each chunk on its own, so one Postgres refuses costs only its own lines."""
        for c in chunks:
            try:
                async with conn.transaction():
                    await self._write(conn, [c], [])
            except asyncpg.DataError as e:
                n = c.rows.count(b"\n")
                log.warning(
                    "function log lines refused",
                    extra={
                        "function": c.function,
                        "instance": c.instance,
                        "lines": n,
                        "error": str(e),
                    },
                )
                if self.refused is not None:
                    self.refused(c.function, n)
                # Stored as far as the cursor goes: the runtime must not send them again.
                async with conn.transaction():
                    await conn.execute(CURSORS, [c.instance], [c.last])
                c.stored.set_result(False)
            else:
                c.stored.set_result(True)
        if events:
            try:
                async with conn.transaction():
                    await self._write(conn, [], events)
            except asyncpg.DataError as e:
                log.error("platform events dropped", extra={"count": len(events), "error": str(e)})

    async def _retain(self) -> None:
        try:
            await self.db.execute(
                "DELETE FROM function_logs WHERE ts < now() - make_interval(days => $1)",
                self.retention_days,
            )
            await self.db.execute(
                "DELETE FROM log_cursors WHERE updated_at < now() - make_interval(days => $1)",
                self.retention_days,
            )
        except (OSError, asyncpg.PostgresError) as e:
            log.warning("log retention failed", extra={"error": str(e)})

    async def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush()
        for c in self._chunks:  # Postgres is gone: the runtimes keep what was not stored
            if not c.stored.done():
                c.stored.cancel()
