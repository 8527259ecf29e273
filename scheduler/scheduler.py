"""The scheduler: one pool per function, built images, adoption at start-up, idle reaping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from scheduler import probe
from scheduler.backend import ContainerBackend, Running
from scheduler.docker_backend import LABEL_INSTANCE
from scheduler.models import FunctionSpec
from scheduler.pool import Instance, InstanceState, Pool, PoolConfig

log = logging.getLogger("kapal.scheduler")


@dataclass(frozen=True)
class InstanceView:
    id: str
    version: int
    state: str
    in_flight: int
    address: str


class Scheduler:
    def __init__(
        self,
        backend: ContainerBackend,
        pool_config: PoolConfig | None = None,
        reap_interval_s: float = 1.0,
    ) -> None:
        self.backend = backend
        self.pool_config = pool_config or PoolConfig()
        self.reap_interval_s = reap_interval_s
        self.pools: dict[str, Pool] = {}
        self._stop = asyncio.Event()
        self._reaper: asyncio.Task[None] | None = None

    def pool(self, name: str) -> Pool | None:
        return self.pools.get(name)

    def _new_pool(self, spec: FunctionSpec) -> Pool:
        return Pool(spec, self.backend, probe.wait_ready, self.pool_config)

    async def start(self, specs: list[FunctionSpec]) -> None:
        """Load the deployed functions, adopt or remove leftover containers, start the reaper."""
        for spec in specs:
            self.pools[spec.name] = self._new_pool(spec)
        await self._adopt_or_remove(await self.backend.list_managed())
        for pool in self.pools.values():
            pool.ensure_min()
        self._reaper = asyncio.create_task(self._reap_loop(), name="kapal-reaper")

    async def _adopt_or_remove(self, found: list[Running]) -> None:
        async def one(c: Running) -> None:
            pool = self.pools.get(c.function)
            if pool is not None and c.version == pool.spec.version and c.address:
                with contextlib.suppress(Exception):
                    status, _ = await asyncio.wait_for(probe.health(c.address), 2.0)
                    if status == 200:
                        now = time.monotonic()
                        iid = c.labels.get(LABEL_INSTANCE) or c.id[:8]
                        inst = Instance(iid, pool.spec, InstanceState.READY, now, now)
                        inst.container_id, inst.address = c.id, c.address
                        pool.adopt(inst)
                        log.info(
                            "instance adopted", extra={"function": c.function, "instance": iid}
                        )
                        return
            log.info("leftover container removed", extra={"container": c.id[:12]})
            await self.backend.remove(c.id)

        await asyncio.gather(*(one(c) for c in found))

    async def _reap_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.reap_interval_s)
            for pool in list(self.pools.values()):
                try:
                    pool.reap_idle()
                except Exception:
                    log.exception("reaping failed", extra={"function": pool.spec.name})

    async def deploy(self, spec: FunctionSpec) -> None:
        """Route the function to `spec` (a new function or a new version)."""
        pool = self.pools.get(spec.name)
        if pool is None:
            pool = self.pools[spec.name] = self._new_pool(spec)
            pool.ensure_min()
        else:
            pool.update(spec)

    async def remove(self, name: str) -> None:
        pool = self.pools.pop(name, None)
        if pool is not None:
            await pool.close(grace_s=0.0)

    def set_backlog(self, name: str, depth: int) -> None:
        """How many queued invocations wait for `name` (feeds scaling)."""
        pool = self.pools.get(name)
        if pool is not None:
            pool.backlog = depth

    def describe(self, name: str) -> list[InstanceView]:
        pool = self.pools.get(name)
        if pool is None:
            return []
        return [
            InstanceView(i.id, i.version, i.state.value, i.in_flight, i.address)
            for i in pool.instances.values()
        ]

    async def close(self) -> None:
        """Stop the reaper and every instance: nothing is left running."""
        self._stop.set()
        if self._reaper is not None:
            await self._reaper
        pools, self.pools = list(self.pools.values()), {}
        await asyncio.gather(*(p.close(grace_s=self.pool_config.stop_grace_s) for p in pools))
