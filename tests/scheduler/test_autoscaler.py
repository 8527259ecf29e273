"""The scaling decision, driven by a hand-moved clock."""

from __future__ import annotations

from scheduler.autoscaler import (
    AutoscalerConfig,
    ConcurrencyWindow,
    ScaleDecision,
    ScaleInputs,
    ScalerState,
    decide,
)

CONFIG = AutoscalerConfig()


def inputs(
    stable: float,
    panic: float,
    ready: int,
    concurrency: int = 10,
    lo: int = 0,
    hi: int = 100,
    current: float = 0.0,
) -> ScaleInputs:
    return ScaleInputs(stable, panic, current, ready, concurrency, lo, hi)


def test_desired_is_observed_over_target_utilization() -> None:
    d = decide(0.0, inputs(stable=21, panic=21, ready=3), ScalerState(), CONFIG)
    assert d == ScaleDecision(3, False, ScalerState(None, 3))  # 21 / (10 * 0.7) = 3
    d = decide(0.0, inputs(stable=22, panic=22, ready=3), ScalerState(), CONFIG)
    assert d.desired == 4


def test_bounded_by_min_and_max() -> None:
    assert decide(0.0, inputs(0, 0, 0, lo=2), ScalerState(), CONFIG).desired == 2
    assert decide(0.0, inputs(500, 500, 50, hi=20), ScalerState(), CONFIG).desired == 20


def test_no_traffic_scales_to_zero() -> None:
    assert decide(0.0, inputs(0, 0, 0), ScalerState(), CONFIG).desired == 0


def test_scale_down_at_most_by_half_per_decision() -> None:
    state = ScalerState()
    d = decide(0.0, inputs(stable=0, panic=0, ready=8), state, CONFIG)
    assert d.desired == 4
    d = decide(2.0, inputs(stable=0, panic=0, ready=4), d.state, CONFIG)
    assert d.desired == 2


def test_burst_panics_scales_up_at_once_and_never_down_while_panicking() -> None:
    state = ScalerState()
    # Stable average still low, but the last seconds want 10 instances with 1 ready.
    d = decide(0.0, inputs(stable=5, panic=70, ready=1), state, CONFIG)
    assert d.panic and d.desired == 10
    # The burst ends: the panic window drops, but panic holds the count.
    d = decide(10.0, inputs(stable=20, panic=0, ready=10), d.state, CONFIG)
    assert d.panic and d.desired == 10
    # A stable window after panic began, it ends and the stable view takes over (halving).
    d = decide(61.0, inputs(stable=0, panic=0, ready=10), d.state, CONFIG)
    assert not d.panic and d.desired == 5


def test_panic_needs_twice_what_is_ready() -> None:
    d = decide(0.0, inputs(stable=10, panic=20, ready=2), ScalerState(), CONFIG)
    assert not d.panic  # wants 3 of 2 ready: 1.5x
    d = decide(0.0, inputs(stable=10, panic=29, ready=2), ScalerState(), CONFIG)
    assert d.panic and d.desired == 5  # wants 5 of 2 ready: 2.5x


def test_window_averages_only_recent_samples() -> None:
    w = ConcurrencyWindow(horizon_s=60)
    for t in range(60):
        w.record(float(t), 10.0 if t >= 54 else 0.0)
    assert w.average(59.0, 6.0) == 10.0
    assert w.average(59.0, 60.0) == 1.0
    assert w.peak(59.0, 60.0) == 10.0
    w.record(200.0, 1.0)
    assert len(w.samples) == 1


def test_a_step_counts_at_once_through_the_latest_observation() -> None:
    # The panic window has barely seen the step (average 8), the latest sample says 64.
    d = decide(0.0, inputs(stable=1, panic=8, ready=1, current=64), ScalerState(), CONFIG)
    assert d.panic and d.desired == 10  # ceil(64 / 7)
