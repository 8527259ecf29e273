"""Traffic splits: which version of a function serves a request, by weight.

A function's versions that serve traffic each have their own pool; a split says what
share of requests each one gets. It is turned into a cumulative table when what is
deployed changes, so choosing a pool per request costs one random draw and a bisect of a
tuple: no lock, no database. A function with one version serving skips the draw.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from random import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scheduler.pool import Pool

# Weights are percents: every split adds up to this.
WHOLE = 100


@dataclass(frozen=True)
class Split:
    """The versions serving a function and each one's share, in percent."""

    # Versions with a positive weight, lowest first.
    versions: tuple[int, ...]
    # Cumulative weights, aligned with `versions`; the last is WHOLE.
    bounds: tuple[int, ...]

    @classmethod
    def of(cls, weights: Mapping[int, int]) -> Split:
        """The split of `weights` (version -> percent); versions at 0 serve nothing."""
        served = sorted((v, w) for v, w in weights.items() if w > 0)
        if any(w < 0 for w in weights.values()) or sum(w for _, w in served) != WHOLE:
            raise ValueError(f"weights must be non-negative and add up to {WHOLE}: {weights}")
        bounds, total = [], 0
        for _, w in served:
            total += w
            bounds.append(total)
        return cls(tuple(v for v, _ in served), tuple(bounds))

    @classmethod
    def only(cls, version: int) -> Split:
        return cls((version,), (WHOLE,))

    def share(self, version: int) -> int:
        """The percent of requests `version` gets (0 when it serves none)."""
        if version not in self.versions:
            return 0
        i = self.versions.index(version)
        return self.bounds[i] - (self.bounds[i - 1] if i else 0)

    @property
    def weights(self) -> dict[int, int]:
        return {v: self.share(v) for v in self.versions}

    @property
    def primary(self) -> int:
        """The version with the largest share (the highest one on a tie): whose spec
        speaks for the function (public, rate limit) and which the listing calls current."""
        return max(self.versions, key=lambda v: (self.share(v), v))

    def scaled(self, version: int, n: int) -> int:
        """`version`'s part of `n` (instances, queued work), rounded up: a version
        with any share keeps at least one of something there is any of."""
        return math.ceil(n * self.share(version) / WHOLE)


class Routes:
    """The pools of one function's serving versions, as the hot path draws from them."""

    __slots__ = ("bounds", "pools", "split")

    def __init__(self, split: Split, pools: Mapping[int, Pool]) -> None:
        self.split = split
        self.pools = tuple(pools[v] for v in split.versions)
        # Fractions of one, so a draw of random() needs no scaling.
        self.bounds = tuple(b / WHOLE for b in split.bounds)

    def choose(self, draw: Callable[[], float] = random) -> Pool:
        """The pool a request goes to: the only one, or one drawn by weight (`draw`
        gives a number in [0, 1), below the last bound: 1.0)."""
        pools = self.pools
        if len(pools) == 1:
            return pools[0]
        return pools[bisect_right(self.bounds, draw())]
