"""The scheduler: one pool per function, the instances every gateway can route to, and the
scaling loop of the one gateway that leads.

Several gateways may share one backend. Each routes to every instance it finds there
(listed at start, then followed through the backend's events and a periodic resync).
One of them leads (the gateway decides which, e.g. by a database lock): only the leader
starts, parks and stops instances and keeps the prewarmed ones, deciding from the
concurrency every gateway reports through `Peers`.

Every `sample_s` the loop records (leader) or reports (others) each pool's concurrency;
every `decide_s` the leader asks each function's `Scaler` for a count and applies it,
removes idle standbys and refills the prewarmed containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from scheduler import probe
from scheduler.autoscaler import AutoscalerConfig
from scheduler.backend import ContainerBackend, Running
from scheduler.docker_backend import LABEL_INSTANCE, LABEL_RUNTIME
from scheduler.models import PREWARM_NAME, RUNTIME_HEALTH_PATH, FunctionSpec
from scheduler.pool import Instance, InstanceState, Pool, PoolConfig
from scheduler.prewarm import PrewarmPool
from scheduler.scaler import Scaler

log = logging.getLogger("kapal.scheduler")

# A gateway's load report counts this long.
LOAD_TTL_S = 1.0
# A parked instance that another gateway never froze serves again after this long.
PARK_TTL_S = 10.0


class Peers(Protocol):
    """The other gateways sharing this backend (a broadcast channel)."""

    def publish(self, message: dict[str, Any]) -> None:
        """Send `message` to every other gateway (their `Scheduler.receive`)."""
        ...

    def others(self) -> int:
        """How many other gateways were heard from recently."""
        ...


class Alone:
    """No other gateway."""

    def publish(self, message: dict[str, Any]) -> None:
        pass

    def others(self) -> int:
        return 0


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


def _instance_id(running: Running) -> str:
    return running.labels.get(LABEL_INSTANCE) or running.id[:8]


class Scheduler:
    def __init__(
        self,
        backend: ContainerBackend,
        pool_config: PoolConfig | None = None,
        autoscaler: AutoscalerConfig | None = None,
        prewarm: PrewarmPool | None = None,
        peers: Peers | None = None,
        sample_s: float = 0.25,
        decide_s: float = 1.0,
        resync_s: float = 5.0,
    ) -> None:
        self.backend = backend
        self.pool_config = pool_config or PoolConfig()
        self.autoscaler = autoscaler or AutoscalerConfig()
        self.prewarm = prewarm
        self.peers: Peers = peers or Alone()
        self.sample_s = sample_s
        self.decide_s = decide_s
        self.resync_s = resync_s
        self.pools: dict[str, Pool] = {}
        # Pools of deleted functions still stopping their instances.
        self._removing: dict[str, asyncio.Task[None]] = {}
        # Told what happened to each instance (for the function's log); set before start.
        self.events: Callable[[Instance, str, str], None] | None = None
        self.leading = False
        # Concurrency other gateways reported: gateway -> (when, {function: n}).
        self._remote: dict[str, tuple[float, dict[str, int]]] = {}
        self._reported: set[str] = set()
        self._discovering: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._unwatch: Callable[[], None] | None = None

    def pool(self, name: str) -> Pool | None:
        return self.pools.get(name)

    def _new_pool(self, spec: FunctionSpec) -> Pool:
        pool = Pool(
            spec,
            self.backend,
            probe.wait_ready,
            self.pool_config,
            prewarm=self.prewarm,
            scaler=Scaler(self.autoscaler),
            on_demand=self._report_now,
            before_pause=self._before_pause,
        )
        pool.announce = self._announce
        pool.events = self.events
        pool.leading = self.leading
        return pool

    # -- what is deployed ----------------------------------------------------------------

    async def start(self, specs: list[FunctionSpec]) -> None:
        """Load the deployed functions, find their instances, follow the backend."""
        self.update(specs)
        self._unwatch = self.backend.watch(self._on_event)
        for running in await self.backend.list_managed():
            self._discover_soon(running.id, running)
        self._loop = asyncio.create_task(self._run(), name="kapal-scaler")

    def update(self, specs: list[FunctionSpec]) -> None:
        """Make the pools match what is deployed: new functions, new versions, deletions."""
        wanted = {s.name: s for s in specs}
        for name, spec in wanted.items():
            pool = self.pools.get(name)
            if pool is None:
                pool = self.pools[name] = self._new_pool(spec)
                pool.ensure_min()
            elif spec.version != pool.spec.version:
                pool.update(spec)
        for name in [n for n in self.pools if n not in wanted]:
            pool = self.pools.pop(name)
            task = self._spawn(pool.close(grace_s=0.0, stop=self.leading), f"remove-{name}")
            self._removing[name] = task
            task.add_done_callback(self._removed)

    # -- leading -------------------------------------------------------------------------

    async def lead(self) -> None:
        """Become the gateway that scales: adopt what runs, remove what is not wanted."""
        if self.leading:
            return
        self.leading = True
        log.info("leading: this gateway now scales the pools")
        known = {i.container_id for p in self.pools.values() for i in p.instances.values()}
        found = [c for c in await self.backend.list_managed() if c.id not in known]
        await asyncio.gather(*(self._adopt_or_remove(c) for c in found))
        for pool in self.pools.values():
            pool.take_over()
        if self.prewarm is not None:
            self.prewarm.refill()

    def follow(self) -> None:
        """Stop scaling (another gateway leads now); keep routing."""
        if not self.leading:
            return
        self.leading = False
        log.warning("no longer leading: another gateway scales the pools")
        for pool in self.pools.values():
            pool.leading = False

    async def _adopt_or_remove(self, c: Running) -> None:
        status, body = 0, b""
        # An image function's own health path; a runtime's (even a specialized one's) else.
        known = self.pools.get(c.function)
        spec = known.spec if known is not None and known.spec.from_image else None
        if c.address:
            with contextlib.suppress(Exception):
                path = RUNTIME_HEALTH_PATH if spec is None else spec.probe_path
                status, body = await asyncio.wait_for(probe.health(c.address, path), 2.0)
        if probe.healthy(spec, status):
            function, version = c.function, c.version
            # The runtime knows best (a specialized prewarm); an image's body is its own.
            served = probe.identity(body) if spec is None else None
            if served is not None:
                function, version = served[0], served[1]
            elif function == PREWARM_NAME and self.prewarm is not None and not c.paused:
                self.prewarm.adopt(c, c.labels.get(LABEL_RUNTIME, "python"))
                log.info("prewarmed container adopted", extra={"container": c.id[:12]})
                return
            pool = self.pools.get(function)
            if pool is not None and version == pool.spec.version:
                inst = pool.observe(c, _instance_id(c), pool.spec)
                if inst is not None:
                    log.info("instance adopted", extra={"function": function, "instance": inst.id})
                    return
        log.info("leftover container removed", extra={"container": c.id[:12]})
        # Old versions may still finish requests other gateways sent: a graceful stop.
        await self.backend.remove(c.id, self.pool_config.stop_grace_s if c.address else 0.0)

    # -- instances other gateways start, park and stop ------------------------------------

    def _on_event(self, container_id: str, action: str) -> None:
        if action in ("die", "oom", "destroy"):
            for pool in self.pools.values():
                pool.container_exited(container_id, action)
            if self.prewarm is not None:
                self.prewarm.forget(container_id)
            return
        if self.leading:
            return  # the leader made these changes itself
        inst = self._find(container_id)
        if action == "pause":
            if inst is not None and inst[1].state is not InstanceState.DRAINING:
                inst[0].set_state(inst[1], InstanceState.PAUSED)
                inst[1].frozen = True
        elif action == "unpause" and inst is not None:
            if inst[1].state is InstanceState.PAUSED:
                inst[0].set_state(inst[1], InstanceState.READY)
        elif inst is None:  # started, thawed or renamed: maybe one to route to
            self._discover_soon(container_id)

    def _find(self, container_id: str) -> tuple[Pool, Instance] | None:
        for pool in self.pools.values():
            inst = pool.find(container_id)
            if inst is not None:
                return pool, inst
        return None

    def _discover_soon(self, container_id: str, running: Running | None = None) -> None:
        if container_id in self._discovering:
            return
        self._discovering.add(container_id)
        self._spawn(self._discover(container_id, running), f"discover-{container_id[:12]}")

    async def _discover(self, container_id: str, running: Running | None) -> None:
        try:
            c = running or await self.backend.inspect(container_id)
            if c is None or not c.address or self._find(c.id) is not None:
                return
            pool = self.pools.get(c.function)
            if pool is None or c.version != pool.spec.version:
                return
            if not c.paused:
                deadline = time.monotonic() + self.pool_config.start_timeout_s
                await probe.wait_ready(c.address, deadline, pool.spec)
            pool = self.pools.get(c.function)
            if pool is not None and pool.observe(c, _instance_id(c), pool.spec) is not None:
                log.debug("instance found", extra={"function": c.function, "container": c.id[:12]})
        except Exception as e:
            log.debug("container not routed to", extra={"container": container_id, "error": str(e)})
        finally:
            self._discovering.discard(container_id)

    async def _resync(self) -> None:
        """Heal missed events: route to what runs, drop what is gone."""
        found = {c.id: c for c in await self.backend.list_managed()}
        now = time.monotonic()
        for pool in list(self.pools.values()):
            for inst in list(pool.instances.values()):
                c = found.get(inst.container_id)
                if inst.state is InstanceState.STARTING or not inst.container_id:
                    continue
                if c is None or not c.address:
                    pool.container_exited(inst.container_id, "die")
                elif (
                    not self.leading
                    and inst.state is InstanceState.PAUSED
                    and not c.paused
                    and now - inst.since > PARK_TTL_S
                ):
                    pool.set_state(inst, InstanceState.READY)
        if not self.leading:
            for c in found.values():
                if c.address and self._find(c.id) is None:
                    self._discover_soon(c.id, c)

    # -- what every gateway observes --------------------------------------------------------

    def receive(self, sender: str, message: dict[str, Any]) -> None:
        """A message another gateway published."""
        kind = message.get("t")
        if kind == "load":
            loads = {str(k): int(v) for k, v in (message.get("f") or {}).items()}
            before = self._remote.get(sender, (0.0, {}))[1]
            self._remote[sender] = (time.monotonic(), loads)
            if self.leading:
                for name, n in loads.items():
                    pool = self.pools.get(name)
                    if pool is not None and n > before.get(name, 0):
                        pool.remote = self._remote_load(name, time.monotonic())
                        pool.scaler.poke(time.monotonic(), pool, pool.observed())
        elif kind in ("park", "ready") and not self.leading:
            found = self._find(str(message.get("c", "")))
            if found is None:
                return
            pool, inst = found
            if kind == "park" and inst.state is InstanceState.READY:
                pool.set_state(inst, InstanceState.PAUSED)
            elif kind == "ready" and inst.state is InstanceState.PAUSED:
                pool.set_state(inst, InstanceState.READY)

    def _remote_load(self, name: str, now: float) -> int:
        return sum(
            loads.get(name, 0) for at, loads in self._remote.values() if now - at <= LOAD_TTL_S
        )

    def _report_now(self, pool: Pool) -> None:
        """A request waits here while another gateway leads: tell it at once."""
        self.peers.publish({"t": "load", "f": {pool.spec.name: pool.local()}})

    def _report(self) -> None:
        loads = {name: n for name, p in self.pools.items() if (n := p.local())}
        if loads or self._reported:
            self.peers.publish({"t": "load", "f": loads})
        self._reported = set(loads)

    def _announce(self, kind: str, inst: Instance) -> None:
        if self.peers.others():
            self.peers.publish({"t": kind, "c": inst.container_id})

    async def _before_pause(self, inst: Instance) -> bool:
        """Freeze only once no gateway has a request on it."""
        if not self.peers.others():
            return True
        if inst.spec.from_image:
            return False  # its server cannot say what other gateways sent: parked, not frozen
        await asyncio.sleep(0.05)  # the others hear "park" and stop sending to it
        deadline = time.monotonic() + inst.spec.limits.timeout_s
        while inst.state is InstanceState.PAUSED and time.monotonic() < deadline:
            if await probe.in_flight(inst.address) == 0:
                return True
            await asyncio.sleep(0.02)
        return False

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        next_decision = next_resync = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.sample_s)
            now = time.monotonic()
            for gw in [g for g, (at, _) in self._remote.items() if now - at > LOAD_TTL_S]:
                del self._remote[gw]
            try:
                self._report()
            except Exception:
                log.exception("load report failed")
            for name, pool in list(self.pools.items()):
                pool.remote = self._remote_load(name, now)
                if self.leading:
                    pool.scaler.record(now, pool.observed())
            if now >= next_resync:
                next_resync = now + self.resync_s
                try:
                    await self._resync()
                except Exception as e:
                    log.warning("resync failed", extra={"error": str(e)})
            if not self.leading or now < next_decision:
                continue
            next_decision = now + self.decide_s
            for name, pool in list(self.pools.items()):
                try:
                    pool.scaler.tick(now, pool)
                    pool.reap()
                except Exception:
                    log.exception("scaling failed", extra={"function": name})
            starting = any(p.count(InstanceState.STARTING) for p in self.pools.values())
            if self.prewarm is not None and not starting:
                self.prewarm.refill()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _removed(self, task: asyncio.Task[None]) -> None:
        for name, t in list(self._removing.items()):
            if t is task:
                del self._removing[name]

    async def removed(self, name: str) -> None:
        """Wait until the pool of a deleted function has stopped what it ran."""
        task = self._removing.get(name)
        if task is not None:
            await asyncio.shield(task)

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

    async def close(self, *, last: bool | None = None) -> None:
        """Stop the loop. The last gateway stops every instance (nothing is left running);
        one that leaves others behind leaves the instances to them."""
        self._stop.set()
        if self._unwatch is not None:
            self._unwatch()
        if self._loop is not None:
            await self._loop
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if last is None:
            last = not self.peers.others()
        pools, self.pools = list(self.pools.values()), {}
        grace = self.pool_config.stop_grace_s
        await asyncio.gather(*(p.close(grace_s=grace, stop=last) for p in pools))
        if self.prewarm is not None:
            await self.prewarm.close(remove=last)
        if last:  # whatever other gateways started and left behind
            leftovers = await self.backend.list_managed()
            await asyncio.gather(*(self.backend.remove(c.id) for c in leftovers))
