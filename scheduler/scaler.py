"""One function's autoscaler: its observed-concurrency window, its decider state, and
applying each decision to the pool. The one place scaling is decided.

The pool pokes it when a request finds no free slot (capacity starts now, not at the
next tick); the scheduler's loop ticks it. Both go through the pure `decide`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scheduler.autoscaler import (
    AutoscalerConfig,
    ConcurrencyWindow,
    ScaleInputs,
    ScalerState,
    decide,
)

if TYPE_CHECKING:
    from scheduler.pool import Pool

log = logging.getLogger("kapal.scheduler.scaler")


class Scaler:
    def __init__(self, config: AutoscalerConfig) -> None:
        self.config = config
        self.window = ConcurrencyWindow(config.stable_window_s)
        self.state = ScalerState()

    def record(self, now: float, observed: float) -> None:
        self.window.record(now, observed)

    def poke(self, now: float, pool: Pool, observed: float) -> None:
        """A request is waiting: scale up at once if the decider wants more."""
        self.record(now, observed)
        self.tick(now, pool, up_only=True)

    def tick(self, now: float, pool: Pool, *, up_only: bool = False) -> None:
        cfg = self.config
        scaling = pool.spec.scaling
        inputs = ScaleInputs(
            stable_concurrency=self.window.average(now, cfg.stable_window_s),
            panic_concurrency=self.window.average(now, cfg.panic_window_s),
            current_concurrency=self.window.latest(),
            ready=pool.ready_count(),
            concurrency=scaling.concurrency,
            min_instances=pool.min_instances,
            max_instances=scaling.max,
        )
        decision = decide(now, inputs, self.state, cfg)
        self.state = decision.state
        pool.panic = decision.panic
        active = len(pool.active())
        if up_only and decision.desired <= active:
            return
        desired = pool.idle_bound(decision.desired)  # an idle function: its keep-alive's
        if desired != active:
            log.info(
                "scaling",
                extra={
                    "function": pool.spec.name,
                    "desired": desired,
                    "active": active,
                    "panic": decision.panic,
                    "stable": round(inputs.stable_concurrency, 2),
                    "burst": round(max(inputs.panic_concurrency, inputs.current_concurrency), 2),
                },
            )
        pool.scale_to(desired)
