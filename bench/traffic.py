"""`traffic`: what choosing a version costs a request, and where the draws land.

In process, no engine: a scheduler that does not lead (it starts nothing) holds one
function served by one version and one split 90/10. Per call, the lookup of the pool the
hot path did before splits (`Scheduler.pool`) beside `Scheduler.pick` for both; and the
share of a million draws that the split's 10% version got.
"""

from __future__ import annotations

import timeit
from collections import Counter
from typing import Any, cast

from scheduler.models import FunctionSpec
from scheduler.scheduler import Scheduler


def _per_call_ns(stmt: Any, n: int) -> float:
    # The best of a few runs: the least disturbed by other work on the machine.
    return min(timeit.repeat(stmt, number=n, repeat=5)) / n * 1e9


def run(quick: bool) -> dict[str, Any]:
    n = 200_000 if quick else 1_000_000
    scheduler = Scheduler(cast(Any, None))
    specs = [FunctionSpec(name="one", version=1, image="x")]
    specs += [FunctionSpec(name="split", version=v, image="x") for v in (3, 4)]
    scheduler.update(specs, {"split": {3: 90, 4: 10}})
    landed = Counter(scheduler.pick("split").spec.version for _ in range(n))  # type: ignore[union-attr]
    return {
        "scenario": "traffic",
        "calls": n,
        "pool_lookup_ns": round(_per_call_ns(lambda: scheduler.pool("one"), n), 1),
        "pick_one_version_ns": round(_per_call_ns(lambda: scheduler.pick("one"), n), 1),
        "pick_split_ns": round(_per_call_ns(lambda: scheduler.pick("split"), n), 1),
        "split_share_of_10pct_version": round(landed[4] / n, 4),
    }
