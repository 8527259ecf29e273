"""Metrics without a gateway: records folded once each, buckets, the exposition itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import records
from gateway.exporter import CachedQueueStats, Exporter
from gateway.metrics import Buckets, Metrics
from gateway.queue.store import QueueStats
from gateway.records import InvocationRecord, Recorder
from scheduler.scheduler import Scheduler


def record(
    function: str = "f",
    status: int = 200,
    duration_ms: float = 0.3,
    *,
    trigger: str = "http",
    tier: str = "",
    wait_ms: float = 0.0,
) -> InvocationRecord:
    return InvocationRecord(
        b"0" * 32,
        function,
        1,
        trigger,
        b"GET",
        b"/",
        status,
        tier,
        "i1",
        time.time(),
        duration_ms,
        wait_ms,
        0.0,
        b"",
    )


class FakeConn:
    def __init__(self, db: FakeDb) -> None:
        self.db = db

    def transaction(self) -> FakeConn:
        return self

    async def __aenter__(self) -> FakeConn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def execute(self, sql: str, *args: Any) -> None:
        return None

    async def copy_to_table(self, table: str, source: Any, format: str) -> None:
        self.db.written += bytes(source).count(b"\n")


class FakeDb:
    """Writes succeed, or fail with `fail`; `during` runs while a write is under way."""

    def __init__(self) -> None:
        self.written = 0
        self.fail: BaseException | None = None
        self.during: Callable[[], None] | None = None

    def acquire(self) -> FakeDb:
        return self

    async def __aenter__(self) -> FakeConn:
        await asyncio.sleep(0)
        if self.during is not None:
            self.during()
        if self.fail is not None:
            raise self.fail
        return FakeConn(self)

    async def __aexit__(self, *exc: object) -> None:
        return None


def counted(metrics: Metrics, function: str = "f") -> int:
    return sum(n for f, _, _, n in metrics.invocations.invocations() if f == function)


@pytest.fixture
def db() -> FakeDb:
    return FakeDb()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def recorder(db: FakeDb, metrics: Metrics) -> Recorder:
    return Recorder(cast(asyncpg.Pool, db), 3600.0, 7, fold=metrics.invocations.fold)


async def test_a_scrape_counts_pending_records_and_a_flush_does_not_count_them_again(
    recorder: Recorder, metrics: Metrics, db: FakeDb
) -> None:
    for _ in range(3):
        recorder.add(record())
    recorder.fold_pending()
    assert counted(metrics) == 3
    recorder.fold_pending()  # a second scrape with nothing new
    assert counted(metrics) == 3
    recorder.add(record())
    await recorder.flush()
    assert counted(metrics) == 4 and db.written == 4
    recorder.fold_pending()
    assert counted(metrics) == 4


async def test_a_failed_write_puts_back_records_that_were_counted(
    recorder: Recorder, metrics: Metrics, db: FakeDb
) -> None:
    for _ in range(5):
        recorder.add(record())
    recorder.fold_pending()

    def meanwhile() -> None:
        # Requests answered and a scrape while the write is under way.
        recorder.add(record())
        recorder.add(record())
        recorder.fold_pending()
        recorder.add(record())

    db.fail, db.during = OSError("connection refused"), meanwhile
    await recorder.flush()
    assert len(recorder.pending) == 8 and db.written == 0
    recorder.fold_pending()
    assert counted(metrics) == 8
    db.fail, db.during = OSError("still down"), None
    await recorder.flush()  # the retry fails too
    assert counted(metrics) == 8
    db.fail = None
    await recorder.flush()
    recorder.fold_pending()
    assert counted(metrics) == 8 and db.written == 8 and recorder.pending == []


async def test_a_batch_the_database_refuses_was_counted_once(
    recorder: Recorder, metrics: Metrics, db: FakeDb
) -> None:
    recorder.add(record())
    db.fail = asyncpg.DataError("bad")
    await recorder.flush()
    recorder.fold_pending()
    assert recorder.pending == [] and counted(metrics) == 1


def test_records_dropped_past_the_cap_are_counted_once(
    recorder: Recorder, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(records, "MAX_PENDING", 4)
    for _ in range(3):
        recorder.add(record())
    recorder.fold_pending()  # 3 counted
    for _ in range(4):  # 7 added: the 3 oldest go, counted already
        recorder.add(record())
    assert len(recorder.pending) == 4 and recorder.folded == 0
    for _ in range(2):  # 2 more go, never counted before
        recorder.add(record())
    assert len(recorder.pending) == 4
    recorder.fold_pending()
    assert counted(metrics) == 9


async def test_ten_calls_are_ten_more_at_once(recorder: Recorder, metrics: Metrics) -> None:
    recorder.add(record())
    await recorder.flush()
    recorder.fold_pending()
    before = counted(metrics)
    for _ in range(10):
        recorder.add(record())
    recorder.fold_pending()
    assert counted(metrics) - before == 10


def test_records_fold_by_function_trigger_status_class_and_tier(metrics: Metrics) -> None:
    tally = metrics.invocations
    tally.fold(
        [
            record(status=200),
            record(status=204, trigger="async", tier="prewarm", wait_ms=20.0),
            record(status=503),
            record("g", status=404, tier="new"),
        ]
    )
    assert sorted(tally.invocations()) == [
        ("f", "async", "2xx", 1),
        ("f", "http", "2xx", 1),
        ("f", "http", "5xx", 1),
        ("g", "http", "4xx", 1),
    ]
    assert tally.cold_starts == {("f", "prewarm"): 1, ("g", "new"): 1}
    wait = tally.series["f"]["async"].wait
    assert wait.count == 1 and wait.scaled_sum == pytest.approx(0.02)


def test_buckets_are_cumulative_in_seconds() -> None:
    b = Buckets((0.001, 0.01), scale=0.001)  # observed in ms
    for ms in (0.5, 1.0, 5.0, 50.0):
        b.observe(ms)
    assert b.cumulative() == [("0.001", 2.0), ("0.01", 3.0), ("+Inf", 4.0)]
    assert b.scaled_sum == pytest.approx(0.0565)


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Any], sample: str, **labels: str) -> float | None:
    base = sample.removesuffix("_total").removesuffix("_bucket")
    base = base.removesuffix("_count").removesuffix("_sum")
    for s in fams[base].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return None


class Stats:
    def __init__(self) -> None:
        self.calls = 0
        self.fail: BaseException | None = None

    async def __call__(self) -> QueueStats:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return QueueStats({"f": (3, 1.5)}, {("f", "succeeded"): 7, ("f", "queued"): 2})


@pytest.fixture
async def exporter(
    recorder: Recorder, metrics: Metrics
) -> AsyncIterator[tuple[Exporter, Stats, list[float]]]:
    stats, now = Stats(), [100.0]
    scheduler = Scheduler(cast(Any, None))
    yield (
        Exporter(metrics, recorder, scheduler, CachedQueueStats(stats, clock=lambda: now[0])),
        stats,
        now,
    )


async def test_the_exposition_parses_and_shows_what_was_counted(
    exporter: tuple[Exporter, Stats, list[float]], recorder: Recorder, metrics: Metrics
) -> None:
    exp, _, _ = exporter
    for _ in range(10):
        recorder.add(record(duration_ms=2.0))
    recorder.add(record(tier="paused"))
    metrics.rejections[("f", "buffer_full")] += 2
    metrics.async_retries["f"] += 1
    metrics.log_lines_dropped[("f", "rate")] += 5
    metrics.build_took(3.0, ok=True)
    body, content_type = await exp.scrape(None)
    assert content_type.startswith("text/plain; version=0.0.4")
    fams = families(body.decode())
    assert value(fams, "kapal_invocations_total", function="f", status="2xx") == 11
    assert value(fams, "kapal_cold_starts_total", function="f", tier="paused") == 1
    le = {"function": "f", "trigger": "http"}
    assert value(fams, "kapal_invocation_duration_seconds_bucket", le="0.001", **le) == 1
    assert value(fams, "kapal_invocation_duration_seconds_bucket", le="0.0025", **le) == 11
    assert value(fams, "kapal_invocation_duration_seconds_count", **le) == 11
    assert value(fams, "kapal_rejections_total", function="f", reason="buffer_full") == 2
    assert value(fams, "kapal_async_retries_total", function="f") == 1
    assert value(fams, "kapal_log_lines_dropped_total", reason="rate") == 5
    assert value(fams, "kapal_build_duration_seconds_count", result="ok") == 1
    assert value(fams, "kapal_queue_depth", function="f") == 3
    assert value(fams, "kapal_queue_oldest_age_seconds", function="f") == 1.5
    assert value(fams, "kapal_job_items", function="f", state="succeeded") == 7
    assert value(fams, "kapal_leading") == 0
    assert "process_cpu_seconds" in fams or "python_info" in fams


async def test_openmetrics_when_asked_for(exporter: tuple[Exporter, Stats, list[float]]) -> None:
    body, content_type = await exporter[0].scrape("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


async def test_the_queue_is_asked_at_most_once_a_second(
    exporter: tuple[Exporter, Stats, list[float]],
) -> None:
    exp, stats, now = exporter
    await asyncio.gather(*(exp.scrape(None) for _ in range(5)))
    assert stats.calls == 1
    now[0] += 0.5
    await exp.scrape(None)
    assert stats.calls == 1
    now[0] += 0.6
    stats.fail = OSError("down")
    fams = families((await exp.scrape(None))[0].decode())
    assert stats.calls == 2
    # Nothing rather than stale numbers; the rest is still there.
    assert "kapal_queue_depth" not in fams and "kapal_invocations" in fams
    await exp.scrape(None)  # a failure is not retried at every scrape either
    assert stats.calls == 2


async def test_a_blocked_event_loop_shows_as_lag(metrics: Metrics) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(metrics.watch_loop_lag(stop))
    await asyncio.sleep(0.05)
    time.sleep(0.4)  # noqa: ASYNC251 -- blocking the loop past its next wake-up is the point
    await asyncio.sleep(0.05)
    stop.set()
    await task
    assert metrics.loop_lag.count >= 1
    assert metrics.loop_lag_last_s >= 0.1
