"""The learned keep-alive: its histogram, its windows, 24 simulated hours against the fixed
policy, and a pool driven by it on a fake clock."""

from __future__ import annotations

import math

from scheduler.autoscaler import AutoscalerConfig
from scheduler.keepalive import (
    IdleHistogram,
    IdleTracker,
    KeepAliveConfig,
    KeepAlivePolicy,
    KeepAliveWindows,
    Want,
    want,
    windows,
)
from scheduler.keepalive_sim import KINDS, SimConfig, generate, replay, replay_all
from scheduler.pool import InstanceState, Pool
from scheduler.scaler import Scaler
from scheduler.scheduler import Scheduler
from tests.scheduler.test_pool import FakeBackend, FakeClock, ready_at_once, spec

SECONDS = KeepAliveConfig(bin_s=1.0, bins=60, min_samples=4, prewarm_lead_s=1.0, min_remove_s=0.0)


def hist_of(*idle_s: float, config: KeepAliveConfig = SECONDS) -> IdleHistogram:
    hist = IdleHistogram(config)
    for s in idle_s:
        hist.add(s)
    return hist


def test_percentiles_are_bin_upper_edges_and_out_of_range_is_infinite() -> None:
    hist = hist_of(*[2.5] * 90, *[7.2] * 9, 100.0)
    assert hist.percentile(5) == 3.0
    assert hist.percentile(95) == 8.0
    assert hist.percentile(100) == math.inf
    assert hist.out_of_range == 1


def test_counts_are_halved_at_the_bound_so_memory_and_weight_of_the_past_stay_bounded() -> None:
    hist = hist_of(*[1.5] * 9, config=KeepAliveConfig(bins=10, max_samples=10))
    hist.add(3.5)
    assert hist.total == 5.0
    assert hist.counts[1] == 4.5 and hist.counts[3] == 0.5
    assert len(hist.counts) == 10


def test_too_few_idle_times_fall_back_to_the_fixed_timeout() -> None:
    assert windows(hist_of(5.0, 5.0, 5.0), idle_timeout_s=30) == KeepAliveWindows(
        0.0, 0.0, 30, learned=False
    )


def test_idle_times_mostly_past_the_range_fall_back() -> None:
    w = windows(hist_of(*[5.0] * 8, *[500.0] * 2), idle_timeout_s=30)
    assert not w.learned and w.remove_s == 30


def test_idle_times_spread_evenly_fall_back() -> None:
    hist = hist_of(*[i + 0.5 for i in range(60)])
    assert hist.cv() < SECONDS.min_cv
    assert not windows(hist, idle_timeout_s=30).learned


def test_frequent_calls_keep_one_ready_from_the_start_then_pause_then_remove() -> None:
    w = windows(hist_of(*[0.5] * 50, *[3.5] * 45, *[9.5] * 5), idle_timeout_s=300)
    assert w.learned and w.prewarm_s == 0.0
    assert w.pause_s == 4.0 * 1.1  # the 90th percentile's bin, with the margin
    assert w.remove_s == 10.0 * 1.1  # the 99th's
    assert want(w, 0.0) is Want.READY
    assert want(w, 5.0) is Want.PAUSED
    assert want(w, 11.5) is Want.NONE


def test_a_standby_kept_from_the_start_stays_the_minimum_bounded_by_the_timeout() -> None:
    busy = [0.5] * 50
    floor = KeepAliveConfig(bins=60, min_remove_s=30.0)
    assert windows(hist_of(*busy, config=floor), idle_timeout_s=300).remove_s == 30.0
    assert windows(hist_of(*busy, config=floor), idle_timeout_s=10).remove_s == 10.0
    periodic = windows(hist_of(*[20.2] * 10, config=floor), idle_timeout_s=300)
    assert periodic.prewarm_s > 0 and periodic.remove_s < 30.0  # removed after each call


def test_a_periodic_function_is_removed_after_its_burst_and_prewarmed_before_the_next() -> None:
    w = windows(hist_of(*[20.2] * 10), idle_timeout_s=300)
    assert w.prewarm_s == 20 * 0.9 - 1.0
    assert want(w, 1.0) is Want.NONE
    assert want(w, 17.5) is Want.READY
    assert want(w, 20.2) is Want.READY
    assert want(w, 30.0) is Want.NONE


def test_the_user_timeout_bounds_how_long_an_instance_sits_idle_loaded() -> None:
    periodic = windows(hist_of(*[40.5] * 10), idle_timeout_s=2)
    assert periodic.learned and periodic.remove_s - periodic.prewarm_s <= 2
    poisson = windows(hist_of(*[0.5] * 50, *[30.5] * 5), idle_timeout_s=5)
    assert poisson.remove_s == 5 and poisson.pause_s <= 5


def test_the_tracker_counts_the_gap_from_the_end_of_a_busy_period_to_the_next_request() -> None:
    t = IdleTracker(SECONDS)
    t.arrived(0.0)  # never idle before: no sample
    t.went_idle(1.0)
    assert t.idle_for(4.0) == 3.0
    t.arrived(4.0)
    assert t.hist.total == 1 and t.hist.counts[3] == 1
    assert t.idle_for(5.0) is None


def test_the_trace_is_seedable_and_spans_four_orders_of_magnitude() -> None:
    a, b = generate(7, 86400), generate(7, 86400)
    assert a == b and a != generate(8, 86400)
    assert {t.kind for t in a} == set(KINDS)
    rates = [len(t.arrivals) / 86400 for t in a if t.kind == "poisson"]
    assert max(rates) / min(rates) >= 1000


def test_over_24_simulated_hours_learned_has_fewer_cold_starts_and_fewer_mib_s() -> None:
    config = SimConfig()
    for seed in (1, 2, 3):
        traces = generate(seed, 86400)
        fixed = replay_all(traces, KeepAlivePolicy.FIXED, config)
        learned = replay_all(traces, KeepAlivePolicy.LEARNED, config)
        assert fixed.requests == learned.requests
        assert learned.cold_starts < fixed.cold_starts, seed
        assert learned.mib_s < fixed.mib_s, seed


def test_a_periodic_function_every_20_minutes_is_cold_each_time_under_fixed_but_not_learned() -> (
    None
):
    config = SimConfig()
    [trace] = [t for t in generate(1, 86400, (1000.0,), ("periodic",))]
    fixed = replay(trace, KeepAlivePolicy.FIXED, config)
    learned = replay(trace, KeepAlivePolicy.LEARNED, config)
    assert fixed.cold_starts == fixed.requests
    assert learned.cold_starts <= config.keepalive.min_samples + 1
    assert learned.mib_s < fixed.mib_s / 2


# -- a pool driven by it ----------------------------------------------------------------


async def tick_for(pool: Pool, clock: FakeClock, seconds: int) -> None:
    """The scheduler's loop: a decision, then the reap, each second."""
    for _ in range(seconds):
        clock.now += 1
        pool.scaler.tick(clock.now, pool)
        pool.reap()
        await pool.drain_tasks()


def learned_pool(backend: FakeBackend, clock: FakeClock, **scaling: float) -> Pool:
    return Pool(
        spec(**scaling),  # type: ignore[arg-type]
        backend,  # type: ignore[arg-type]
        ready_at_once,
        clock=clock,
        scaler=Scaler(AutoscalerConfig()),
        keepalive=IdleTracker(SECONDS),
    )


async def test_a_learned_pool_removes_after_the_burst_and_prewarms_before_the_next_call() -> None:
    clock, backend = FakeClock(), FakeBackend()
    pool = learned_pool(backend, clock)
    colds = []
    for _ in range(7):  # a call every 20 s
        got = await pool.acquire(10**9)
        colds.append(got.cold)
        pool.release(got.instance)
        await tick_for(pool, clock, 20)
    # Learned after 4 idle times; from then on the instance is gone between calls and
    # back before each one.
    assert colds[-2:] == [False, False]
    assert len(backend.started) >= 3
    assert backend.removed
    got = await pool.acquire(10**9)
    pool.release(got.instance)
    await tick_for(pool, clock, 5)  # just after the call: nothing kept
    assert not pool.instances
    await tick_for(pool, clock, 13)  # the pre-warm window: one ready before the call
    assert [i.state for i in pool.instances.values()] == [InstanceState.READY]


async def test_a_learned_pool_with_too_little_history_keeps_the_fixed_behaviour() -> None:
    clock, backend = FakeClock(), FakeBackend()
    pool = learned_pool(backend, clock, idle_timeout_s=100)
    got = await pool.acquire(10**9)
    pool.release(got.instance)
    await tick_for(pool, clock, 61)  # the autoscaler's stable window: parked, not removed
    assert [i.state for i in pool.instances.values()] == [InstanceState.PAUSED]
    await tick_for(pool, clock, 40)  # idle past idle_timeout_s: removed
    assert not pool.instances and backend.removed == [got.instance.container_id]


async def test_a_call_while_idle_is_served_and_the_keepalive_does_not_cap_it() -> None:
    clock, backend = FakeClock(), FakeBackend()
    pool = learned_pool(backend, clock, concurrency=1)
    for _ in range(5):
        got = await pool.acquire(10**9)
        pool.release(got.instance)
        await tick_for(pool, clock, 20)
    a = await pool.acquire(10**9)
    b = await pool.acquire(10**9)  # busy: the autoscaler decides, a second one starts
    await tick_for(pool, clock, 1)
    assert a.instance is not b.instance
    assert len(pool.active()) >= 2  # the autoscaler wants 2 / 0.7 of one slot each
    pool.release(a.instance)
    pool.release(b.instance)


async def test_the_scheduler_gives_each_pool_a_tracker_only_when_learned_and_not_replicated() -> (
    None
):
    backend = FakeBackend()
    learned = Scheduler(backend, keepalive=KeepAliveConfig())  # type: ignore[arg-type]
    fixed = Scheduler(backend)  # type: ignore[arg-type]
    swarm = Scheduler(backend, keepalive=KeepAliveConfig(), replicas=backend)  # type: ignore[arg-type]
    for sched in (learned, fixed, swarm):
        sched.update([spec()])
    learned_pool_ = learned.pool("f")
    assert learned_pool_ is not None and learned_pool_.keepalive is not None
    assert [s.pool("f").keepalive for s in (fixed, swarm)] == [None, None]  # type: ignore[union-attr]


async def test_while_a_call_is_expected_the_autoscalers_instances_stay_then_they_go() -> None:
    clock, backend = FakeClock(), FakeBackend()
    pool = learned_pool(backend, clock, concurrency=1)
    for _ in range(6):  # a call every 2 s: kept from the start, paused after 3.3 s
        got = await pool.acquire(10**9)
        pool.release(got.instance)
        await tick_for(pool, clock, 2)
    burst = [await pool.acquire(10**9) for _ in range(3)]
    await tick_for(pool, clock, 1)
    for got in burst:
        pool.release(got.instance)
    await tick_for(pool, clock, 1)  # idle 1 s: a call is expected, the burst may resume
    assert pool.ready_count() >= 3
    await tick_for(pool, clock, 3)  # idle 4 s: past the windows (3.3 s), all go
    assert not pool.instances and len(backend.removed) >= 3
