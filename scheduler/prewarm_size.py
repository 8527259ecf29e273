"""How many prewarmed containers to keep per runtime: reactive, as OpenWhisk's invoker does.

A fixed count is either memory kept for nothing (a quiet host) or too few for a burst
(after the first few, every instance is a new container at the engine's pace, 2-5 a
second here). So each runtime keeps at least its configured count, and after cold starts
as many as a cold-start window asked for (prewarmed or not), up to a cap; the count falls
back once those starts age out of the window. The refill itself happens while nothing
starts, so it never takes the engine from instances requests wait for.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Cold starts this recent size the pool (OpenWhisk's prewarm ttl is 2 minutes).
WINDOW_S = 120.0


@dataclass(frozen=True)
class PrewarmSize:
    # Containers always kept ready (the configured count).
    floor: int
    # Containers kept at most, however many cold starts there were.
    cap: int
    # Seconds a cold start counts for.
    window_s: float = WINDOW_S


def wanted(now: float, cold_starts: Iterable[float], size: PrewarmSize) -> int:
    """Containers to keep ready: the cold starts of the last window (when each happened),
    between floor and cap."""
    recent = sum(1 for at in cold_starts if at > now - size.window_s)
    return max(size.floor, min(max(size.cap, size.floor), recent))
