"""The queue worker: claims ready rows, invokes through the scheduler, records outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import asyncpg
from multidict import CIMultiDict

from gateway.errors import FunctionNotFound, KapalError, UpstreamFailed, UpstreamTimeout
from gateway.invoke import Invoker
from gateway.queue.manager import QueueManager
from gateway.queue.models import Candidate, Claimed, Outcome
from gateway.queue.retry import AttemptResult, RetryPolicy, State, parse_retry_after
from gateway.queue.store import CHANNEL, QueueStore
from gateway.settings import Settings
from scheduler import errors as sched
from scheduler.scheduler import Scheduler

log = logging.getLogger("kapal.gateway.queue")

INVOCATION_ID = "X-Kapal-Invocation-Id"
ATTEMPT = "X-Kapal-Attempt"
# Response headers not worth keeping with a result.
_DROP = frozenset({"x-kapal-request-id", "date", "server"})


def attempt_result(error: BaseException) -> AttemptResult:
    """Why an attempt got no answer, as the retry policy sees it."""
    if isinstance(error, UpstreamTimeout):
        return AttemptResult(error="timeout")
    if isinstance(error, UpstreamFailed):
        return AttemptResult(error="instance_failed")
    if isinstance(error, FunctionNotFound | sched.UnknownFunction):
        return AttemptResult(error="function_not_found")
    if isinstance(error, sched.NoCapacity):
        return AttemptResult(error="no_capacity", retry_after_s=error.retry_after_s)
    if isinstance(error, sched.StartFailed):
        return AttemptResult(error="start_failed")
    return AttemptResult(error="internal")


class QueueWorker:
    def __init__(
        self,
        settings: Settings,
        store: QueueStore,
        manager: QueueManager,
        invoker: Invoker,
        scheduler: Scheduler,
    ) -> None:
        self.settings = settings
        self.store = store
        self.manager = manager
        self.invoker = invoker
        self.scheduler = scheduler
        self.worker_id = manager.worker_id
        self.policy = RetryPolicy(settings.queue_retry_base_s, settings.queue_retry_cap_s)
        self.running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.by_function: Counter[str] = Counter()
        self.by_job: Counter[uuid.UUID] = Counter()
        self.job_limits: dict[uuid.UUID, int] = {}
        self.wake = asyncio.Event()

    # -- claiming ------------------------------------------------------------------------

    def function_limit(self, function: str) -> int:
        pool = self.scheduler.pool(function)
        # Rows of a deleted function are claimed to be failed at once.
        return pool.spec.async_.concurrency if pool is not None else self.settings.queue_concurrency

    def choose(self, candidates: list[Candidate]) -> list[uuid.UUID]:
        """The candidates that fit under the function, job and gateway concurrency limits."""
        picked: list[uuid.UUID] = []
        fn = Counter(self.by_function)
        job = Counter(self.by_job)
        free = self.settings.queue_concurrency - len(self.running)
        for c in candidates:
            if len(picked) >= free or fn[c.function] >= self.function_limit(c.function):
                continue
            if c.job_id is not None and c.job_concurrency is not None:
                self.job_limits[c.job_id] = c.job_concurrency
                if job[c.job_id] >= c.job_concurrency:
                    continue
            fn[c.function] += 1
            if c.job_id is not None:
                job[c.job_id] += 1
            picked.append(c.id)
        return picked

    async def claim_once(self) -> bool:
        """Claim what fits; True when there may be more ready right now."""
        free = self.settings.queue_concurrency - len(self.running)
        if free <= 0:
            return False
        full_fns = [f for f, n in self.by_function.items() if n >= self.function_limit(f)]
        full_jobs = [j for j, n in self.by_job.items() if n >= self.job_limits.get(j, 1 << 30)]
        limit = min(free, self.settings.queue_claim_batch)
        claimed, seen = await self.store.claim(
            self.worker_id, self.settings.queue_lease_s, full_fns, full_jobs, limit, self.choose
        )
        for row in claimed:
            self._spawn(row)
        return seen >= limit and bool(claimed)

    def _spawn(self, row: Claimed) -> None:
        self.by_function[row.function] += 1
        if row.job_id is not None:
            self.by_job[row.job_id] += 1
        task = asyncio.create_task(self._run(row), name=f"kapal-invocation-{row.id}")
        self.running[row.id] = task
        task.add_done_callback(functools.partial(self._done, row))

    def _done(self, row: Claimed, _task: asyncio.Task[None]) -> None:
        self.running.pop(row.id, None)
        self.by_function[row.function] -= 1
        if self.by_function[row.function] <= 0:
            del self.by_function[row.function]
        if row.job_id is not None:
            self.by_job[row.job_id] -= 1
            if self.by_job[row.job_id] <= 0:
                del self.by_job[row.job_id]
        self.wake.set()

    async def run_claims(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.settings.queue_poll_s)
            self.wake.clear()
            if stop.is_set():
                break
            try:
                while not stop.is_set() and await self.claim_once():
                    pass
            except (OSError, asyncpg.PostgresError) as e:
                log.warning("claiming failed", extra={"error": str(e)})
                await asyncio.sleep(self.settings.queue_poll_s)

    # -- running -------------------------------------------------------------------------

    async def _run(self, row: Claimed) -> None:
        headers: CIMultiDict[str] = CIMultiDict(row.headers)
        headers[INVOCATION_ID] = str(row.id)
        headers[ATTEMPT] = str(row.attempt)
        result_headers: dict[str, str] | None = None
        body: bytes | None = None
        error: str | None = None
        try:
            res = await self.invoker.call(row.function, row.method, row.path, headers, row.body)
            result = AttemptResult(
                status=res.status,
                retry_after_s=parse_retry_after(res.headers.get("Retry-After"), time.time()),
            )
            result_headers = {k: v for k, v in res.headers.items() if k.lower() not in _DROP}
            body = res.body
        except (KapalError, sched.SchedulerError) as e:
            result = attempt_result(e)
            error = f"{result.error}: {e}"
        except Exception as e:
            log.exception("invocation attempt crashed", extra={"invocation": str(row.id)})
            result = AttemptResult(error="internal")
            error = f"internal: {type(e).__name__}"
        now = time.time()
        decision = self.policy.decide(result, row.attempt, row.max_retries, now)
        outcome = Outcome(
            row.id,
            row.attempt,
            decision.state.value,
            None if decision.run_at is None else datetime.fromtimestamp(decision.run_at, UTC),
            result.status,
            result_headers,
            body,
            error,
        )
        if not await self.manager.record(outcome):
            log.warning("result dropped: the claim was lost", extra={"invocation": str(row.id)})
        elif decision.state is not State.SUCCEEDED:
            log.info(
                "invocation attempt failed",
                extra={
                    "invocation": str(row.id),
                    "function": row.function,
                    "attempt": row.attempt,
                    "state": decision.state.value,
                    "status": result.status,
                    "error": error,
                },
            )

    # -- upkeep --------------------------------------------------------------------------

    async def run_upkeep(self, stop: asyncio.Event) -> None:
        """Heartbeat our leases, take back rows of lost workers, report queue depth."""
        every = min(self.settings.queue_poll_s, self.settings.queue_lease_s / 3)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            try:
                if self.running:
                    await self.store.heartbeat(self.worker_id, self.settings.queue_lease_s)
                if await self.store.recover_expired():
                    self.wake.set()
                depth = await self.store.depth()
            except (OSError, asyncpg.PostgresError) as e:
                log.warning("queue upkeep failed", extra={"error": str(e)})
                continue
            for name in list(self.scheduler.pools):
                self.scheduler.set_backlog(name, depth.get(name, 0))

    async def run_listener(self, stop: asyncio.Event) -> None:
        """Wake the claim loop on NOTIFY; polling covers the gaps while reconnecting."""
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            await conn.add_listener(CHANNEL, lambda *_: self.wake.set())
            while not stop.is_set() and not conn.is_closed():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5.0)
            if not stop.is_set():
                raise ConnectionError("the LISTEN connection closed")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)

    async def drain(self, grace_s: float) -> None:
        """Let running attempts finish for `grace_s`, then hand the rest back to the queue."""
        if self.running:
            await asyncio.wait(list(self.running.values()), timeout=grace_s)
        for task in list(self.running.values()):
            task.cancel()
        if self.running:
            await asyncio.wait(list(self.running.values()), timeout=2.0)

    async def release(self) -> None:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            await self.store.release_own(self.worker_id)
