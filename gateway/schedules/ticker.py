"""The loop that fires due schedules (every gateway runs one; row locks keep it once)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from gateway.catalog import Catalog
from gateway.schedules.store import ScheduleStore

log = logging.getLogger("kapal.gateway.schedules")


class Ticker:
    def __init__(self, store: ScheduleStore, catalog: Catalog, every_s: float) -> None:
        self.store = store
        self.catalog = catalog
        self.every_s = every_s

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            retries = {n: s.async_.max_retries for n, s in self.catalog.specs.items()}
            try:
                while await self.store.fire_due(retries) and not stop.is_set():
                    pass
            except (OSError, asyncpg.PostgresError) as e:
                log.warning("firing schedules failed", extra={"error": str(e)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)
