"""The retry policy, a pure function of the attempt's result, its number and `now`."""

from __future__ import annotations

import email.utils

from gateway.queue.retry import AttemptResult, RetryDecision, RetryPolicy, State, parse_retry_after

NOW = 1_000_000.0
POLICY = RetryPolicy(base_s=1.0, cap_s=60.0)


def decide(
    result: AttemptResult, attempt: int, max_retries: int = 3, rand: float = 0.0
) -> RetryDecision:
    return POLICY.decide(result, attempt, max_retries, NOW, rand=lambda: rand)


def test_success_and_redirects_are_final() -> None:
    assert decide(AttemptResult(status=200), 1) == RetryDecision(State.SUCCEEDED)
    assert decide(AttemptResult(status=302), 1) == RetryDecision(State.SUCCEEDED)


def test_client_errors_fail_without_retry() -> None:
    for status in (400, 401, 404, 422):
        assert decide(AttemptResult(status=status), 1) == RetryDecision(State.FAILED)
    assert decide(AttemptResult(error="function_not_found"), 1) == RetryDecision(State.FAILED)


def test_server_errors_throttling_and_lost_instances_are_retried_with_backoff() -> None:
    for result in (
        AttemptResult(status=500),
        AttemptResult(status=503),
        AttemptResult(status=429),
        AttemptResult(error="timeout"),
        AttemptResult(error="instance_failed"),
        AttemptResult(error="unavailable"),
    ):
        assert decide(result, 1) == RetryDecision(State.QUEUED, NOW + 0.5)
    # Exponential: 1, 2, 4 s before jitter; jitter adds up to half of it.
    assert decide(AttemptResult(status=500), 2, rand=0.0).run_at == NOW + 1.0
    assert decide(AttemptResult(status=500), 3, rand=1.0).run_at == NOW + 4.0


def test_backoff_is_capped() -> None:
    assert decide(AttemptResult(status=500), 30, max_retries=50, rand=1.0).run_at == NOW + 60.0


def test_out_of_retries_is_dead() -> None:
    assert decide(AttemptResult(status=500), 4, max_retries=3) == RetryDecision(State.DEAD)
    assert decide(AttemptResult(status=500), 1, max_retries=0) == RetryDecision(State.DEAD)


def test_retry_after_is_honoured_but_capped() -> None:
    result = AttemptResult(status=429, retry_after_s=30.0)
    assert decide(result, 1).run_at == NOW + 30.0
    assert decide(AttemptResult(status=503, retry_after_s=9999.0), 1).run_at == NOW + 60.0
    # A Retry-After shorter than the backoff does not shorten it.
    assert decide(AttemptResult(status=503, retry_after_s=0.1), 3).run_at == NOW + 2.0


def test_parse_retry_after() -> None:
    assert parse_retry_after("120", NOW) == 120.0
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after("soon", NOW) is None
    date = email.utils.formatdate(NOW + 45, usegmt=True)
    assert parse_retry_after(date, NOW) == 45.0
