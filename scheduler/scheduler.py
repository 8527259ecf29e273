"""The scheduler: one pool per version serving traffic, the instances every gateway can
route to, and the scaling loop of the one gateway that leads.

A function's traffic goes to one version, or is split by weight between several
(`scheduler.traffic`); each such version has a pool of its own, scaled by the load its
share brings. A version leaving the traffic drains and stops like a deleted function's.

Several gateways may share one backend. Each routes to every instance it finds there
(listed at start, then followed through the backend's events and a periodic resync).
One of them leads (the gateway decides which, e.g. by a database lock): only the leader
starts, parks and stops instances and keeps the prewarmed ones, deciding from the
concurrency every gateway reports through `Peers`.

Every `sample_s` the loop records (leader) or reports (others) each pool's concurrency;
every `decide_s` the leader asks each function's `Scaler` for a count and applies it,
removes idle standbys and refills the prewarmed containers.

On a replicated backend (`replicas`: a Swarm service per version) the leader applies a
count as the service's replica count, and every gateway, the leader too, routes to the
tasks it discovers; there are no standbys or prewarmed containers to keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from scheduler import probe
from scheduler.autoscaler import AutoscalerConfig
from scheduler.backend import ContainerBackend, ReplicaBackend, Running
from scheduler.docker_backend import LABEL_INSTANCE, LABEL_RUNTIME
from scheduler.forks import Forks
from scheduler.keepalive import IdleTracker, KeepAliveConfig
from scheduler.models import PREWARM_NAME, RUNTIME_HEALTH_PATH, FunctionSpec
from scheduler.pool import Instance, InstanceState, Pool, PoolConfig
from scheduler.prewarm import PrewarmPool
from scheduler.scaler import Scaler
from scheduler.traffic import Routes, Split

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


def load_key(pool: Pool) -> str:
    """How gateways name a version's pool when they report its load to each other."""
    return f"{pool.spec.name}@{pool.spec.version}"


def _split(
    name: str, weights: Mapping[int, int] | None, specs: Mapping[int, FunctionSpec]
) -> Split:
    """The split of `weights`; without one (or with one naming a version not given),
    the highest version given takes it all."""
    if weights:
        try:
            split = Split.of(weights)
        except ValueError as e:
            log.error("traffic split ignored", extra={"function": name, "error": str(e)})
        else:
            if set(split.versions) <= specs.keys():
                return split
            log.error("traffic split names a version not given", extra={"function": name})
    return Split.only(max(specs))


async def _close(pools: list[Pool], *, stop: bool) -> None:
    await asyncio.gather(*(p.close(grace_s=0.0, stop=stop) for p in pools))


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
        replicas: ReplicaBackend | None = None,
        keepalive: KeepAliveConfig | None = None,
        forks: Forks | None = None,
    ) -> None:
        self.backend = backend
        # Grows a pool's instances inside its containers (none on a replicated backend).
        self.forks = forks if replicas is None else None
        # A learned keep-alive per function (None: the fixed `idle_timeout_s`); pools of
        # a replicated backend have no standbys and keep the fixed one.
        self.keepalive = keepalive
        # The backend runs replicas of a service per version (Swarm): pools set counts.
        self.replicas = replicas
        self.pool_config = pool_config or PoolConfig()
        self.autoscaler = autoscaler or AutoscalerConfig()
        self.prewarm = prewarm
        self.peers: Peers = peers or Alone()
        self.sample_s = sample_s
        self.decide_s = decide_s
        self.resync_s = resync_s
        # The pool of each function's primary version (the largest share): status, limits.
        self.pools: dict[str, Pool] = {}
        # Every pool serving traffic, by function and version.
        self.versions: dict[str, dict[int, Pool]] = {}
        # What requests draw from, per function (rebuilt when what is deployed changes).
        self.routes: dict[str, Routes] = {}
        # Pools of versions no longer serving, until their instances have drained.
        self._retired: list[Pool] = []
        # Pools of deleted functions still stopping their instances.
        self._removing: dict[str, asyncio.Task[None]] = {}
        # Told what happened to each instance (for the function's log); set before start.
        self.events: Callable[[Instance, str, str], None] | None = None
        # Opens a connection to an instance about to serve (see Pool.preconnect); set
        # before start.
        self.preconnect: Callable[[str], None] | None = None
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
        """The pool of `name`'s primary version."""
        return self.pools.get(name)

    def pick(self, name: str) -> Pool | None:
        """The pool a request to `name` goes to, drawn by the traffic split (hot path)."""
        routes = self.routes.get(name)
        return None if routes is None else routes.choose()

    def all_pools(self) -> list[Pool]:
        """Every pool: those serving, then retired ones whose instances still drain."""
        return [p for pools in self.versions.values() for p in pools.values()] + self._retired

    def _serving(self, name: str, version: int) -> Pool | None:
        return self.versions.get(name, {}).get(version)

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
            replicas=self.replicas,
            keepalive=(
                IdleTracker(self.keepalive)
                if self.keepalive is not None and self.replicas is None
                else None
            ),
            forks=self.forks,
        )
        pool.announce = self._announce
        pool.events = self.events
        pool.preconnect = self.preconnect
        pool.leading = self.leading
        if self.prewarm is not None:
            self.prewarm.prefetch(spec)
        return pool

    # -- what is deployed ----------------------------------------------------------------

    async def start(
        self,
        specs: list[FunctionSpec] | None = None,
        traffic: Mapping[str, Mapping[int, int]] | None = None,
    ) -> None:
        """Load the deployed functions (unless already `update`d), find their instances,
        follow the backend."""
        if specs is not None:
            self.update(specs, traffic)
        self._unwatch = self.backend.watch(self._on_event)
        for running in await self.backend.list_managed():
            self._discover_soon(running.id, running)
        self._loop = asyncio.create_task(self._run(), name="kapal-scaler")

    def update(
        self,
        specs: list[FunctionSpec],
        traffic: Mapping[str, Mapping[int, int]] | None = None,
    ) -> None:
        """Make the pools match what is deployed: `specs` has every version serving
        traffic, `traffic` the split (version -> percent) of each function served by more
        than one; a function it does not name is served by its one spec."""
        wanted: dict[str, dict[int, FunctionSpec]] = {}
        for spec in specs:
            wanted.setdefault(spec.name, {})[spec.version] = spec
        for name, by_version in wanted.items():
            self._route(name, _split(name, (traffic or {}).get(name), by_version), by_version)
        for name in [n for n in self.versions if n not in wanted]:
            self._remove(name)

    def _route(self, name: str, split: Split, specs: Mapping[int, FunctionSpec]) -> None:
        pools = self.versions.setdefault(name, {})
        # What served before: new versions start warm with their share of it.
        serving = sum(p.ready_count() for p in pools.values())
        for version in split.versions:
            share = split.share(version)
            pool = pools.get(version)
            if pool is None:
                pool = pools[version] = self._new_pool(specs[version])
                pool.share = share
                pool.warm(split.scaled(version, serving))
            elif pool.share != share:
                pool.share = share
                pool.ensure_min()
        self.routes[name] = Routes(split, pools)
        self.pools[name] = pools[split.primary]
        for version in [v for v in pools if v not in split.versions]:
            pool = pools.pop(version)
            pool.retire()
            self._retired.append(pool)

    def _remove(self, name: str) -> None:
        """A deleted function: every pool of it stops (waiters answered 404)."""
        gone = list(self.versions.pop(name).values())
        gone += [p for p in self._retired if p.spec.name == name]
        self._retired = [p for p in self._retired if p.spec.name != name]
        self.routes.pop(name, None)
        self.pools.pop(name, None)
        if self.prewarm is not None:
            self.prewarm.forget_code(name)
        task = self._spawn(_close(gone, stop=self.leading), f"remove-{name}")
        self._removing[name] = task
        task.add_done_callback(self._removed)

    # -- leading -------------------------------------------------------------------------

    async def lead(self) -> None:
        """Become the gateway that scales: adopt what runs, remove what is not wanted."""
        if self.leading:
            return
        self.leading = True
        log.info("leading: this gateway now scales the pools")
        pools = self.all_pools()
        known = {i.container_id: i for p in pools for i in p.instances.values()}
        listed = await self.backend.list_managed()
        for c in listed:
            # Frozen through its cgroup, no engine event told this follower: it must be
            # thawed before it serves.
            inst = known.get(c.id)
            if inst is not None and c.paused and inst.state is InstanceState.PAUSED:
                inst.frozen = True
        found = [c for c in listed if c.id not in known]
        if self.replicas is not None:
            await self._remove_unserved(found)
        else:
            await asyncio.gather(*(self._adopt_or_remove(c) for c in found))
            await asyncio.gather(*(p.stop_unknown_forks() for p in self.all_pools()))
        for pool in self.all_pools():
            pool.take_over()
        if self.prewarm is not None:
            self.prewarm.refill()

    def follow(self) -> None:
        """Stop scaling (another gateway leads now); keep routing."""
        if not self.leading:
            return
        self.leading = False
        log.warning("no longer leading: another gateway scales the pools")
        for pool in self.all_pools():
            pool.leading = False

    async def _remove_unserved(self, found: list[Running]) -> None:
        """Replicated: route to the tasks of serving versions, remove the services of the
        others (a version the last leader retired but did not get to remove)."""
        assert self.replicas is not None
        unserved: set[tuple[str, int]] = set()
        for c in found:
            if self._serving(c.function, c.version) is not None:
                self._discover_soon(c.id, c)
            else:
                unserved.add((c.function, c.version))
        for function, version in sorted(unserved):
            log.info("leftover service removed", extra={"function": function, "version": version})
            try:
                await self.replicas.remove_version(function, version)
            except Exception as e:
                log.warning("leftover service not removed", extra={"error": str(e)})

    async def _adopt_or_remove(self, c: Running) -> None:
        status, body = 0, b""
        # An image function's own health path; a runtime's (even a specialized one's) else.
        known = self._serving(c.function, c.version) or self.pools.get(c.function)
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
            pool = self._serving(function, version)
            if pool is not None:
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
            for pool in self.all_pools():
                pool.container_exited(container_id, action)
            if self.prewarm is not None:
                self.prewarm.forget(container_id)
            return
        if self.leading and self.replicas is None:
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
        for pool in self.all_pools():
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
            pool = self._serving(c.function, c.version)
            if pool is None:
                return
            if not c.paused:
                deadline = time.monotonic() + self.pool_config.start_timeout_s
                await probe.wait_ready(c.address, deadline, pool.spec)
            pool = self._serving(c.function, c.version)
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
        for pool in self.all_pools():
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
        if not self.leading or self.replicas is not None:
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
                for key, n in loads.items():
                    pool = self._by_key(key)
                    if pool is not None and n > before.get(key, 0):
                        pool.remote = self._remote_load(key, time.monotonic())
                        pool.scaler.poke(time.monotonic(), pool, pool.observed())
        elif kind in ("fork", "unfork") and not self.leading:
            self._heard_fork(kind, message)
        elif kind in ("park", "ready") and not self.leading:
            found = self._find(str(message.get("c", "")))
            if found is None:
                return
            pool, inst = found
            if kind == "park" and inst.state is InstanceState.READY:
                pool.set_state(inst, InstanceState.PAUSED)
            elif kind == "ready" and inst.state is InstanceState.PAUSED:
                pool.set_state(inst, InstanceState.READY)

    def _heard_fork(self, kind: str, message: dict[str, Any]) -> None:
        """The leader forked a worker in a container (or stopped one): route to it too."""
        found = self._find(str(message.get("c", "")))
        try:
            slot = int(message["w"])
            address = str(message.get("a", ""))
        except (KeyError, TypeError, ValueError):
            return
        if found is None:
            return
        pool, host = found
        if kind == "fork":
            pool.observe_fork(host, slot, address)
        else:
            pool.fork_gone(host, slot)

    def _by_key(self, key: str) -> Pool | None:
        name, _, version = key.rpartition("@")
        return self._serving(name, int(version)) if version.isdigit() else None

    def _remote_load(self, key: str, now: float) -> int:
        return sum(
            loads.get(key, 0) for at, loads in self._remote.values() if now - at <= LOAD_TTL_S
        )

    def _report_now(self, pool: Pool) -> None:
        """A request waits here while another gateway leads: tell it at once."""
        self.peers.publish({"t": "load", "f": {load_key(pool): pool.local()}})

    def _serving_pools(self) -> list[Pool]:
        return [p for pools in self.versions.values() for p in pools.values()]

    def _report(self) -> None:
        loads = {load_key(p): n for p in self._serving_pools() if (n := p.local())}
        if loads or self._reported:
            self.peers.publish({"t": "load", "f": loads})
        self._reported = set(loads)

    def _announce(self, kind: str, inst: Instance) -> None:
        if self.peers.others():
            message: dict[str, Any] = {"t": kind, "c": inst.container_id}
            if inst.worker:  # a forked worker: which one, and where
                message.update(w=inst.worker, a=inst.address)
            self.peers.publish(message)

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
            for pool in self._serving_pools():
                pool.remote = self._remote_load(load_key(pool), now)
                if self.leading:
                    pool.scaler.record(now, pool.observed())
            self._retired = [p for p in self._retired if not p.done]
            if now >= next_resync:
                next_resync = now + self.resync_s
                try:
                    await self._resync()
                except Exception as e:
                    log.warning("resync failed", extra={"error": str(e)})
            if not self.leading or now < next_decision:
                continue
            next_decision = now + self.decide_s
            for pool in self._serving_pools():
                try:
                    pool.scaler.tick(now, pool)
                    pool.reap()
                except Exception:
                    log.exception("scaling failed", extra={"function": load_key(pool)})
            starting = any(p.count(InstanceState.STARTING) for p in self._serving_pools())
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
        """How many queued invocations wait for `name` (feeds scaling): each serving
        version is given its share of them, as they follow the split when they run."""
        routes = self.routes.get(name)
        if routes is not None:
            for pool in routes.pools:
                pool.backlog = routes.split.scaled(pool.spec.version, depth)

    def _pools_of(self, name: str) -> list[Pool]:
        """Every pool of `name`, the primary first, then by version."""
        primary = self.pools.get(name)
        if primary is None:
            return []
        rest = [p for p in self.all_pools() if p.spec.name == name and p is not primary]
        return [primary, *sorted(rest, key=lambda p: p.spec.version)]

    def describe(self, name: str) -> list[InstanceView]:
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
            for pool in self._pools_of(name)
            for i in pool.instances.values()
        ]

    def status(self, name: str) -> PoolView | None:
        """The pools of `name`'s versions, added up."""
        pools = self._pools_of(name)
        if not pools:
            return None
        serving = [p for p in pools if not p.retired]
        instances = [i for p in pools for i in p.instances.values()]
        return PoolView(
            desired=sum(p.desired for p in serving),
            ready=sum(p.count(InstanceState.READY) for p in serving),
            starting=sum(p.count(InstanceState.STARTING) for p in serving),
            paused=sum(p.count(InstanceState.PAUSED) for p in serving),
            draining=sum(1 for i in instances if i.state is InstanceState.DRAINING),
            in_flight=sum(i.in_flight for i in instances),
            waiting=sum(p.waiting for p in pools),
            rejected=sum(p.rejected for p in pools),
            panic=any(p.panic for p in serving),
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
        pools = self.all_pools()
        self.pools, self.versions, self.routes, self._retired = {}, {}, {}, []
        grace = self.pool_config.stop_grace_s
        await asyncio.gather(*(p.close(grace_s=grace, stop=last) for p in pools))
        if self.prewarm is not None:
            await self.prewarm.close(remove=last)
        if last:  # whatever other gateways started and left behind
            leftovers = await self.backend.list_managed()
            if self.replicas is not None:
                await self._remove_unserved(leftovers)
            else:
                await asyncio.gather(*(self.backend.remove(c.id) for c in leftovers))
