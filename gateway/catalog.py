"""The function catalog: what is deployed, read from Postgres, current on every gateway.

Postgres is the only truth; this is its cache. Every change to functions, keys or
secrets is announced on `kapal_catalog` (triggers, whoever made it) and reloaded here at
once; a periodic full reload heals a missed notification within `refresh_s`. Each load
is pushed into the scheduler's pools (`Scheduler.update`: every version serving traffic
and the splits) and the secret mounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from gateway import db
from gateway.keys import KeyCache
from gateway.store import FunctionStore
from gateway.supervisor import either
from gateway.vault import Secrets
from scheduler.models import FunctionSpec
from scheduler.scheduler import Scheduler
from scheduler.traffic import WHOLE

log = logging.getLogger("kapal.gateway.catalog")

CHANNEL = "kapal_catalog"
FUNCTIONS, KEYS, SECRETS = "functions", "keys", "secrets"


class Catalog:
    def __init__(
        self,
        store: FunctionStore,
        scheduler: Scheduler,
        secrets: Secrets,
        keys: KeyCache,
        refresh_s: float = 2.0,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.secrets = secrets
        self.keys = keys
        self.refresh_s = refresh_s
        # The current version of every deployed function, by name.
        self.specs: dict[str, FunctionSpec] = {}
        # How the traffic of functions served by several versions splits: version -> %.
        self.traffic: dict[str, dict[int, int]] = {}
        # What each function's secret folder holds: its serving versions' secrets.
        self._mounted: dict[str, FunctionSpec] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        # Called after each functions reload (e.g. to forget the rate limits of the deleted).
        self.on_change: list[Callable[[dict[str, FunctionSpec]], None]] = []

    def get(self, name: str) -> FunctionSpec | None:
        return self.specs.get(name)

    def users_of(self, secret: str) -> list[str]:
        """Functions with a version serving traffic that mounts `secret`."""
        return sorted(n for n, s in self._mounted.items() if secret in s.secrets)

    async def load(self) -> list[FunctionSpec]:
        """The first load, before anything is served."""
        await self.keys.refresh()
        await self.reload_functions()
        return list(self.specs.values())

    async def reload_functions(self) -> None:
        async with self._lock:
            serving = await self.store.serving()
            specs = {s.spec.name: s.spec for s in serving if s.current}
            traffic: dict[str, dict[int, int]] = {}
            secrets: dict[str, set[str]] = {}
            for s in serving:
                secrets.setdefault(s.spec.name, set()).update(s.spec.secrets)
                if s.weight < WHOLE:
                    traffic.setdefault(s.spec.name, {})[s.spec.version] = s.weight
            # One folder per function: under a split it holds what every version mounts.
            mounts = {
                name: spec.model_copy(update={"secrets": sorted(secrets[name])})
                for name, spec in specs.items()
            }
            for name, mount in mounts.items():
                if self._mounted.get(name) != mount:
                    await self._mount(mount)
            for name in self.specs.keys() - specs.keys():
                self.secrets.forget(name)
            self.specs, self.traffic, self._mounted = specs, traffic, mounts
            self.scheduler.update([s.spec for s in serving if s.spec.name in specs], traffic)
            for hook in self.on_change:
                hook(specs)

    async def remount_secrets(self) -> None:
        async with self._lock:
            for spec in self._mounted.values():
                if spec.secrets:
                    await self._mount(spec)

    async def _mount(self, spec: FunctionSpec) -> None:
        try:
            await self.secrets.mount(spec)
        except Exception as e:  # a bad key or a vanished secret must not stop the others
            log.error("secrets not mounted", extra={"function": spec.name, "error": str(e)})

    def changed(self, what: str) -> None:
        """A notification: reload `what` soon (coalesced)."""
        self._dirty.add(what)
        self._wake.set()

    async def _apply(self, dirty: set[str]) -> None:
        if FUNCTIONS in dirty:
            await self.reload_functions()
        if SECRETS in dirty:
            await self.remount_secrets()
        if KEYS in dirty:
            await self.keys.refresh()

    async def run(self, database_url: str, stop: asyncio.Event) -> None:
        """Follow the notifications (reconnecting), and reload everything now and then."""
        listener = asyncio.create_task(
            self._listen(database_url, stop), name="kapal-catalog-listen"
        )
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(either(self._wake, stop), self.refresh_s)
                self._wake.clear()
                dirty, self._dirty = self._dirty or {FUNCTIONS, KEYS}, set()
                if stop.is_set():
                    break
                try:
                    await self._apply(dirty)
                except (OSError, asyncpg.PostgresError) as e:
                    log.warning("catalog reload failed", extra={"error": str(e)})
                    self._dirty |= dirty
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _listen(self, database_url: str, stop: asyncio.Event) -> None:
        await db.listen(database_url, CHANNEL, self.changed, self._missed, stop, "catalog")

    def _missed(self) -> None:
        """Whatever changed while we were not listening."""
        self.changed(FUNCTIONS)
        self.changed(SECRETS)
        self.changed(KEYS)
