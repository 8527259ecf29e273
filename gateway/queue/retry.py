"""What happens after an attempt: done, failed for good, retried later, or dead. Pure."""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from gateway.errors import FunctionNotFound, PayloadTooLarge


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


FINAL = frozenset({State.SUCCEEDED, State.FAILED, State.DEAD, State.CANCELLED})

# Why an attempt got no answer that no retry will fix (an error class's code).
FINAL_ERRORS = frozenset({FunctionNotFound.code, PayloadTooLarge.code})


@dataclass(frozen=True)
class AttemptResult:
    """How one attempt ended: an HTTP status from the function, or an error kind."""

    status: int | None = None
    error: str | None = None
    # Seconds the function (or the scheduler) asked us to wait before the next try.
    retry_after_s: float | None = None

    @property
    def retriable(self) -> bool:
        if self.status is not None:
            return self.status >= 500 or self.status in (408, 429)
        return self.error not in FINAL_ERRORS


@dataclass(frozen=True)
class RetryDecision:
    """The state an invocation moves to, and when it runs again (a retry only)."""

    state: State
    run_at: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    # Delay before the first retry, doubled per attempt, in seconds.
    base_s: float = 1.0
    # Longest delay between attempts, in seconds.
    cap_s: float = 300.0

    def backoff_s(self, attempt: int, rand: float) -> float:
        """Delay after failed attempt `attempt` (1-based): half fixed, half jitter."""
        delay = min(self.cap_s, self.base_s * 2.0 ** max(0, attempt - 1))
        return delay / 2 + delay / 2 * rand

    def decide(
        self,
        result: AttemptResult,
        attempt: int,
        max_retries: int,
        now: float,
        rand: Callable[[], float] = random.random,
    ) -> RetryDecision:
        if result.status is not None and result.status < 400:
            return RetryDecision(State.SUCCEEDED)
        if not result.retriable:
            return RetryDecision(State.FAILED)
        if attempt > max_retries:
            return RetryDecision(State.DEAD)
        delay = self.backoff_s(attempt, rand())
        if result.retry_after_s is not None:
            delay = max(delay, min(result.retry_after_s, self.cap_s))
        return RetryDecision(State.QUEUED, now + delay)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)
