"""The scheduler: one pool per function, adoption at start-up, and the scaling loop.

Every `sample_s` the loop records each pool's observed concurrency; every `decide_s` it
asks the (pure) autoscaler for a desired count and applies it, removes idle standbys and
refills the prewarmed containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from scheduler import probe
from scheduler.autoscaler import (
    AutoscalerConfig,
    ConcurrencyWindow,
    ScaleInputs,
    ScalerState,
    decide,
)
from scheduler.backend import ContainerBackend, Running
from scheduler.docker_backend import LABEL_INSTANCE
from scheduler.models import FunctionSpec
from scheduler.pool import Instance, InstanceState, Pool, PoolConfig
from scheduler.prewarm import PrewarmPool

log = logging.getLogger("kapal.scheduler")


@dataclass(frozen=True)
class InstanceView:
    id: str
    version: int
    state: str
    in_flight: int
    address: str
    container: str
    tier: str


@dataclass(frozen=True)
class PoolView:
    desired: int
    ready: int
    starting: int
    paused: int
    draining: int
    in_flight: int
    waiting: int
    rejected: int
    panic: bool


class _Scaled:
    """What the scaling loop keeps per pool."""

    def __init__(self, horizon_s: float) -> None:
        self.window = ConcurrencyWindow(horizon_s)
        self.state = ScalerState()


class Scheduler:
    def __init__(
        self,
        backend: ContainerBackend,
        pool_config: PoolConfig | None = None,
        autoscaler: AutoscalerConfig | None = None,
        prewarm: PrewarmPool | None = None,
        sample_s: float = 0.25,
        decide_s: float = 1.0,
    ) -> None:
        self.backend = backend
        self.pool_config = pool_config or PoolConfig()
        self.autoscaler = autoscaler or AutoscalerConfig()
        self.prewarm = prewarm
        self.sample_s = sample_s
        self.decide_s = decide_s
        self.pools: dict[str, Pool] = {}
        self._scaled: dict[str, _Scaled] = {}
        self._stop = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._unwatch: Callable[[], None] | None = None

    def pool(self, name: str) -> Pool | None:
        return self.pools.get(name)

    def _new_pool(self, spec: FunctionSpec) -> Pool:
        self._scaled[spec.name] = _Scaled(self.autoscaler.stable_window_s)
        return Pool(spec, self.backend, probe.wait_ready, self.pool_config, prewarm=self.prewarm)

    async def start(self, specs: list[FunctionSpec]) -> None:
        """Load the deployed functions, adopt or remove leftover containers, start the reaper."""
        for spec in specs:
            self.pools[spec.name] = self._new_pool(spec)
        await self._adopt_or_remove(await self.backend.list_managed())
        for pool in self.pools.values():
            pool.ensure_min()
        if self.prewarm is not None:
            self.prewarm.refill()
        self._unwatch = self.backend.watch(self._container_exited)
        self._loop = asyncio.create_task(self._scale_loop(), name="kapal-scaler")

    def _container_exited(self, container_id: str, action: str) -> None:
        for pool in self.pools.values():
            pool.container_exited(container_id, action)

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

    async def _scale_loop(self) -> None:
        next_decision = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.sample_s)
            now = time.monotonic()
            for name, pool in list(self.pools.items()):
                self._scaled[name].window.record(now, pool.observed())
            if now < next_decision:
                continue
            next_decision = now + self.decide_s
            for name, pool in list(self.pools.items()):
                try:
                    self._decide(now, pool, self._scaled[name])
                    pool.reap()
                except Exception:
                    log.exception("scaling failed", extra={"function": name})
            starting = any(p.count(InstanceState.STARTING) for p in self.pools.values())
            if self.prewarm is not None and not starting:
                self.prewarm.refill()

    def _decide(self, now: float, pool: Pool, scaled: _Scaled) -> None:
        cfg = self.autoscaler
        scaling = pool.spec.scaling
        inputs = ScaleInputs(
            stable_concurrency=scaled.window.average(now, cfg.stable_window_s),
            panic_concurrency=scaled.window.average(now, cfg.panic_window_s),
            current_concurrency=scaled.window.latest(),
            ready=pool.count(InstanceState.READY),
            concurrency=scaling.concurrency,
            min_instances=scaling.min,
            max_instances=scaling.max,
        )
        decision = decide(now, inputs, scaled.state, cfg)
        scaled.state = decision.state
        pool.panic = decision.panic
        if decision.desired != len(pool.active()):
            log.info(
                "scaling",
                extra={
                    "function": pool.spec.name,
                    "desired": decision.desired,
                    "active": len(pool.active()),
                    "panic": decision.panic,
                    "stable": round(inputs.stable_concurrency, 2),
                    "burst": round(inputs.panic_concurrency, 2),
                },
            )
        pool.scale_to(decision.desired)

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
        self._scaled.pop(name, None)
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
            InstanceView(
                i.id,
                i.version,
                i.state.value,
                i.in_flight,
                i.address,
                i.container_id[:12],
                i.tier.value,
            )
            for i in pool.instances.values()
        ]

    def status(self, name: str) -> PoolView | None:
        pool = self.pools.get(name)
        if pool is None:
            return None
        return PoolView(
            desired=pool.desired,
            ready=pool.count(InstanceState.READY),
            starting=pool.count(InstanceState.STARTING),
            paused=pool.count(InstanceState.PAUSED),
            draining=sum(1 for i in pool.instances.values() if i.state is InstanceState.DRAINING),
            in_flight=sum(i.in_flight for i in pool.instances.values()),
            waiting=pool.waiting,
            rejected=pool.rejected,
            panic=pool.panic,
        )

    async def close(self) -> None:
        """Stop the scaling loop and every instance: nothing is left running."""
        self._stop.set()
        if self._unwatch is not None:
            self._unwatch()
        if self._loop is not None:
            await self._loop
        pools, self.pools = list(self.pools.values()), {}
        await asyncio.gather(*(p.close(grace_s=self.pool_config.stop_grace_s) for p in pools))
        if self.prewarm is not None:
            await self.prewarm.close()
