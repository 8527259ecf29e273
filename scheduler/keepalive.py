"""Keep-alive learned from a function's own idle times, after "Serverless in the Wild"
(Shahrad et al., ATC '20): a pure decider and the histogram it reads.

An idle time is how long a function had no request in flight anywhere before the next
one arrived. Its histogram (fixed bins, bounded memory) gives the windows, counted from
the moment the function went idle:

- `prewarm_s`: a low percentile (minus a margin and a lead for the start-up itself).
  Before it no request is expected, so nothing is kept; at it one instance is brought
  back. Zero when requests may follow at once (it is then kept from the start).
- `pause_s`: a high percentile; one instance is kept ready until it, then paused (a
  standby that costs no CPU and unpauses in milliseconds).
- `remove_s`: a higher percentile plus a margin; the standby is removed then.

`scaling.idle_timeout_s` bounds how long an instance sits idle and loaded: `remove_s -
prewarm_s` never passes it.

With too few idle times, too many past the histogram's range, or idle times spread so
evenly that no window stands out (a low coefficient of variation of the bin counts), the
histogram says nothing: the fixed policy holds (`scaling.idle_timeout_s`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum


class KeepAlivePolicy(StrEnum):
    # Windows from each function's idle-time histogram (fixed until it is representative).
    LEARNED = "learned"
    # Ready while the autoscaler wants it, paused, removed after `idle_timeout_s`.
    FIXED = "fixed"


@dataclass(frozen=True)
class KeepAliveConfig:
    # Width of one histogram bin, in seconds.
    bin_s: float = 1.0
    # Bins kept; idle times past `bin_s * bins` only count as out of range.
    bins: int = 600
    # Idle times needed before the histogram is trusted.
    min_samples: int = 8
    # Most of the idle times that may fall past the range (else the fixed policy).
    max_out_of_range: float = 0.1
    # Coefficient of variation of the bin counts below which idle times are too spread.
    min_cv: float = 2.0
    # Percentiles of the idle times that set the three windows.
    prewarm_percentile: float = 5.0
    pause_percentile: float = 90.0
    remove_percentile: float = 99.0
    # Relative margins: pre-warm that much earlier, remove that much later.
    margin: float = 0.1
    # Seconds an instance takes to come back (a decision tick plus a start); a pre-warm
    # window shorter than twice this is not worth removing the instance for.
    prewarm_lead_s: float = 2.0
    # Seconds a standby of a function kept from the start (no pre-warm) stays at least
    # (bounded by `idle_timeout_s`): removing it early saves little memory and turns a
    # 15 ms unpause into a new container, during which every request of a busy function
    # waits cold.
    min_remove_s: float = 60.0
    # Counts are halved when they reach this total: recent traffic weighs more, and
    # memory stays bounded.
    max_samples: float = 1000.0


@dataclass
class IdleHistogram:
    """Counts of idle times in fixed bins (plus those past the last bin)."""

    config: KeepAliveConfig
    counts: list[float] = field(default_factory=list)
    out_of_range: float = 0.0
    # Every count, in and out of range (kept, not summed per sample).
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0.0] * self.config.bins

    def add(self, idle_s: float) -> None:
        i = int(max(0.0, idle_s) // self.config.bin_s)
        if i < len(self.counts):
            self.counts[i] += 1
        else:
            self.out_of_range += 1
        self.total += 1
        if self.total >= self.config.max_samples:
            self.counts = [c / 2 for c in self.counts]
            self.out_of_range /= 2
            self.total /= 2

    def percentile(self, p: float) -> float:
        """The upper edge of the bin holding the `p`th percentile (in seconds); past the
        range: infinity."""
        wanted = self.total * p / 100
        seen = 0.0
        for i, c in enumerate(self.counts):
            seen += c
            if c and seen >= wanted:
                return (i + 1) * self.config.bin_s
        return math.inf

    def cv(self) -> float:
        """Coefficient of variation of the bin counts: high when idle times gather in a
        few bins, low when they spread evenly."""
        n = len(self.counts)
        mean = sum(self.counts) / n
        if mean == 0:
            return 0.0
        var = sum((c - mean) ** 2 for c in self.counts) / n
        return math.sqrt(var) / mean


@dataclass(frozen=True)
class KeepAliveWindows:
    # Seconds after going idle before one instance is brought back (0: kept throughout).
    prewarm_s: float
    # Seconds after going idle when the kept instance is paused.
    pause_s: float
    # Seconds after going idle when it is removed.
    remove_s: float
    # From the histogram (False: the fixed policy).
    learned: bool


def windows(hist: IdleHistogram, idle_timeout_s: float) -> KeepAliveWindows:
    """The keep-alive windows of one function (pure)."""
    cfg = hist.config
    total = hist.total
    if (
        total < cfg.min_samples
        or hist.out_of_range > cfg.max_out_of_range * total
        or hist.cv() < cfg.min_cv
    ):
        return KeepAliveWindows(0.0, 0.0, idle_timeout_s, learned=False)
    # The low percentile's bin starts one bin below its upper edge.
    low = hist.percentile(cfg.prewarm_percentile) - cfg.bin_s
    prewarm_s = low * (1 - cfg.margin) - cfg.prewarm_lead_s
    high = hist.percentile(cfg.pause_percentile) * (1 + cfg.margin)
    if prewarm_s < cfg.prewarm_lead_s or prewarm_s >= high:
        prewarm_s = 0.0
    # The user's timeout bounds how long an instance sits idle loaded: counted from the
    # pre-warm, so a function called every hour can still find one ready.
    remove_s = min(
        prewarm_s + idle_timeout_s, hist.percentile(cfg.remove_percentile) * (1 + cfg.margin)
    )
    if prewarm_s == 0.0:
        remove_s = max(remove_s, min(idle_timeout_s, cfg.min_remove_s))
    pause_s = min(remove_s, high)
    return KeepAliveWindows(prewarm_s, pause_s, remove_s, learned=True)


class Want(StrEnum):
    """What a function with nothing in flight should have, as the decider sees it."""

    # Nothing idle: no request is expected yet (after a burst), or none any more.
    NONE = "none"
    # One instance ready (pre-warmed if it was removed).
    READY = "ready"
    # Idle instances paused as standbys.
    PAUSED = "paused"


def want(w: KeepAliveWindows, idle_for_s: float) -> Want:
    """What to keep `idle_for_s` seconds after the function went idle."""
    if idle_for_s < w.prewarm_s or idle_for_s >= w.remove_s:
        return Want.NONE
    if idle_for_s < w.pause_s:
        return Want.READY
    return Want.PAUSED


class IdleTracker:
    """One function's busy/idle transitions, feeding its histogram."""

    def __init__(self, config: KeepAliveConfig | None = None) -> None:
        self.hist = IdleHistogram(config or KeepAliveConfig())
        # When the function last went idle (None: busy, or never served).
        self.idle_since: float | None = None
        # The windows last computed, for which timeout, and samples added since.
        self._windows: KeepAliveWindows | None = None
        self._timeout_s = 0.0
        self._fresh = 0

    def arrived(self, now: float) -> None:
        """A request arrived; if the function was idle, that idle time is one sample."""
        if self.idle_since is not None:
            self.hist.add(now - self.idle_since)
            self.idle_since = None
            self._fresh += 1

    def windows(self, idle_timeout_s: float) -> KeepAliveWindows:
        """`windows` of the histogram, computed again once it has grown by 2 % (a scan of
        every bin per request would cost a busy function more than it tells)."""
        w = self._windows
        if (
            w is None
            or idle_timeout_s != self._timeout_s
            or self._fresh > 0.02 * self.hist.total
            or (not w.learned and self._fresh)
        ):
            w = self._windows = windows(self.hist, idle_timeout_s)
            self._timeout_s, self._fresh = idle_timeout_s, 0
        return w

    def went_idle(self, now: float) -> None:
        """The last request in flight ended."""
        self.idle_since = now

    def idle_for(self, now: float) -> float | None:
        return None if self.idle_since is None else now - self.idle_since
