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

from gateway.catalog import Catalog
from gateway.errors import problem
from gateway.invoke import Invoker
from gateway.metrics import Metrics
from gateway.queue import lanes
from gateway.queue.lanes import Lane, parse_payload
from gateway.queue.manager import QueueManager
from gateway.queue.models import Claimed, Outcome, storable
from gateway.queue.retry import AttemptResult, RetryPolicy, State, parse_retry_after
from gateway.queue.store import CHANNEL, QueueStore
from gateway.settings import Settings
from gateway.supervisor import either
from scheduler.scheduler import Scheduler

log = logging.getLogger("kapal.gateway.queue")

INVOCATION_ID = "X-Kapal-Invocation-Id"
ATTEMPT = "X-Kapal-Attempt"
# Response headers not worth keeping with a result.
RETENTION_EVERY_S = 3600.0
_DROP = frozenset({"x-kapal-request-id", "date", "server"})


class QueueWorker:
    def __init__(
        self,
        settings: Settings,
        store: QueueStore,
        manager: QueueManager,
        invoker: Invoker,
        scheduler: Scheduler,
        catalog: Catalog,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        # Where this gateway's retries and dead letters are counted.
        self.metrics = metrics or Metrics()
        self.store = store
        self.manager = manager
        self.invoker = invoker
        self.scheduler = scheduler
        self.catalog = catalog
        self.worker_id = manager.worker_id
        self.policy = RetryPolicy(settings.queue_retry_base_s, settings.queue_retry_cap_s)
        self.running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.by_function: Counter[str] = Counter()
        self.by_job: Counter[uuid.UUID] = Counter()
        self.job_limits: dict[uuid.UUID, int | None] = {}
        # Lanes that may hold ready rows: named by notifications, found by depth polls.
        self.ready: set[Lane] = set()
        # Notifications per lane, so one arriving during a claim is not forgotten with it.
        self.notices: Counter[Lane] = Counter()
        self.wake = asyncio.Event()
        self.refresh = asyncio.Event()

    # -- claiming ------------------------------------------------------------------------

    def function_limit(self, function: str) -> int:
        spec = self.catalog.get(function)
        # Rows of a deleted function are claimed to be failed at once.
        return spec.async_.concurrency if spec is not None else self.settings.queue_concurrency

    def on_notify(self, text: str) -> None:
        lanes = parse_payload(text)
        if lanes is None:
            self.refresh.set()
        else:
            self.ready |= lanes
            self.notices.update(lanes)
            self.wake.set()

    async def claim_once(self) -> bool:
        """Claim what fits from every ready lane; True when a lane may hold more right now."""
        free = self.settings.queue_concurrency - len(self.running)
        if free <= 0 or not self.ready:
            return False
        ready = sorted(self.ready, key=lambda lane: self.by_function[lane.function])
        unknown = {lane.job for lane in ready if lane.job is not None} - self.job_limits.keys()
        if unknown:
            self.job_limits.update(await self.store.job_limits(list(unknown)))
        steps = lanes.plan(
            ready,
            free=free,
            batch=self.settings.queue_claim_batch,
            function_limits={lane.function: self.function_limit(lane.function) for lane in ready},
            job_limits=self.job_limits,
            by_function=self.by_function,
            by_job=self.by_job,
        )
        more = False
        for lane, n in steps:
            notices = self.notices[lane]
            rows = await self.store.claim(
                lane,
                n,
                self.worker_id,
                self.settings.queue_lease_s,
                self.function_limit(lane.function),
                None if lane.job is None else self.job_limits.get(lane.job),
            )
            for row in rows:
                self._spawn(row)
            if len(rows) < n and self.notices[lane] == notices:
                self.ready.discard(lane)
                self.notices.pop(lane, None)
            else:
                more = True
        return more

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
            res = await self.invoker.call(
                row.function,
                row.method,
                row.path,
                headers,
                row.body,
                trigger=row.trigger,
                parent=row.id.hex.encode(),
            )
            result = AttemptResult(
                status=res.status,
                retry_after_s=parse_retry_after(res.headers.get("Retry-After"), time.time()),
            )
            result_headers = {
                k: storable(v) for k, v in res.headers.items() if k.lower() not in _DROP
            }
            body = res.body
        except Exception as e:
            # Why it got no answer, by the error's class: the code a caller would see.
            p = problem(e)
            result = AttemptResult(error=p.code, retry_after_s=p.retry_after_s)
            if p.unexpected:
                log.exception("invocation attempt crashed", extra={"invocation": str(row.id)})
                error = f"{p.code}: {type(e).__name__}"
            else:
                error = f"{p.code}: {e}"
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
            return
        if decision.state is State.QUEUED:
            self.metrics.async_retries[row.function] += 1
        elif decision.state is State.DEAD:
            self.metrics.dead_letters[row.function] += 1
        if decision.state is not State.SUCCEEDED:
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
        retained_at = 0.0
        while not stop.is_set():
            if time.monotonic() - retained_at > RETENTION_EVERY_S:
                retained_at = time.monotonic()
                try:
                    deleted = await self.store.retain(self.settings.queue_retention_days)
                    if deleted:
                        log.info("old invocations removed", extra={"rows": deleted})
                except (OSError, asyncpg.PostgresError) as e:
                    log.warning("queue retention failed", extra={"error": str(e)})
            try:
                if self.running:
                    await self.store.heartbeat(self.worker_id, self.settings.queue_lease_s)
                for function, state in await self.store.recover_expired():
                    if state == State.DEAD:
                        self.metrics.dead_letters[function] += 1
                    else:
                        self.metrics.async_retries[function] += 1
                self.refresh.clear()
                depth = await self.store.depth()
            except (OSError, asyncpg.PostgresError) as e:
                log.warning("queue upkeep failed", extra={"error": str(e)})
                depth = None
            if depth is not None:
                backlog: Counter[str] = Counter()
                for d in depth:
                    backlog[d.lane.function] += d.queued
                    self.ready.add(d.lane)
                    if d.lane.job is not None:
                        self.job_limits[d.lane.job] = d.job_concurrency
                for name in list(self.scheduler.pools):
                    self.scheduler.set_backlog(name, backlog.get(name, 0))
                live = {d.lane.job for d in depth} | set(self.by_job)
                for job in list(self.job_limits):
                    if job not in live:
                        del self.job_limits[job]
                if self.ready:
                    self.wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(either(stop, self.refresh), every)

    async def run_listener(self, stop: asyncio.Event) -> None:
        """Wake the claim loop on NOTIFY; polling covers the gaps while reconnecting."""
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            await conn.add_listener(CHANNEL, lambda *args: self.on_notify(args[-1]))
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
