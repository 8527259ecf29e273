"""The queue's parts wired together; features (webhooks, jobs, schedules) build on it."""

from __future__ import annotations

import logging
import os
import secrets
import socket

import asyncpg

from gateway.catalog import Catalog
from gateway.invoke import Invoker
from gateway.metrics import Metrics
from gateway.queue.callbacks import CallbackSender
from gateway.queue.manager import QueueManager
from gateway.queue.store import QueueStore
from gateway.queue.worker import QueueWorker
from gateway.settings import Settings
from gateway.supervisor import Supervisor
from scheduler.scheduler import Scheduler

log = logging.getLogger("kapal.gateway.queue")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Queue connections never change session state, so skip asyncpg's RESET round trip."""


class QueueService:
    @classmethod
    async def open(
        cls,
        settings: Settings,
        scheduler: Scheduler,
        invoker: Invoker,
        catalog: Catalog,
        metrics: Metrics,
    ) -> QueueService:
        """The queue on a connection pool of its own (the hot path must not wait on the
        management API's connections, nor they on it)."""
        pg = await asyncpg.create_pool(
            settings.database_url, min_size=2, max_size=12, reset=_keep_session
        )
        return cls(settings, pg, scheduler, invoker, catalog, metrics)

    def __init__(
        self,
        settings: Settings,
        pg: asyncpg.Pool,
        scheduler: Scheduler,
        invoker: Invoker,
        catalog: Catalog,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.pg = pg
        self.scheduler = scheduler
        worker_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.store = QueueStore(pg)
        self.manager = QueueManager(self.store, catalog, worker_id)
        self.worker = QueueWorker(
            settings, self.store, self.manager, invoker, scheduler, catalog, metrics
        )
        self.callbacks = CallbackSender(settings, self.store)
        # Writers stop last: attempts still finishing need somewhere to record results.
        self.writers = Supervisor()
        self.writers.add("kapal-enqueue", self.manager.run_enqueues)
        self.writers.add("kapal-results", self.manager.run_results)
        self.loops = Supervisor()
        self.loops.add("kapal-claims", self.worker.run_claims)
        self.loops.add("kapal-queue-upkeep", self.worker.run_upkeep)
        self.loops.add("kapal-queue-listener", self.worker.run_listener)
        self.loops.add("kapal-callbacks", self.callbacks.run)

    async def start(self) -> None:
        self.writers.start()
        self.loops.start()
        log.info("queue started", extra={"worker": self.manager.worker_id})

    async def close(self) -> None:
        await self.loops.close()
        await self.worker.drain(self.settings.stop_grace_s)
        await self.writers.close()
        await self.worker.release()
        await self.pg.close()
