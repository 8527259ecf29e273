"""`GET /metrics`: this gateway's state as Prometheus metric families, read at scrape time.

Values come from Kapal's own state, through a custom collector: the counts of
`gateway.metrics` (invocation records folded off the hot path, rejections, retries), the
scheduler's pools, and one grouped query of the queue, cached for `QUEUE_TTL_S` so that a
fast scraper does not keep Postgres busy. `prometheus_client` writes the exposition.

Each gateway process exposes its own numbers: a scrape target per gateway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from gateway.keys import Scope
from gateway.metrics import Buckets, Metrics
from gateway.queue.store import QueueStats
from gateway.routing import Content, Route
from scheduler.scheduler import Scheduler

if TYPE_CHECKING:
    from gateway.services import Services

log = logging.getLogger("kapal.gateway.metrics")

# A scrape within this many seconds of the last queue query reuses its answer.
QUEUE_TTL_S = 1.0
# A queue query that takes longer is given up (the queue families are left out).
QUEUE_TIMEOUT_S = 2.0
# Instance states always reported (zero when none): busy is ready with requests in flight.
INSTANCE_STATES = ("starting", "ready", "busy", "paused", "draining")


class Records(Protocol):
    def fold_pending(self) -> None:
        """Fold the invocation records not yet folded into the metrics."""
        ...


class CachedQueueStats:
    """The queue's stats, queried at most once per `ttl_s`; None when the query failed."""

    def __init__(
        self,
        query: Callable[[], Awaitable[QueueStats]],
        ttl_s: float = QUEUE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.query = query
        self.ttl_s = ttl_s
        self.clock = clock
        self.stats: QueueStats | None = None
        self._at: float | None = None
        # Scrapes arriving together wait for one query.
        self._lock = asyncio.Lock()

    async def get(self) -> QueueStats | None:
        async with self._lock:
            if self._at is not None and self.clock() - self._at < self.ttl_s:
                return self.stats
            try:
                self.stats = await asyncio.wait_for(self.query(), QUEUE_TIMEOUT_S)
            except (OSError, TimeoutError, asyncpg.PostgresError) as e:
                log.warning("queue metrics not read", extra={"error": str(e)})
                self.stats = None
            # A failure is cached too: a database in trouble is not asked every scrape.
            self._at = self.clock()
            return self.stats


class Exporter:
    """The registry of one gateway: Kapal's families and the process's own."""

    def __init__(
        self, metrics: Metrics, records: Records, scheduler: Scheduler, queue: CachedQueueStats
    ) -> None:
        self.metrics = metrics
        self.records = records
        self.scheduler = scheduler
        self.queue = queue
        self._queue_stats: QueueStats | None = None
        self.registry = CollectorRegistry()
        self.registry.register(self)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    async def scrape(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format `accept` asks for, and its content type."""
        self._queue_stats = await self.queue.get()
        # After the last await: every record added so far is counted, none twice.
        self.records.fold_pending()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def collect(self) -> Iterator[Metric]:
        yield from self._invocations()
        yield from self._pools()
        yield from self._queue()
        yield from self._gateway()

    def _invocations(self) -> Iterator[Metric]:
        tally = self.metrics.invocations
        calls = CounterMetricFamily(
            "kapal_invocations",
            "Invocations answered, by status class (2xx, 5xx, ...).",
            labels=["function", "trigger", "status"],
        )
        for function, trigger, status, n in tally.invocations():
            calls.add_metric([function, trigger, status], n)
        yield calls
        duration = HistogramMetricFamily(
            "kapal_invocation_duration_seconds",
            "Time from a request's arrival to its answer's end, waits and cold starts included.",
            labels=["function", "trigger"],
        )
        wait = HistogramMetricFamily(
            "kapal_invocation_wait_seconds",
            "Time a request waited for an instance slot (cold starts included).",
            labels=["function", "trigger"],
        )
        for function, triggers in tally.series.items():
            for trigger, s in triggers.items():
                _add_histogram(duration, [function, trigger], s.duration)
                _add_histogram(wait, [function, trigger], s.wait)
        yield duration
        yield wait
        cold = CounterMetricFamily(
            "kapal_cold_starts",
            "Requests that waited for an instance to come up, by the tier it came from.",
            labels=["function", "tier"],
        )
        for (function, tier), n in tally.cold_starts.items():
            cold.add_metric([function, tier], n)
        yield cold
        yield _counter(
            "kapal_rejections",
            "Requests turned away: buffer_full, wait_timeout, busy (503); rate_limit,"
            " key_rate_limit (429).",
            ["function", "reason"],
            self.metrics.rejections,
        )

    def _pools(self) -> Iterator[Metric]:
        instances = GaugeMetricFamily(
            "kapal_instances",
            "Instances this gateway routes to, by state (busy: ready with requests in flight"
            " here).",
            labels=["function", "state"],
        )
        waiting = GaugeMetricFamily(
            "kapal_requests_waiting",
            "Requests waiting at this gateway for an instance slot.",
            labels=["function"],
        )
        for function in list(self.scheduler.pools):
            states = Counter(
                "busy" if i.state == "ready" and i.in_flight else i.state
                for i in self.scheduler.describe(function)
            )
            for state in (*INSTANCE_STATES, *sorted(set(states) - set(INSTANCE_STATES))):
                instances.add_metric([function, state], states[state])
            status = self.scheduler.status(function)
            waiting.add_metric([function], status.waiting if status is not None else 0)
        yield instances
        yield waiting

    def _queue(self) -> Iterator[Metric]:
        m = self.metrics
        yield _counter(
            "kapal_async_retries",
            "Attempts of queued invocations this gateway scheduled again.",
            ["function"],
            m.async_retries,
        )
        yield _counter(
            "kapal_dead_letters",
            "Queued invocations this gateway declared dead (out of retries).",
            ["function"],
            m.dead_letters,
        )
        stats = self._queue_stats
        if stats is None:  # the database did not answer: nothing rather than stale
            return
        depth = GaugeMetricFamily(
            "kapal_queue_depth",
            "Queued async invocations (async, webhook, schedule), job items aside.",
            labels=["function"],
        )
        oldest = GaugeMetricFamily(
            "kapal_queue_oldest_age_seconds",
            "How long the oldest ready queued invocation has waited to run.",
            labels=["function"],
        )
        for function, (n, age) in stats.queued.items():
            depth.add_metric([function], n)
            oldest.add_metric([function], age)
        yield depth
        yield oldest
        items = GaugeMetricFamily(
            "kapal_job_items",
            "Items of unfinished jobs, by state.",
            labels=["function", "state"],
        )
        for (function, state), n in stats.job_items.items():
            items.add_metric([function, state], n)
        yield items

    def _gateway(self) -> Iterator[Metric]:
        m = self.metrics
        yield _counter(
            "kapal_log_lines_dropped",
            "Function log lines not kept, by reason.",
            ["function", "reason"],
            m.log_lines_dropped,
        )
        builds = HistogramMetricFamily(
            "kapal_build_duration_seconds",
            "Function image builds, by result (ok, failed).",
            labels=["result"],
        )
        for result, buckets in m.builds.items():
            _add_histogram(builds, [result], buckets)
        yield builds
        lag = HistogramMetricFamily(
            "kapal_event_loop_lag_seconds",
            "How late the event loop ran a timer (measured every 0.25 s).",
        )
        _add_histogram(lag, [], m.loop_lag)
        yield lag
        yield GaugeMetricFamily(
            "kapal_event_loop_lag_last_seconds",
            "The event loop's lag at its last measurement.",
            value=m.loop_lag_last_s,
        )
        yield GaugeMetricFamily(
            "kapal_leading",
            "1 when this gateway scales the pools (the leader), else 0.",
            value=1.0 if self.scheduler.leading else 0.0,
        )


def _add_histogram(family: HistogramMetricFamily, labels: list[str], b: Buckets) -> None:
    family.add_metric(labels, b.cumulative(), b.scaled_sum)


def _counter(
    name: str, doc: str, labels: list[str], counts: Counter[str] | Counter[tuple[str, str]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, n in counts.items():
        family.add_metric(list(key) if isinstance(key, tuple) else [key], n)
    return family


async def metrics(request: web.Request, svc: Services) -> web.Response:
    body, content_type = await svc.exporter.scrape(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


ROUTES = (
    Route(
        "GET",
        "/metrics",
        metrics,
        "this gateway's metrics, in the Prometheus text format",
        scope=Scope.METRICS,
        response=Content(
            {"text/plain": {"schema": {"type": "string"}}},
            description="the Prometheus text exposition format (OpenMetrics if asked for)",
        ),
    ),
)
