"""A job's progress from its per-state counts: done, rate, ETA. Pure."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from gateway.jobs.store import JobRow, StateCount
from gateway.queue.retry import FINAL, State


class JobOut(BaseModel):
    # The job's id.
    id: str
    # Function each item invokes.
    function: str
    # running | completed | cancelled.
    state: str
    # Items in the job.
    total: int
    # Items per state: queued, running, succeeded, failed, dead, cancelled.
    counts: dict[str, int]
    # Items in a final state.
    done: int
    # done / total, 0..1.
    progress: float
    # Items finished per second since the first one started.
    rate_per_s: float | None
    # Seconds until the rest is done at that rate.
    eta_s: float | None
    max_concurrency: int | None
    max_retries: int
    created_at: datetime
    cancelled_at: datetime | None


def job_out(job: JobRow, counts: list[StateCount], now: datetime) -> JobOut:
    by_state = {s.value: 0 for s in State}
    for c in counts:
        by_state[c.status] = c.n
    done = sum(n for s, n in by_state.items() if s in FINAL)
    starts = [c.first_start for c in counts if c.first_start is not None]
    finishes = [c.last_finish for c in counts if c.last_finish is not None]
    rate = eta = None
    if starts and done:
        end = max(finishes) if done == job.total and finishes else now
        elapsed = max((end - min(starts)).total_seconds(), 1e-3)
        rate = done / elapsed
        eta = (job.total - done) / rate
    if done == job.total:
        state = "cancelled" if job.cancelled_at is not None else "completed"
    else:
        state = "cancelled" if job.cancelled_at is not None else "running"
    return JobOut(
        id=str(job.id),
        function=job.function,
        state=state,
        total=job.total,
        counts=by_state,
        done=done,
        progress=done / job.total if job.total else 1.0,
        rate_per_s=rate,
        eta_s=eta,
        max_concurrency=job.max_concurrency,
        max_retries=job.max_retries,
        created_at=job.created_at,
        cancelled_at=job.cancelled_at,
    )
