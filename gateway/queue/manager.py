"""Meaningful queue operations over the store: accept, look up, re-drive, record results."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid

import asyncpg

from gateway.catalog import Catalog
from gateway.errors import BadRequest, Conflict, FunctionNotFound, NotFound, Unavailable
from gateway.queue.batcher import GroupCommit
from gateway.queue.models import (
    Headers,
    InvocationOut,
    NewInvocation,
    Outcome,
    invocation_out,
)
from gateway.queue.store import QueueStore

log = logging.getLogger("kapal.gateway.queue")


class QueueManager:
    def __init__(self, store: QueueStore, catalog: Catalog, worker_id: str) -> None:
        self.store = store
        self.catalog = catalog
        self.worker_id = worker_id
        self._enqueues: GroupCommit[NewInvocation, uuid.UUID] = GroupCommit(
            "kapal-enqueue", self.store.enqueue, max_batch=500
        )
        self._results: GroupCommit[Outcome, bool] = GroupCommit(
            "kapal-results", self._write_outcomes, max_batch=500
        )

    async def run_enqueues(self, stop: asyncio.Event) -> None:
        await self._enqueues.run(stop)

    async def run_results(self, stop: asyncio.Event) -> None:
        await self._results.run(stop)

    def max_retries(self, function: str) -> int:
        spec = self.catalog.get(function)
        if spec is None:
            raise FunctionNotFound(f"function {function} not found")
        return spec.async_.max_retries

    async def enqueue(
        self,
        function: str,
        method: str,
        path: str,
        headers: Headers,
        body: bytes,
        *,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        max_retries: int | None = None,
        trigger: str = "async",
    ) -> uuid.UUID:
        """Durably accept one invocation (group-committed); returns its id."""
        item = NewInvocation(
            uuid.uuid4(),
            function,
            method,
            path,
            headers,
            body,
            self.max_retries(function) if max_retries is None else max_retries,
            idempotency_key,
            callback_url,
            trigger,
        )
        try:
            return await self._enqueues.submit(item)
        except asyncpg.DataError as e:
            raise BadRequest(f"the request cannot be stored: {e}") from e
        except (OSError, asyncpg.PostgresError) as e:
            raise Unavailable(
                "the queue could not store the invocation; nothing was accepted",
                headers={"Retry-After": "1"},
            ) from e

    async def get(self, id: uuid.UUID) -> InvocationOut:
        row = await self.store.get(id)
        if row is None:
            raise NotFound(f"invocation {id} not found")
        return invocation_out(row)

    async def find(
        self, function: str | None, status: str | None, limit: int
    ) -> list[InvocationOut]:
        return [invocation_out(r) for r in await self.store.find(function, status, limit)]

    async def redrive(self, id: uuid.UUID) -> InvocationOut:
        if not await self.store.redrive(id):
            current = await self.get(id)
            raise Conflict(
                f"invocation {id} is {current.status}; only dead or failed ones can be retried"
            )
        return await self.get(id)

    async def _write_alone(self, outcome: Outcome) -> bool:
        """One outcome; a response the database refuses is recorded without its body."""
        try:
            return outcome.id in await self.store.finish(self.worker_id, [outcome])
        except asyncpg.DataError as e:
            stripped = dataclasses.replace(
                outcome, result_headers=None, result_body=None, error=f"result not stored: {e}"
            )
            return outcome.id in await self.store.finish(self.worker_id, [stripped])

    async def record(self, outcome: Outcome) -> bool:
        """Write an attempt's outcome; False when the claim was lost (someone else runs it)."""
        return await self._results.submit(outcome)

    async def _write_outcomes(self, outcomes: list[Outcome]) -> list[bool | BaseException]:
        # Results must not be lost to a blip: retry the write; past that, leases expire
        # and the invocations run again (at least once).
        delay = 0.05
        for _ in range(8):
            try:
                ours = await self.store.finish(self.worker_id, outcomes)
                return [o.id in ours for o in outcomes]
            except asyncpg.DataError:
                return [await self._write_alone(o) for o in outcomes]
            except (OSError, asyncpg.PostgresError) as e:
                log.warning("writing results failed; retrying", extra={"error": str(e)})
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
        return [False for _ in outcomes]
