"""Counts kept for `GET /metrics` that no other part keeps: plain numbers, no locks.

Everything here is bumped from the event loop, off the request's hot path: invocation
records are folded in batches (`InvocationTally.fold`, called by the `Recorder` before a
flush and at scrape time), rejections and queue decisions are counted where they are
decided, on their own (rare) paths. `gateway.exporter` turns these into metric families.

Other parts count with plain `collections.Counter`s, for example
`svc.metrics.log_lines_dropped[(function, reason)] += n`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from gateway.records import InvocationRecord

# Histogram upper bounds, in seconds. A warm call through the gateway takes ~0.2 ms.
DURATION_BOUNDS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
WAIT_BOUNDS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BUILD_BOUNDS_S = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
LAG_BOUNDS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# How often the event loop's lag is measured.
LAG_INTERVAL_S = 0.25


class Buckets:
    """A histogram as plain numbers: per-bucket counts (not cumulative) and a sum.

    `scale` converts the unit observed into the bounds' unit (records hold milliseconds).
    """

    __slots__ = ("bounds", "counts", "edges", "scale", "sum")

    def __init__(self, bounds: Sequence[float], scale: float = 1.0) -> None:
        self.bounds = tuple(bounds)
        self.scale = scale
        # Edges in the observed unit, so an observation is one bisect, no conversion.
        self.edges = tuple(b / scale for b in self.bounds)
        # One per bound, then the one above every bound (+Inf).
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0  # in the observed unit

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.edges, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, observations at or below it), as Prometheus buckets are, +Inf last."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out

    @property
    def scaled_sum(self) -> float:
        return self.sum * self.scale


class _Series:
    """What is folded for one (function, trigger)."""

    __slots__ = ("duration", "statuses", "wait")

    def __init__(self) -> None:
        # Invocations by status class: index 2 counts the 2xx.
        self.statuses = [0] * 10
        self.duration = Buckets(DURATION_BOUNDS_S, scale=0.001)
        self.wait = Buckets(WAIT_BOUNDS_S, scale=0.001)


class InvocationTally:
    """Invocation records folded into counters and histogram buckets, by function and
    trigger; cold starts by function and tier."""

    def __init__(self) -> None:
        # function -> trigger -> series: two lookups of strings the record already holds,
        # no key tuple built per record.
        self.series: dict[str, dict[str, _Series]] = {}
        self.cold_starts: Counter[tuple[str, str]] = Counter()

    def fold(self, records: Iterable[InvocationRecord]) -> None:
        series = self.series
        for _, function, _, trigger, _, _, status, tier, _, _, duration, wait, _, _ in records:
            try:
                s = series[function][trigger]
            except KeyError:
                s = series.setdefault(function, {}).setdefault(trigger, _Series())
            try:
                s.statuses[status // 100] += 1
            except IndexError:  # not a three-digit status: counted as class 0
                s.statuses[0] += 1
            # `Buckets.observe`, inlined: this runs for every invocation.
            h = s.duration
            h.counts[bisect_left(h.edges, duration)] += 1
            h.sum += duration
            h = s.wait
            if wait:
                h.counts[bisect_left(h.edges, wait)] += 1
                h.sum += wait
            else:
                h.counts[0] += 1
            if tier:
                self.cold_starts[(function, tier)] += 1

    def invocations(self) -> Iterator[tuple[str, str, str, int]]:
        """(function, trigger, status class such as "2xx", count) of every class seen."""
        for function, triggers in self.series.items():
            for trigger, s in triggers.items():
                for cls, n in enumerate(s.statuses):
                    if n:
                        yield function, trigger, f"{cls}xx", n


@dataclass
class Metrics:
    """The gateway's own counts, shared by the parts that bump them and the exporter."""

    invocations: InvocationTally = field(default_factory=InvocationTally)
    # (function, reason) -> requests turned away: buffer_full, wait_timeout, busy (503);
    # rate_limit, key_rate_limit (429).
    rejections: Counter[tuple[str, str]] = field(default_factory=Counter)
    # function -> attempts of queued invocations this gateway scheduled again.
    async_retries: Counter[str] = field(default_factory=Counter)
    # function -> queued invocations this gateway declared dead (out of retries).
    dead_letters: Counter[str] = field(default_factory=Counter)
    # (function, reason) -> function log lines not kept.
    log_lines_dropped: Counter[tuple[str, str]] = field(default_factory=Counter)
    # result ("ok" or "failed") -> image build durations.
    builds: dict[str, Buckets] = field(default_factory=dict)
    # The event loop's lag: every measurement, and the last one.
    loop_lag: Buckets = field(default_factory=lambda: Buckets(LAG_BOUNDS_S))
    loop_lag_last_s: float = 0.0

    def build_took(self, seconds: float, ok: bool) -> None:
        result = "ok" if ok else "failed"
        builds = self.builds.get(result)
        if builds is None:
            builds = self.builds[result] = Buckets(BUILD_BOUNDS_S)
        builds.observe(seconds)

    async def watch_loop_lag(self, stop: asyncio.Event) -> None:
        """Sleep `LAG_INTERVAL_S` again and again; how late each wake-up is, is the lag."""
        while not stop.is_set():
            began = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LAG_INTERVAL_S)
            if stop.is_set():
                return
            lag = max(0.0, time.monotonic() - began - LAG_INTERVAL_S)
            self.loop_lag_last_s = lag
            self.loop_lag.observe(lag)
