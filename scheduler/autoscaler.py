"""The scaling decision, in the spirit of Knative's KPA: a pure function of inputs and `now`.

Observed concurrency (requests in flight + waiting + queued) is averaged over a stable
window and a short panic window; the latest observation also counts for the panic view,
so a step up is answered at the next decision rather than as the window fills.
Desired instances = ceil(observed / (concurrency x target utilization)), bounded by the
function's min and max. When the panic view asks for at least `panic_threshold` times
what is ready, the decider panics: it scales up at once and never down until the stable
window has passed without panic. Scale-down is at most by `max_scale_down_rate` per
decision.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class AutoscalerConfig:
    # Fraction of each instance's concurrency the scaler aims to use.
    target_utilization: float = 0.7
    # Seconds of history behind a normal decision.
    stable_window_s: float = 60.0
    # Seconds of history behind a panic decision.
    panic_window_s: float = 6.0
    # Panic when the panic window wants this many times the ready instances.
    panic_threshold: float = 2.0
    # At most divide the instances by this much per decision.
    max_scale_down_rate: float = 2.0
    # At most multiply the instances by this much per decision.
    max_scale_up_rate: float = 1000.0


class ConcurrencyWindow:
    """Samples of observed concurrency over time; averages over a trailing window."""

    def __init__(self, horizon_s: float) -> None:
        self.horizon_s = horizon_s
        self.samples: deque[tuple[float, float]] = deque()

    def record(self, now: float, value: float) -> None:
        self.samples.append((now, value))
        while self.samples and self.samples[0][0] < now - self.horizon_s:
            self.samples.popleft()

    def average(self, now: float, window_s: float) -> float:
        total, n = 0.0, 0
        for t, v in reversed(self.samples):
            if t <= now - window_s:
                break
            total += v
            n += 1
        return total / n if n else 0.0

    def latest(self) -> float:
        return self.samples[-1][1] if self.samples else 0.0

    def peak(self, now: float, window_s: float) -> float:
        return max((v for t, v in self.samples if t > now - window_s), default=0.0)


@dataclass(frozen=True)
class ScaleInputs:
    # Average observed concurrency over the stable window.
    stable_concurrency: float
    # Average observed concurrency over the panic window.
    panic_concurrency: float
    # The latest observation: a step up counts at once, not as it fills the window.
    current_concurrency: float
    # Instances ready to serve (current version).
    ready: int
    # Requests one instance serves at once.
    concurrency: int
    min_instances: int
    max_instances: int


@dataclass(frozen=True)
class ScalerState:
    # When panic mode began (None: not panicking).
    panic_since: float | None = None
    # The last desired count, which panic mode never goes below.
    last_desired: int = 0


@dataclass(frozen=True)
class ScaleDecision:
    desired: int
    panic: bool
    state: ScalerState


def decide(
    now: float, inputs: ScaleInputs, state: ScalerState, config: AutoscalerConfig
) -> ScaleDecision:
    per_instance = inputs.concurrency * config.target_utilization
    want_stable = math.ceil(inputs.stable_concurrency / per_instance)
    burst = max(inputs.panic_concurrency, inputs.current_concurrency)
    want_panic = math.ceil(burst / per_instance)
    ready = max(1, inputs.ready)

    panic_since = state.panic_since
    if want_panic / ready >= config.panic_threshold and want_panic > inputs.ready:
        panic_since = now if panic_since is None else panic_since
    elif panic_since is not None and now - panic_since >= config.stable_window_s:
        panic_since = None

    if panic_since is not None:
        desired = max(want_panic, state.last_desired)
    else:
        desired = want_stable
        if inputs.ready > 0:
            desired = max(desired, math.floor(inputs.ready / config.max_scale_down_rate))
    if inputs.ready > 0:
        desired = min(desired, math.ceil(inputs.ready * config.max_scale_up_rate))
    desired = max(inputs.min_instances, min(inputs.max_instances, desired))
    return ScaleDecision(desired, panic_since is not None, ScalerState(panic_since, desired))
