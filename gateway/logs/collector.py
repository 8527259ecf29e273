"""Pulling every instance's lines from its runtime's log port, on the leading gateway.

How lines leave a container, and why this way: the runtime tags each line itself (it
knows which request a handler thread or task serves) and keeps it until a gateway has
stored it; the gateway asks (`GET /_/logs?after=N&wait=S`, a long poll on port 8081) and
the ask acknowledges everything up to N. The alternative, following each container's
engine log stream, makes dockerd frame, write and re-read every line, loses the request
ids unless lines carry them in-band, and loses the last lines of a container removed
before its stream is read. Pulling keeps the gateway the only one connecting (function
networks cannot open connections to the host), works the same for a task on another
node, and a chatty function's formatting cost stays in its own container (its own CPU
limit). One gateway collects (the one that scales the pools); a gateway that takes over
reads where the last stopped from `log_cursors`.

Caps: the runtime cuts each invocation's output (and each line); here each function gets
a rate of lines a second, and what passes it is dropped and counted, with a marker line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import asyncpg

from gateway.logs import engine
from gateway.logs.writer import LogWriter
from scheduler.pool import Instance, InstanceState
from scheduler.scheduler import Scheduler

log = logging.getLogger("kapal.gateway.logs")

LOG_PORT = 8081
# A long poll's hold, and what is asked of a stopping instance (it ends the poll sooner).
WAIT_S = 20.0
STOPPING_WAIT_S = 0.5
# Most bytes asked for in one poll, and most accepted (a runtime is not trusted).
LIMIT_BYTES = 1024 * 1024
MAX_BODY = 4 * LIMIT_BYTES
# A stopping instance is followed at most this long after it left its pool.
LINGER_S = 60.0
SCAN_S = 0.25


@dataclass
class _Budget:
    """A function's token bucket of lines, and what it dropped since the last marker."""

    tokens: float
    at: float
    dropped: int = 0
    marked: float = 0.0


class LogCollector:
    def __init__(
        self,
        scheduler: Scheduler,
        writer: LogWriter,
        db: asyncpg.Pool,
        rate_lines_s: float,
        dropped: Callable[[str, str, int], None] | None = None,
        port: int = LOG_PORT,
        engine_logs: engine.EngineLogs | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.writer = writer
        self.db = db
        self.rate = rate_lines_s
        # Told (function, reason, lines) of lines dropped by a cap: runtime, rate.
        self.dropped = dropped
        self.port = port
        # Where an image function's lines are read (it has no log port).
        self.engine_logs = engine_logs
        self._follows: dict[str, asyncio.Task[None]] = {}
        self._budgets: dict[str, _Budget] = {}
        self._session: aiohttp.ClientSession | None = None

    async def run(self, stop: asyncio.Event) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
            auto_decompress=False,
        )
        try:
            while not stop.is_set():
                if self.scheduler.leading:
                    self._scan()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), SCAN_S)
        finally:
            for task in self._follows.values():
                task.cancel()
            await asyncio.gather(*self._follows.values(), return_exceptions=True)
            self._follows.clear()
            await self._session.close()

    def _scan(self) -> None:
        # Every version's instances, those of a split's versions and those draining too.
        for pool in self.scheduler.all_pools():
            for inst in list(pool.instances.values()):
                if inst.address and inst.id not in self._follows:
                    self._follows[inst.id] = asyncio.create_task(
                        self._follow_then_forget(inst), name=f"logs-{inst.id}"
                    )

    def _present(self, inst: Instance) -> bool:
        return inst.state is not InstanceState.STOPPING and any(
            pool.instances.get(inst.id) is inst for pool in self.scheduler.all_pools()
        )

    async def _follow_then_forget(self, inst: Instance) -> None:
        try:
            if inst.spec.from_image:
                await self._follow_engine(inst)
            else:
                await self._follow(inst)
        except Exception:
            log.exception("following instance logs failed", extra={"instance": inst.id})
        finally:
            self._follows.pop(inst.id, None)

    async def _follow(self, inst: Instance) -> None:
        assert self._session is not None
        function, version = inst.spec.name, inst.spec.version
        # A forked worker's log port is two past the one before (runtime zygote.py).
        port = self.port + 2 * inst.worker
        url = f"http://{inst.address.rsplit(':', 1)[0]}:{port}/_/logs"
        after = await self._cursor(inst.id)
        reported = 0
        failures = 0
        left_at = 0.0
        while self.scheduler.leading:
            present = self._present(inst)
            if not present:
                left_at = left_at or time.monotonic()
                if time.monotonic() - left_at > LINGER_S:
                    return
            wait = WAIT_S if present else STOPPING_WAIT_S
            try:
                async with self._session.get(
                    url,
                    params={"after": str(after), "wait": str(wait), "limit": str(LIMIT_BYTES)},
                    timeout=aiohttp.ClientTimeout(total=wait + 10, connect=2),
                ) as r:
                    if r.status != 200:
                        raise ValueError(f"log port answered {r.status}")
                    # Whole rows or nothing: the length is known before reading.
                    if r.content_length is None or r.content_length > MAX_BODY:
                        raise ValueError(f"log answer of {r.content_length} bytes refused")
                    body = await r.read()
                    last = int(r.headers["X-Kapal-Log-Last"])
                    total_dropped = int(r.headers.get("X-Kapal-Log-Dropped", "0"))
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as e:
                if not self._present(inst):
                    return  # the container is gone, and what it had with it
                failures += 1
                if failures == 5:
                    log.info(
                        "instance logs not reachable yet",
                        extra={"function": function, "instance": inst.id, "error": str(e)},
                    )
                await asyncio.sleep(min(2.0, 0.05 * failures))
                continue
            failures = 0
            if total_dropped > reported:
                if self.dropped is not None:
                    self.dropped(function, "runtime", total_dropped - reported)
                reported = total_dropped
            if not self.scheduler.leading:
                return  # another gateway collects now; it asks for these again
            rows = self._within_rate(function, version, inst.id, body) if body else b""
            if rows:
                await self.writer.store(function, version, inst.id, rows, last)
            after = max(after, last)

    async def _follow_engine(self, inst: Instance) -> None:
        if self.engine_logs is None or not inst.container_id:
            return
        function, version = inst.spec.name, inst.spec.version

        async def store(rows: bytes, last: int) -> None:
            rows = self._within_rate(function, version, inst.id, rows)
            if rows:
                await self.writer.store(function, version, inst.id, rows, last)

        # Until its container is gone (its log ends then), or another gateway collects.
        def leading() -> bool:
            return self.scheduler.leading

        after = await self._cursor(inst.id)
        await engine.follow(self.engine_logs, inst.container_id, after, store, leading)

    async def _cursor(self, instance: str) -> int:
        try:
            seq = await self.db.fetchval(
                "SELECT seq FROM log_cursors WHERE instance = $1", instance
            )
        except (OSError, asyncpg.PostgresError):
            return 0
        return int(seq or 0)

    def _within_rate(self, function: str, version: int, instance: str, rows: bytes) -> bytes:
        """The rows a function's rate allows now; the rest dropped, counted and marked."""
        if self.rate <= 0:
            return rows
        now = time.monotonic()
        b = self._budgets.get(function)
        if b is None:
            b = self._budgets[function] = _Budget(self.rate, now)
        b.tokens = min(self.rate, b.tokens + (now - b.at) * self.rate)
        b.at = now
        n = rows.count(b"\n")
        if n <= b.tokens:
            b.tokens -= n
            return rows
        keep = int(b.tokens)
        b.tokens -= keep
        cut = 0
        for _ in range(keep):
            cut = rows.index(b"\n", cut) + 1
        b.dropped += n - keep
        if self.dropped is not None:
            self.dropped(function, "rate", n - keep)
        if now - b.marked >= 1.0:
            self.writer.event(
                function,
                version,
                instance,
                f"{b.dropped} log lines dropped: over the rate of {self.rate:g} lines/s",
                "warning",
            )
            b.dropped, b.marked = 0, now
        return rows[:cut]
