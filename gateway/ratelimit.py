"""Token buckets, in memory: one per API key and one per function that sets a rate."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass
class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; starts full."""

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def take(self, now: float) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is there."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def burst_for(rate: float) -> float:
    """A second's worth of requests, and never less than one."""
    return max(1.0, float(math.ceil(rate)))


def retry_after(wait_s: float) -> str:
    """`Retry-After` takes whole seconds; round up so a client that obeys it succeeds."""
    return str(max(1, math.ceil(wait_s)))


class RateLimiter:
    """Buckets by key (`key:<id>`, `fn:<name>`).

    With several gateways, each enforces its `share` of a limit (set from every
    gateway's demand, see `gateway.cluster`), so the limit holds across all of them.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.buckets: dict[str, TokenBucket] = {}
        # This gateway's fraction of each limit (absent: all of it).
        self.shares: dict[str, float] = {}
        # Requests that asked for a token, per key, since `take_demand` was last called.
        self.demand: dict[str, int] = {}

    def take(self, key: str, rate: float | None) -> float:
        """0.0 when allowed (or `rate` is None: unlimited), else seconds to wait."""
        if rate is None:
            return 0.0
        self.demand[key] = self.demand.get(key, 0) + 1
        rate *= self.shares.get(key, 1.0)
        now = self.clock()
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket.full(rate, burst_for(rate), now)
        elif bucket.rate != rate:
            # A new share or a changed limit: tokens saved so far stay, within the new burst.
            bucket.tokens += (now - bucket.updated) * bucket.rate
            bucket.updated, bucket.rate, bucket.burst = now, rate, burst_for(rate)
            bucket.tokens = min(bucket.tokens, bucket.burst)
        return bucket.take(now)

    def take_demand(self) -> dict[str, int]:
        demand, self.demand = self.demand, {}
        return demand

    def forget(self, key: str) -> None:
        self.buckets.pop(key, None)

    def forget_missing(self, functions: Collection[str]) -> None:
        """Drop the buckets of functions that no longer exist."""
        for key in [k for k in self.buckets if k.startswith("fn:") and k[3:] not in functions]:
            del self.buckets[key]
