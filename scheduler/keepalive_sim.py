"""A seedable synthetic invocation trace and the keep-alive accounting over it.

The trace mixes the arrival shapes of Azure's functions ("Serverless in the Wild"):
Poisson, periodic (timers, a little jitter) and bursty (groups of close requests far
apart), at mean inter-arrival times spanning orders of magnitude. The accounting replays
each function's busy periods against one keep-alive policy, one instance per function,
and counts cold starts (a request finding no ready instance: a paused standby counts,
as Kapal reports it) and instance memory over time (limit x seconds loaded, ready or
paused). Used by the keep-alive unit test (24 simulated hours) and by `bench keepalive`
(the same trace, time scaled down, replayed against a running Kapal).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from scheduler.keepalive import IdleTracker, KeepAliveConfig, KeepAlivePolicy

KINDS = ("poisson", "periodic", "bursty")
# Mean seconds between requests: four orders of magnitude.
MEAN_GAPS_S = (1.0, 10.0, 100.0, 1000.0, 10000.0)
# The paper's histogram: 4 hours of 1-minute bins (a pre-warm a bin ahead); a standby kept
# from the start is not removed before the fixed policy's 10 minutes.
MINUTE_BINS = KeepAliveConfig(bin_s=60.0, bins=240, prewarm_lead_s=60.0, min_remove_s=600.0)


@dataclass(frozen=True)
class FunctionTrace:
    name: str
    # "poisson", "periodic" or "bursty".
    kind: str
    # Mean seconds between requests.
    mean_gap_s: float
    # Request arrival times, seconds from the start, ascending.
    arrivals: tuple[float, ...]
    # Seconds the trace lasts.
    end_s: float


def _arrivals(rng: random.Random, kind: str, mean_gap_s: float, duration_s: float) -> list[float]:
    out: list[float] = []
    if kind == "poisson":
        t = rng.expovariate(1 / mean_gap_s)
        while t < duration_s:
            out.append(t)
            t += rng.expovariate(1 / mean_gap_s)
    elif kind == "periodic":
        t = rng.uniform(0, mean_gap_s)
        while t < duration_s:
            out.append(t + rng.uniform(0, 0.02 * mean_gap_s))  # a timer fires a bit late
            t += mean_gap_s
    else:  # bursty: 4 to 12 requests a few hundredths of the gap apart, then a long gap
        t = rng.uniform(0, mean_gap_s * 8)
        while t < duration_s:
            size = rng.randint(4, 12)
            s = t
            for _ in range(size):
                if s >= duration_s:
                    break
                out.append(s)
                s += rng.expovariate(1 / max(0.05, 0.01 * mean_gap_s))
            t = s + rng.expovariate(1 / (mean_gap_s * size))
    return sorted(out)


def generate(
    seed: int,
    duration_s: float,
    mean_gaps_s: tuple[float, ...] = MEAN_GAPS_S,
    kinds: tuple[str, ...] = KINDS,
) -> list[FunctionTrace]:
    """One function per kind and mean gap, the same for the same seed."""
    rng = random.Random(seed)
    return [
        FunctionTrace(
            f"{kind}-{int(gap)}",
            kind,
            gap,
            tuple(_arrivals(rng, kind, gap, duration_s)),
            duration_s,
        )
        for kind in kinds
        for gap in mean_gaps_s
    ]


@dataclass(frozen=True)
class Tally:
    requests: int
    cold_starts: int
    # Instance memory over time: limit x seconds loaded (ready or paused).
    mib_s: float

    @property
    def cold_pct(self) -> float:
        return 100.0 * self.cold_starts / self.requests if self.requests else 0.0

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.requests + other.requests,
            self.cold_starts + other.cold_starts,
            self.mib_s + other.mib_s,
        )


@dataclass(frozen=True)
class SimConfig:
    # The user's `scaling.idle_timeout_s` (the fixed keep-alive, and the learned bound).
    idle_timeout_s: float = 600.0
    # Seconds an idle instance stays ready under the fixed policy (the autoscaler's
    # stable window) before it is paused.
    fixed_ready_s: float = 60.0
    # Seconds one request runs.
    duration_s: float = 0.1
    # Memory limit of an instance.
    memory_mib: float = 256.0
    keepalive: KeepAliveConfig = MINUTE_BINS


def replay(trace: FunctionTrace, policy: KeepAlivePolicy, config: SimConfig) -> Tally:
    """Cold starts and MiB·s of one function under one policy."""
    tracker = IdleTracker(config.keepalive)
    cold = 0
    loaded_s = 0.0
    busy_until: float | None = None
    for t in trace.arrivals:
        if busy_until is not None and t < busy_until:  # still busy: warm, busy longer
            loaded_s += max(0.0, t + config.duration_s - busy_until)
            busy_until = max(busy_until, t + config.duration_s)
            tracker.went_idle(busy_until)
            continue
        if busy_until is None:  # the very first request
            cold += 1
        else:
            gap = t - busy_until
            ready_s, prewarm_s, remove_s = _windows(tracker, policy, config)
            if not prewarm_s <= gap < ready_s:
                cold += 1
            loaded_s += max(0.0, min(gap, remove_s) - prewarm_s)
            tracker.arrived(t)
        loaded_s += config.duration_s
        busy_until = t + config.duration_s
        tracker.went_idle(busy_until)
    if busy_until is not None and busy_until < trace.end_s:  # idle until the trace ends
        ready_s, prewarm_s, remove_s = _windows(tracker, policy, config)
        loaded_s += max(0.0, min(trace.end_s - busy_until, remove_s) - prewarm_s)
    return Tally(len(trace.arrivals), cold, loaded_s * config.memory_mib)


def _windows(
    tracker: IdleTracker, policy: KeepAlivePolicy, config: SimConfig
) -> tuple[float, float, float]:
    """(ready until, pre-warmed at, removed at), seconds after going idle."""
    fixed = config.fixed_ready_s, 0.0, config.idle_timeout_s
    if policy is KeepAlivePolicy.FIXED:
        return fixed
    w = tracker.windows(config.idle_timeout_s)
    return (w.pause_s, w.prewarm_s, w.remove_s) if w.learned else fixed


def replay_all(traces: list[FunctionTrace], policy: KeepAlivePolicy, config: SimConfig) -> Tally:
    total = Tally(0, 0, 0.0)
    for trace in traces:
        total = total + replay(trace, policy, config)
    return total
