"""Function log lines into a real Postgres: the writer, and the collector pulling from a
runtime's log port (here a small server speaking the same contract)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from gateway import db
from gateway.logs.collector import LogCollector
from gateway.logs.feed import BatchCursor
from gateway.logs.writer import LogWriter
from scheduler.models import FunctionSpec
from scheduler.pool import Instance, InstanceState
from tests.conftest import PostgresServer

pytestmark = pytest.mark.integration


def row(seq: int, text: str, request_id: str | None = None, stream: str = "stdout") -> bytes:
    rid = request_id if request_id is not None else "\\N"
    # Written now: older lines would be the retention's to delete.
    return f"{seq}\t{time.time():.6f}\t{stream}\t\\N\t{rid}\t{text}\n".encode()


@contextlib.asynccontextmanager
async def database(postgres: PostgresServer) -> AsyncIterator[Any]:
    pool = await db.connect(postgres.new_database())
    try:
        yield pool
    finally:
        await pool.close()


async def test_chunks_and_events_land_with_their_instance(postgres: PostgresServer) -> None:
    async with database(postgres) as pool:
        writer = LogWriter(pool, 3600.0, 7)
        first = asyncio.ensure_future(
            writer.store("f", 3, "i1", row(1, "hello") + row(2, "tab\\there", "ab" * 16), 2)
        )
        second = asyncio.ensure_future(writer.store("g", 1, "i2", row(7, "other"), 7))
        writer.event("f", 3, "i1", "instance ready (new, 250 ms)")
        await asyncio.sleep(0)
        await writer.flush()
        assert await first is True and await second is True
        rows = await pool.fetch(
            "SELECT function, version, instance, seq, stream, level, request_id, line, batch"
            " FROM function_logs ORDER BY function, seq"
        )
        lines = [(r["function"], r["instance"], r["seq"], r["line"]) for r in rows]
        assert ("f", "i1", 1, "hello") in lines
        assert ("f", "i1", 2, "tab\there") in lines
        assert ("g", "i2", 7, "other") in lines
        event = next(r for r in rows if r["stream"] == "platform")
        assert event["line"].startswith("instance ready") and event["level"] == "info"
        assert len({r["batch"] for r in rows}) == 1
        tagged = next(r for r in rows if r["seq"] == 2)
        assert tagged["request_id"] == "ab" * 16 and tagged["version"] == 3
        cursors = dict(await pool.fetch("SELECT instance, seq FROM log_cursors"))
        assert cursors == {"i1": 2, "i2": 7}


async def test_a_chunk_postgres_refuses_costs_only_its_own_lines(postgres: PostgresServer) -> None:
    async with database(postgres) as pool:
        refused: list[tuple[str, int]] = []
        writer = LogWriter(pool, 3600.0, 7, refused=lambda f, n: refused.append((f, n)))
        bad = asyncio.ensure_future(writer.store("f", 1, "i1", b"not\ta\trow\n", 5))
        good = asyncio.ensure_future(writer.store("g", 1, "i2", row(1, "fine"), 1))
        await asyncio.sleep(0)
        await writer.flush()
        assert await bad is False and await good is True
        assert refused == [("f", 1)]
        assert await pool.fetchval("SELECT count(*) FROM function_logs") == 1
        # The refused lines count as done: the runtime is not asked for them again.
        assert await pool.fetchval("SELECT seq FROM log_cursors WHERE instance = 'i1'") == 5


@dataclass
class FakeRuntime:
    """The log port of a runtime: numbered lines, freed when acknowledged."""

    lines: list[bytes] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def write(self, text: str, request_id: str | None = None) -> None:
        self.lines.append(row(len(self.lines) + 1, text, request_id))
        self.arrived.set()

    async def logs(self, request: web.Request) -> web.Response:
        after = int(request.query["after"])
        self.acks.append(after)
        if len(self.lines) <= after:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), min(0.5, float(request.query["wait"])))
        body = b"".join(self.lines[after:])
        last = max(after, len(self.lines))
        return web.Response(body=body, headers={"X-Kapal-Log-Last": str(last)})


@dataclass
class FakeScheduler:
    pools: dict[str, Any]
    leading: bool = True

    def all_pools(self) -> list[Any]:
        return list(self.pools.values())


@dataclass
class FakePool:
    instances: dict[str, Instance]


@contextlib.asynccontextmanager
async def runtime_port(fake: FakeRuntime) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/_/logs", fake.logs)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port
    finally:
        await runner.cleanup()


def instance() -> Instance:
    spec = FunctionSpec(name="f", version=1, image="img:1")
    inst = Instance("i1", spec, InstanceState.READY, 0.0, 0.0)
    inst.address = "127.0.0.1:8080"
    return inst


async def until(check: Any, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not await check():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.05)


async def test_the_collector_stores_what_the_runtime_has_and_acknowledges_it(
    postgres: PostgresServer,
) -> None:
    fake = FakeRuntime()
    async with database(postgres) as pool, runtime_port(fake) as port:
        writer = LogWriter(pool, 0.05, 7)
        writer.start()
        inst = instance()
        scheduler = FakeScheduler({"f": FakePool({"i1": inst})})
        collector = LogCollector(scheduler, writer, pool, 0, port=port)  # type: ignore[arg-type]
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run(stop))
        try:
            fake.write("one")
            fake.write("two", "cd" * 16)

            async def stored(n: int) -> bool:
                return bool(await pool.fetchval("SELECT count(*) FROM function_logs") >= n)

            await until(lambda: stored(2))
            fake.write("three")  # while the collector's poll waits
            await until(lambda: stored(3))
            await until(lambda: _true(max(fake.acks) >= 3))
            rows = await pool.fetch("SELECT seq, line, instance FROM function_logs ORDER BY seq")
            assert [(r["seq"], r["line"]) for r in rows] == [(1, "one"), (2, "two"), (3, "three")]
            assert {r["instance"] for r in rows} == {"i1"}
            # An answer of many socket reads is stored whole, not cut mid-row.
            for _ in range(3000):
                fake.write("x" * 300)
            await until(lambda: stored(3003))
            assert await pool.fetchval("SELECT count(*) FROM function_logs") == 3003
        finally:
            stop.set()
            await task
            await writer.close()

        # A gateway that takes over asks for what follows the stored cursor.
        fake.acks.clear()
        writer = LogWriter(pool, 0.05, 7)
        writer.start()
        collector = LogCollector(scheduler, writer, pool, 0, port=port)  # type: ignore[arg-type]
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run(stop))
        try:
            await until(lambda: _true(bool(fake.acks)))
            assert fake.acks[0] == 3003
        finally:
            stop.set()
            await task
            await writer.close()


async def test_a_function_over_its_rate_is_cut_and_marked(postgres: PostgresServer) -> None:
    fake = FakeRuntime()
    async with database(postgres) as pool, runtime_port(fake) as port:
        writer = LogWriter(pool, 0.05, 7)
        writer.start()
        drops: list[tuple[str, str, int]] = []
        scheduler = FakeScheduler({"f": FakePool({"i1": instance()})})
        collector = LogCollector(
            scheduler,  # type: ignore[arg-type]
            writer,
            pool,
            10,
            dropped=lambda f, why, n: drops.append((f, why, n)),
            port=port,
        )
        for n in range(50):
            fake.write(f"line {n}")
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run(stop))
        try:

            async def marked() -> bool:
                return bool(
                    await pool.fetchval(
                        "SELECT count(*) FROM function_logs WHERE stream = 'platform'"
                    )
                )

            await until(marked)
            kept = await pool.fetchval("SELECT count(*) FROM function_logs WHERE stream = 'stdout'")
            assert kept == 10
            assert drops == [("f", "rate", 40)]
            line = await pool.fetchval("SELECT line FROM function_logs WHERE stream = 'platform'")
            assert "40 log lines dropped" in line
        finally:
            stop.set()
            await task
            await writer.close()


async def _true(value: bool) -> bool:
    return value


def test_a_batch_cursor_asks_again_for_numbers_it_skipped() -> None:
    cursor = BatchCursor(10)
    assert cursor.wanted() == (10, [])
    cursor.saw({13})
    assert cursor.wanted() == (13, [11, 12])
    cursor.saw({12})
    assert cursor.wanted() == (13, [11])
    cursor.saw({10_000})
    highest, gaps = cursor.wanted()
    assert highest == 10_000 and len(gaps) == 257 and gaps[0] == 11
