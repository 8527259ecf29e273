"""Token buckets, on a hand-moved clock."""

from __future__ import annotations

from gateway.ratelimit import RateLimiter, TokenBucket, burst_for, retry_after


def test_bucket_starts_full_then_refills_at_its_rate() -> None:
    bucket = TokenBucket.full(rate=2.0, burst=2.0, now=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == 0.5
    assert bucket.take(0.25) == 0.25
    assert bucket.take(0.5) == 0.0


def test_bucket_never_saves_more_than_its_burst() -> None:
    bucket = TokenBucket.full(rate=1.0, burst=3.0, now=0.0)
    for _ in range(3):
        assert bucket.take(1000.0) == 0.0
    assert bucket.take(1000.0) == 1.0


def test_limiter_keys_are_independent_and_none_is_unlimited() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert limiter.take("a", 1.0) == 0.0
    assert limiter.take("a", 1.0) == 1.0
    assert limiter.take("b", 1.0) == 0.0
    assert all(limiter.take("c", None) == 0.0 for _ in range(1000))
    now[0] = 1.0
    assert limiter.take("a", 1.0) == 0.0


def test_a_new_rate_applies_from_now_on() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert limiter.take("a", 1.0) == 0.0
    assert limiter.take("a", 1.0) > 0
    now[0] = 1.0  # what was saved at the old rate stays
    assert sum(limiter.take("a", 5.0) == 0.0 for _ in range(20)) == 1
    now[0] = 2.0
    assert sum(limiter.take("a", 5.0) == 0.0 for _ in range(20)) == 5


def test_burst_and_retry_after_round_up() -> None:
    assert burst_for(0.2) == 1.0
    assert burst_for(2.5) == 3.0
    assert retry_after(0.01) == "1"
    assert retry_after(4.2) == "5"


def test_a_share_scales_the_rate_without_refilling_the_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert all(limiter.take("a", 10.0) == 0.0 for _ in range(10))
    assert limiter.take("a", 10.0) > 0.0
    limiter.shares["a"] = 0.5  # another gateway takes half of the demand
    now[0] = 1.0
    granted = sum(limiter.take("a", 10.0) == 0.0 for _ in range(100))
    assert granted == 5
    assert limiter.take_demand() == {"a": 111}
    assert limiter.take_demand() == {}
