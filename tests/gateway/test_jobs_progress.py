"""A job's progress, rate and ETA from its per-state counts (pure)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from gateway.jobs.progress import job_out
from gateway.jobs.store import JobRow, StateCount

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def job(total: int, cancelled: bool = False) -> JobRow:
    return JobRow(uuid.uuid4(), "f", total, None, 3, T0, T0 if cancelled else None)


def test_running_job_has_rate_and_eta() -> None:
    counts = [
        StateCount("succeeded", 30, T0, T0 + timedelta(seconds=9)),
        StateCount("failed", 10, T0 + timedelta(seconds=1), T0 + timedelta(seconds=8)),
        StateCount("running", 5, T0 + timedelta(seconds=9), None),
        StateCount("queued", 55, None, None),
    ]
    out = job_out(job(100), counts, now=T0 + timedelta(seconds=10))
    assert out.state == "running"
    assert out.done == 40
    assert out.progress == 0.4
    assert out.rate_per_s == 4.0
    assert out.eta_s == 15.0
    assert out.counts == {
        "queued": 55,
        "running": 5,
        "succeeded": 30,
        "failed": 10,
        "dead": 0,
        "cancelled": 0,
    }


def test_finished_job_rate_stops_at_its_last_result() -> None:
    counts = [StateCount("succeeded", 50, T0, T0 + timedelta(seconds=5))]
    out = job_out(job(50), counts, now=T0 + timedelta(hours=1))
    assert out.state == "completed"
    assert out.rate_per_s == 10.0 and out.eta_s == 0.0


def test_nothing_started_has_no_rate_and_cancelled_is_cancelled() -> None:
    out = job_out(job(5), [StateCount("queued", 5, None, None)], now=T0)
    assert out.rate_per_s is None and out.eta_s is None and out.progress == 0.0
    cancelled = job_out(job(5, cancelled=True), [StateCount("cancelled", 5, None, T0)], now=T0)
    assert cancelled.state == "cancelled" and cancelled.done == 5
