"""One pool of instances per function version: slots, cold starts by tier, scaling, draining.

Cold starts, fastest first: unpause a paused standby of this function, fork a worker in a
container this pool already runs (its zygote: forks.py), specialize a prewarmed generic
runtime container, or start a new container from the function's image. Instances
scaled down are paused (a standby costing no CPU) and removed once idle for
`idle_timeout_s`; forked workers are stopped first, and a container is not paused while
it hosts any. With a learned keep-alive (scheduler/keepalive.py), while the function
has nothing in flight its idle-time histogram decides instead: how many stay ready (none
or one, pre-warmed before the next expected request), and when standbys go.

On a replicated backend (a Docker Swarm service per version) the pool does not start or
stop instances itself: it sets the replica count, the backend runs that many (replacing
the ones that die), and the pool routes to those it discovers. The backend chooses which
ones go on a scale-down; they drain (no new requests once the pool hears, in-flight ones
finish under the task's SIGTERM drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from scheduler.autoscaler import AutoscalerConfig
from scheduler.backend import ContainerBackend, ReplicaBackend, Running
from scheduler.errors import NoCapacity, Rerouted, SchedulerError, StartFailed, UnknownFunction
from scheduler.forks import WORKERS_MAX, Forks, forkable
from scheduler.keepalive import IdleTracker, Want, want
from scheduler.models import FunctionSpec
from scheduler.scaler import Scaler
from scheduler.traffic import WHOLE

log = logging.getLogger("kapal.scheduler.pool")

Clock = Callable[[], float]
# Polls an instance of a spec at an address until it is ready, or a deadline passes.
ReadyWaiter = Callable[[str, float, FunctionSpec | None], Awaitable[None]]


class InstanceState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    PAUSED = "paused"
    DRAINING = "draining"
    STOPPING = "stopping"


class Tier(StrEnum):
    """How an instance was brought up for a cold request."""

    PAUSED = "paused"
    PREWARM = "prewarm"
    FORK = "fork"
    NEW = "new"


class PrewarmSource(Protocol):
    def claim(self, spec: FunctionSpec) -> Running | None:
        """A ready generic container that can become `spec`, if any."""
        ...

    async def specialize(self, running: Running, spec: FunctionSpec) -> None:
        """Load `spec`'s code into the claimed container (raises StartFailed)."""
        ...


@dataclass(eq=False)
class Instance:
    id: str
    spec: FunctionSpec
    state: InstanceState
    started_at: float
    last_used: float
    container_id: str = ""
    address: str = ""
    in_flight: int = 0
    served: int = 0
    tier: Tier = Tier.NEW
    # Why the engine says its container ended ("out of memory", ...), once it has.
    exit_reason: str = ""
    # The runtime answered "busy" (other gateways fill it): not picked before this time.
    busy_until: float = 0.0
    # The engine has frozen it (a parked instance is PAUSED before it is frozen).
    frozen: bool = False
    # When it entered its state (monotonic).
    since: float = 0.0
    # A forked worker's number in its container (tier FORK, once forked); 0: the
    # container's own first runtime.
    worker: int = 0
    # A forked worker's host: the instance of its container's first runtime.
    host: str = ""

    @property
    def version(self) -> int:
        return self.spec.version

    @property
    def free_slots(self) -> int:
        return self.spec.scaling.concurrency - self.in_flight


@dataclass
class PoolConfig:
    # Seconds a new instance has to answer its health check.
    start_timeout_s: float = 30.0
    # Requests that may wait for a slot at once; more are answered 503.
    buffer_size: int = 1000
    # Seconds an instance gets to finish in-flight work when it is stopped.
    stop_grace_s: float = 5.0
    # Scaled-down instances are paused as standbys (else removed at once).
    pause: bool = True


@dataclass
class Acquired:
    instance: Instance
    # The request waited for an instance that became ready meanwhile (a cold start).
    cold: bool
    # Seconds it waited for a slot, and the part of that until its instance was ready.
    waited_s: float = 0.0
    init_s: float = 0.0

    @property
    def tier(self) -> str:
        return self.instance.tier.value if self.cold else ""


@dataclass
class _Tasks:
    running: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self.running.add(task)
        task.add_done_callback(self.running.discard)


def new_instance_id() -> str:
    return secrets.token_hex(4)


# How long an instance that answered "busy" is skipped.
BUSY_BACKOFF_S = 0.005
# How often a stopping forked worker is looked for until it has exited.
FORK_EXIT_POLL_S = 0.25

Demand = Callable[["Pool"], None]
BeforePause = Callable[[Instance], Awaitable[bool]]
# A retired replicated version's service is removed this long after the last request this
# gateway sent it ended: the other gateways have switched to the new version by then.
RETIRE_GRACE_S = 2.0


async def _always(inst: Instance) -> bool:
    return True


class Pool:
    def __init__(
        self,
        spec: FunctionSpec,
        backend: ContainerBackend,
        wait_ready: ReadyWaiter,
        config: PoolConfig | None = None,
        clock: Clock = time.monotonic,
        prewarm: PrewarmSource | None = None,
        scaler: Scaler | None = None,
        *,
        on_demand: Demand | None = None,
        before_pause: BeforePause = _always,
        replicas: ReplicaBackend | None = None,
        keepalive: IdleTracker | None = None,
        forks: Forks | None = None,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.wait_ready = wait_ready
        self.prewarm = prewarm
        self.config = config or PoolConfig()
        self.clock = clock
        self.instances: dict[str, Instance] = {}
        self.last_error: str | None = None
        self.closed = False
        # Its version serves no more traffic: what runs drains, nothing new starts.
        self.retired = False
        # The percent of the function's requests this version gets (its traffic split).
        self.share = WHOLE
        # Work queued for this function outside the pool (async invocations, job items);
        # set by the queue, read by the autoscaler like in-flight requests.
        self.backlog = 0
        # Requests answered 503 (buffer full or no slot before the deadline).
        self.rejected = 0
        # The autoscaler's last word, for status.
        self.desired = 0
        self.panic = False
        # This gateway starts, parks and stops instances (the scaling leader); otherwise
        # it only routes to the instances it discovers.
        self.leading = True
        # The one decider for this function (used while leading).
        self.scaler = scaler or Scaler(AutoscalerConfig())
        # Called when a request waits while this gateway is not leading (tell the leader).
        self.on_demand = on_demand
        # Awaited before an instance is frozen; False: do not freeze it after all.
        self.before_pause = before_pause
        # Concurrency other gateways observe for this function (set by the scheduler).
        self.remote = 0
        # Tells other gateways that an instance is parked ("park") or serves again ("ready").
        self.announce: Callable[[str, Instance], None] | None = None
        # Told what happened to an instance, for the function's log: (instance, level, what).
        self.events: Callable[[Instance, str, str], None] | None = None
        # Told the address of a prewarmed container claimed here, while its code loads.
        self.preconnect: Callable[[str], None] | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Waiters woken for a slot that have not run yet: newcomers leave them theirs.
        self._promised = 0
        self._tasks = _Tasks()
        # A replicated backend: this pool sets the replica count of its version's service.
        self.replicas = replicas
        # The count asked for, and the one the backend last accepted (None: not known).
        self._replicas_wanted = 0
        self._replicas_set: int | None = None
        self._replicas_busy = False
        # Set when the last instance is forgotten (a retired version waits for it).
        self._emptied: asyncio.Event | None = None
        # The function's idle times, for a learned keep-alive (None: the fixed one).
        self.keepalive = keepalive
        # Grows instances inside running containers (None: a container per instance).
        self.forks = forks if forks is not None and forkable(spec) else None
        # Forked workers alive per container, those draining too (their limits count).
        # Forked workers per host instance (its container's own), those still to come
        # and those draining too (their limits count).
        self._forked: dict[str, int] = {}
        self._resizing: dict[str, asyncio.Lock] = {}
        # The workers each container's limits are set for (1 until resized).
        self._sizes: dict[str, int] = {}
        # The forks counted there (each is uncounted once).
        self._counted: set[str] = set()
        # Forks waiting for the instance they go in to come up, by its id.
        self._settled: dict[str, asyncio.Event] = {}

    # -- the hot path ------------------------------------------------------------------

    def _pick(self) -> Instance | None:
        best: Instance | None = None
        version = self.spec.version
        now = 0.0
        for inst in self.instances.values():
            if (
                inst.state is InstanceState.READY
                and inst.spec.version == version
                and inst.in_flight < inst.spec.scaling.concurrency
                and (best is None or inst.in_flight < best.in_flight)
            ):
                if inst.busy_until:
                    now = now or self.clock()
                    if inst.busy_until > now:
                        continue
                    inst.busy_until = 0.0
                best = inst
        return best

    async def acquire(self, deadline: float) -> Acquired:
        """A slot on a ready instance of the current version, waiting while one starts.

        First come, first served: while requests wait, a newcomer queues behind them
        rather than taking the slot one of them was just woken for (in a burst that
        barging sent woken requests to the back again and again: seconds of p99)."""
        ka = self.keepalive
        if ka is not None and ka.idle_since is not None:
            ka.arrived(self.clock())
        inst = None if self._waiters or not self._unpromised() else self._pick()
        if inst is not None:
            inst.in_flight += 1
            return Acquired(inst, cold=False)
        if self.closed:
            raise UnknownFunction(self.spec.name)
        if self.retired:
            raise Rerouted(self.spec.name)
        if len(self._waiters) >= self.config.buffer_size:
            self.rejected += 1
            raise NoCapacity(
                f"function {self.spec.name} is at capacity: wait buffer is full",
                reason="buffer_full",
            )
        began = self.clock()
        loop = asyncio.get_running_loop()
        first = True
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            if first:
                self._waiters.append(fut)
            else:  # woken, but the slot went elsewhere: keep its place at the front
                self._waiters.appendleft(fut)
            first = False
            self.poke()
            try:
                await asyncio.wait_for(fut, max(0.0, deadline - self.clock()))
            except TimeoutError:
                self._pass_on(fut)
                self.rejected += 1
                raise NoCapacity(
                    f"no instance of {self.spec.name} became free in time",
                    retry_after_s=1.0,
                    reason="wait_timeout",
                ) from None
            except BaseException:
                self._pass_on(fut)
                raise
            finally:
                if not fut.done() or fut.cancelled():
                    fut.cancel()
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            self._promised -= 1  # woken: the slot it was promised is its own to take
            inst = self._pick()
            if inst is not None:
                inst.in_flight += 1
                now = self.clock()
                if inst.since >= began:  # it came up while this request waited
                    return Acquired(inst, True, now - began, inst.since - began)
                return Acquired(inst, False, now - began)
            if self.closed:
                raise UnknownFunction(self.spec.name)
            if self.retired:
                raise Rerouted(self.spec.name)

    def release(self, inst: Instance) -> None:
        inst.in_flight -= 1
        inst.served += 1
        inst.last_used = self.clock()
        if inst.in_flight == 0 and self.keepalive is not None and not self.observed():
            self.keepalive.went_idle(inst.last_used)
        if inst.state is InstanceState.DRAINING:
            if inst.in_flight == 0 and self.replicas is not None:
                self.forget(inst)  # the backend stops it
            elif inst.in_flight == 0 and self.leading:
                self._stop(inst, why="drained: its version serves no traffic")
        elif inst.state is InstanceState.READY:
            self._wake(1)

    def busy(self, inst: Instance) -> None:
        """The instance turned a request away (other gateways fill its slots): skip it a
        moment, and let a waiter look again then."""
        inst.busy_until = self.clock() + BUSY_BACKOFF_S
        loop = asyncio.get_running_loop()
        loop.call_later(BUSY_BACKOFF_S, self._busy_over, inst)

    def _busy_over(self, inst: Instance) -> None:
        # Cleared here, not left to the clock: the loop's timer may fire a little before
        # `clock()` reaches `busy_until`, and a waiter woken then would skip the instance
        # and wait again with nothing left to wake it.
        inst.busy_until = 0.0
        self._wake(max(1, inst.spec.scaling.concurrency - inst.in_flight))

    def poke(self) -> None:
        """A request found no free slot: capacity now, from the one decider."""
        if self.closed or self.retired:
            return
        if self.leading:
            self.scaler.poke(self.clock(), self, self.observed())
        elif self.on_demand is not None:
            self.on_demand(self)

    # -- instances other gateways started (discovered from the backend) -----------------

    def find(self, container_id: str) -> Instance | None:
        """The instance of a container's own first runtime (not a forked worker)."""
        for inst in self.instances.values():
            if inst.container_id == container_id and inst.tier is not Tier.FORK:
                return inst
        return None

    def observe(self, running: Running, iid: str, spec: FunctionSpec) -> Instance | None:
        """A healthy container of this function, found in the backend; routed to if it
        serves the current version. Returns the instance (new or known)."""
        inst = self.find(running.id)
        now = self.clock()
        if inst is None:
            if self.closed or self.retired or spec.version != self.spec.version:
                return None
            state = InstanceState.PAUSED if running.paused else InstanceState.READY
            inst = Instance(iid, spec, state, now, now, running.id, running.address)
            inst.frozen, inst.since = running.paused, now
            self.instances[inst.id] = inst
            if state is InstanceState.READY:
                self._wake(inst.free_slots)
            return inst
        if inst.state is InstanceState.PAUSED and not running.paused and not self.leading:
            self.set_state(inst, InstanceState.READY)
        return inst

    def set_state(self, inst: Instance, state: InstanceState) -> None:
        """What another gateway did to an instance (parked, froze, thawed it)."""
        inst.state, inst.since = state, self.clock()
        inst.frozen = state is InstanceState.PAUSED and inst.frozen
        if state is InstanceState.READY:
            self._wake(inst.free_slots)

    def forget(self, inst: Instance) -> None:
        """Drop an instance from routing without touching its container."""
        self.instances.pop(inst.id, None)
        if self._emptied is not None and not self.instances:
            self._emptied.set()

    def container_exited(self, container_id: str, action: str) -> None:
        """The engine says a container died: replace its instance (if it was still ours)."""
        for inst in list(self.instances.values()):
            if inst.container_id == container_id and inst.state in (
                InstanceState.READY,
                InstanceState.PAUSED,
                InstanceState.DRAINING,
            ):
                reason = "out of memory" if action == "oom" else "container exited"
                inst.exit_reason = reason
                if self.replicas is not None:
                    # Scaled down, replaced or lost with its node: whatever it still
                    # serves finishes (or fails) on its own; nothing new goes to it.
                    inst.state = InstanceState.DRAINING
                    if inst.in_flight == 0:
                        self.forget(inst)
                elif not self.leading and inst.in_flight == 0:
                    self.forget(inst)  # the leader stopped it (scaled down, replaced)
                else:
                    self.discard(inst, reason)

    def discard(self, inst: Instance, reason: str) -> None:
        """Take a broken instance (timed out, died) out of routing and remove it."""
        if inst.state is InstanceState.STOPPING:
            return
        log.warning(
            "instance discarded",
            extra={"function": self.spec.name, "instance": inst.id, "reason": reason},
        )
        if self.replicas is not None:
            # One task of a service cannot be stopped alone: out of routing here (the
            # backend replaces it if it died; a live one is found again by the resync).
            self._event(inst, "info", f"instance dropped from routing ({reason})")
            inst.state = InstanceState.STOPPING
            self.forget(inst)
        else:
            self._stop(inst, grace_s=0.0, why=f"replaced: {reason}")
        if self._waiters:
            self.poke()

    # -- capacity ----------------------------------------------------------------------

    def _wake(self, n: int) -> None:
        while n > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                self._promised += 1
                n -= 1

    def _pass_on(self, fut: asyncio.Future[None]) -> None:
        """A waiter leaves (deadline, client gone) after it was woken for a slot it will
        not take: wake the next one, or that slot would idle while others wait."""
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            self._promised -= 1
            self._wake(1)

    def _unpromised(self) -> bool:
        """Whether a free slot is left beyond those promised to woken waiters."""
        if not self._promised:
            return True
        free = sum(
            i.free_slots
            for i in self.instances.values()
            if i.state is InstanceState.READY and i.version == self.spec.version
        )
        return free > self._promised

    def _fail_waiters(self, exc: SchedulerError) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

    def active(self) -> list[Instance]:
        """Instances of the current version that are starting or serving."""
        return [
            i
            for i in self.instances.values()
            if i.spec.version == self.spec.version
            and i.state in (InstanceState.STARTING, InstanceState.READY)
        ]

    def local(self) -> int:
        """Concurrency this gateway sees: requests in flight and waiting."""
        return sum(i.in_flight for i in self.instances.values()) + len(self._waiters)

    def observed(self) -> int:
        """Concurrency as the autoscaler sees it: here, at other gateways, and queued."""
        return self.local() + self.remote + self.backlog

    def ready_count(self) -> int:
        return self.count(InstanceState.READY)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def count(self, state: InstanceState) -> int:
        version = self.spec.version
        return sum(1 for i in self.instances.values() if i.state is state and i.version == version)

    @property
    def min_instances(self) -> int:
        """`scaling.min` scaled by this version's share of the traffic (rounded up)."""
        return -(-self.spec.scaling.min * self.share // WHOLE)

    def scale_to(self, desired: int) -> None:
        """Bring the instances serving the current version to `desired`."""
        if self.closed or self.retired or not self.leading:
            return
        if self.replicas is not None:
            self.desired = desired
            self._set_replicas(desired)
            return
        desired = self.idle_bound(desired)
        self.desired = desired
        active = self.active()
        if desired > len(active):
            for _ in range(desired - len(active)):
                self.add_instance()
            return
        # Forked workers go first; a container hosting any is not paused under them.
        idle = sorted(
            (
                i
                for i in active
                if i.state is InstanceState.READY
                and i.in_flight == 0
                and (i.tier is Tier.FORK or not self._forked.get(i.id))
            ),
            key=lambda i: (i.tier is not Tier.FORK, i.last_used),
        )
        for inst in idle[: len(active) - desired]:
            self._park(inst)

    def ensure_min(self) -> None:
        if not self.leading or self.closed or self.retired:
            return
        if self.replicas is not None:
            self.scale_to(max(self.desired, self.min_instances))
            return
        # `min` is for availability: containers of their own, not workers in one.
        containers = [i for i in self.active() if i.tier is not Tier.FORK]
        for _ in range(max(0, self.min_instances - len(containers))):
            self.add_instance(fork=False)

    def add_instance(self, fork: bool = True) -> Instance:
        """One more instance of the current version, from the fastest tier that has one.

        `fork`: it may be a worker forked in a container already there (burst capacity);
        without, a container of its own (`min` instances, a new version's warm start)."""
        version = self.spec.version
        paused = [
            i
            for i in self.instances.values()
            if i.state is InstanceState.PAUSED and i.version == version
        ]
        if paused:
            inst = max(paused, key=lambda i: i.last_used)
            if not inst.frozen:  # parked, not yet frozen: serve again at once
                inst.state, inst.tier = InstanceState.READY, Tier.PAUSED
                inst.since = self.clock()
                if self.announce is not None:
                    self.announce("ready", inst)
                self._wake(inst.free_slots)
                return inst
            inst.state, inst.tier = InstanceState.STARTING, Tier.PAUSED
            self._tasks.spawn(self._unpause(inst), f"unpause-{self.spec.name}-{inst.id}")
            return inst
        # A fork before a prewarmed container: no engine call, and the prewarmed ones stay
        # for the cold starts a fork cannot serve (a function's first instance).
        host = self._fork_host() if fork else None
        claimed = None
        if host is None and self.prewarm is not None:
            claimed = self.prewarm.claim(self.spec)
        now = self.clock()
        inst = Instance(new_instance_id(), self.spec, InstanceState.STARTING, now, now)
        self.instances[inst.id] = inst
        if claimed is not None:
            inst.tier = Tier.PREWARM
            inst.container_id, inst.address = claimed.id, claimed.address
            if self.preconnect is not None:
                self.preconnect(claimed.address)
        elif host is not None:
            inst.tier, inst.host = Tier.FORK, host.id
            self._forked[host.id] = self._forked.get(host.id, 0) + 1
            self._counted.add(inst.id)
            self._tasks.spawn(self._fork(inst, host), f"fork-{self.spec.name}-{inst.id}")
            return inst
        self._tasks.spawn(self._start(inst, claimed), f"start-{self.spec.name}-{inst.id}")
        return inst

    # -- forked workers ------------------------------------------------------------------

    def _fork_host(self) -> Instance | None:
        """The container of the current version with room for one more worker: a serving
        one with the fewest, else one still starting (its forks follow it up in ms, where
        another container would take as long again); None when forking is off."""
        if self.forks is None:
            return None
        best: Instance | None = None
        rank = (2, 0)
        for inst in self.instances.values():
            if (
                inst.tier is Tier.FORK
                or inst.frozen
                or inst.spec.version != self.spec.version
                or inst.state not in (InstanceState.READY, InstanceState.STARTING)
                or self._forked.get(inst.id, 0) >= WORKERS_MAX
            ):
                continue
            this = (int(inst.state is InstanceState.STARTING), self._forked.get(inst.id, 0))
            if this < rank:
                best, rank = inst, this
        return best

    async def _fork(self, inst: Instance, host: Instance) -> None:
        assert self.forks is not None
        began = self.clock()
        sizing: asyncio.Future[None] | None = None
        try:
            if host.state is InstanceState.STARTING:
                await self._settled.setdefault(host.id, asyncio.Event()).wait()
                if inst.state is not InstanceState.STARTING:  # stopped while it waited
                    return
            if host.state is not InstanceState.READY or host.frozen:
                raise StartFailed("the container it was to be forked in did not come up")
            inst.container_id = host.container_id
            # The container's limits grow while the fork comes up (one engine call for
            # every fork asked meanwhile), and before it serves: its pages become its own
            # as it runs.
            sizing = asyncio.ensure_future(self._sized(host))
            worker = await self.forks.fork(host.address)
            inst.worker, inst.address = worker.slot, worker.address
            deadline = began + self.config.start_timeout_s
            if worker.generic:
                # A fork of a specialized prewarmed container: it loads the same code (in
                # place already: the runtime does not unpack it again).
                if self.prewarm is None:
                    raise StartFailed("a generic worker was forked and no prewarm source")
                await self.wait_ready(worker.address, deadline, None)
                running = Running(inst.container_id, worker.address, host.spec.name, 0)
                await self.prewarm.specialize(running, inst.spec)
            else:
                await self.wait_ready(worker.address, deadline, inst.spec)
            await sizing
        except Exception as e:
            if sizing is not None:
                await asyncio.gather(sizing, return_exceptions=True)
            self._start_failed(inst, e)
            return
        self._became_ready(inst, began)

    def observe_fork(self, host: Instance, slot: int, address: str) -> None:
        """A worker the leading gateway forked in `host`'s container: routed to here too."""
        if not address or any(
            i.worker == slot and i.host == host.id for i in self.instances.values()
        ):
            return
        now = self.clock()
        fork = Instance(new_instance_id(), host.spec, InstanceState.READY, now, now)
        fork.tier, fork.host, fork.worker = Tier.FORK, host.id, slot
        fork.container_id, fork.address, fork.since = host.container_id, address, now
        self.instances[fork.id] = fork
        self._forked[host.id] = self._forked.get(host.id, 0) + 1
        self._counted.add(fork.id)
        self._wake(fork.free_slots)

    def fork_gone(self, host: Instance, slot: int) -> None:
        """The leader stopped a worker forked in `host`'s container: nothing new goes to
        it (what is in flight finishes under its drain)."""
        for fork in list(self.instances.values()):
            if fork.worker == slot and fork.host == host.id:
                self.forget(fork)
                self._uncount(fork)

    def _uncount(self, fork: Instance) -> None:
        """A fork no longer uses its container (once, however it ended)."""
        if fork.id not in self._counted:
            return
        self._counted.discard(fork.id)
        left = self._forked.get(fork.host, 0) - 1
        if left > 0:
            self._forked[fork.host] = left
        else:
            self._forked.pop(fork.host, None)

    def _settle(self, inst: Instance) -> None:
        """An instance is up, or will not be: forks waiting for it to come up go on."""
        event = self._settled.pop(inst.id, None)
        if event is not None:
            event.set()

    async def _stop_worker(self, inst: Instance) -> None:
        """Stop a forked worker (it drains), then give its container's limits back."""
        assert self.forks is not None
        try:
            if inst.worker:
                await self.forks.stop(inst.address, inst.worker)
                # Its memory stays counted until it has exited.
                for _ in range(int((inst.spec.limits.timeout_s + 1.0) / FORK_EXIT_POLL_S)):
                    alive = await self.forks.workers(inst.address)
                    if all(w.slot != inst.worker for w in alive):
                        break
                    await asyncio.sleep(FORK_EXIT_POLL_S)
        except Exception as e:  # its container is gone (or going): nothing to give back
            log.debug("forked worker not stopped", extra={"instance": inst.id, "error": str(e)})
        self._uncount(inst)
        host = self.instances.get(inst.host)
        if inst.worker and host is not None:  # its container still serves
            self._resize(host)

    async def stop_unknown_forks(self) -> None:
        """Stop the workers a previous leader forked in this pool's containers: nothing
        routes to them here (followers route to containers only), and a fork comes back
        in milliseconds if the load wants it."""
        if self.forks is None:
            return
        known = {(i.container_id, i.worker) for i in self.instances.values() if i.worker}
        hosts = [
            i
            for i in list(self.instances.values())
            if i.tier is not Tier.FORK and i.address and not i.frozen
        ]
        for host in hosts:
            try:
                for w in await self.forks.workers(host.address):
                    if (host.container_id, w.slot) not in known:
                        log.info(
                            "unknown forked worker stopped",
                            extra={"container": host.container_id[:12], "worker": w.slot},
                        )
                        await self.forks.stop(host.address, w.slot)
            except Exception as e:  # gone, or frozen by another gateway meanwhile
                log.debug("forked workers not listed", extra={"error": str(e)})

    def _resize(self, host: Instance) -> None:
        """Give back a container's limits as its workers go (off any request's path)."""
        if self.forks is not None:
            self._tasks.spawn(self._shrink(host), f"resize-{host.id}")

    async def _shrink(self, host: Instance) -> None:
        try:
            await self._sized(host)
        except Exception as e:  # gone meanwhile
            log.debug("limits not resized", extra={"instance": host.id, "error": str(e)})

    async def _sized(self, host: Instance) -> None:
        """Set the container's limits to its workers' worth (those being forked too), one
        engine call at a time per container, none when they already are."""
        assert self.forks is not None
        lock = self._resizing.setdefault(host.id, asyncio.Lock())
        async with lock:
            workers = 1 + self._forked.get(host.id, 0)
            if self._sizes.get(host.id, 1) != workers:
                await self.forks.resize(host.container_id, self.spec, workers)
                self._sizes[host.id] = workers

    def _set_replicas(self, n: int) -> None:
        """Ask the backend for `n` replicas (one call at a time; the latest count wins)."""
        self._replicas_wanted = n
        if not self._replicas_busy and self._replicas_set != n:
            self._replicas_busy = True
            self._tasks.spawn(self._apply_replicas(), f"replicas-{self.spec.name}")

    async def _apply_replicas(self) -> None:
        assert self.replicas is not None
        try:
            while self._replicas_set != self._replicas_wanted:
                if self.closed or self.retired or not self.leading:
                    return
                n = self._replicas_wanted
                try:
                    await self.replicas.set_replicas(self.spec, n)
                except Exception as e:
                    message = (
                        str(e) if isinstance(e, SchedulerError) else f"{type(e).__name__}: {e}"
                    )
                    log.warning(
                        "replicas not set",
                        extra={"function": self.spec.name, "replicas": n, "error": message},
                    )
                    self.last_error = message
                    self._replicas_set = None
                    if not self.ready_count():
                        self._fail_waiters(
                            StartFailed(f"function {self.spec.name} failed to start: {message}")
                        )
                    return
                if self._replicas_set is None or n != self._replicas_set:
                    log.info(
                        "replicas set",
                        extra={
                            "function": self.spec.name,
                            "version": self.spec.version,
                            "replicas": n,
                        },
                    )
                self._replicas_set = n
        finally:
            self._replicas_busy = False

    async def _remove_service(self) -> None:
        """A retired version: once what this gateway sent it has finished (and the other
        gateways have had time to switch), its service goes."""
        assert self.replicas is not None
        if self.instances:  # those still serving are forgotten as they finish
            self._emptied = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._emptied.wait(), self.spec.limits.timeout_s + 5)
        await asyncio.sleep(RETIRE_GRACE_S)
        self.instances.clear()
        try:
            await self.replicas.remove_version(self.spec.name, self.spec.version)
        except Exception as e:
            log.warning(
                "service not removed",
                extra={"function": self.spec.name, "version": self.spec.version, "error": str(e)},
            )

    async def _start(self, inst: Instance, claimed: Running | None = None) -> None:
        began = self.clock()
        try:
            if claimed is not None:
                assert self.prewarm is not None
                await self.prewarm.specialize(claimed, inst.spec)
                # Named after what it now serves, so every gateway (and a restarted one)
                # can route to it; off the request's path.
                self._tasks.spawn(self._claim(inst), f"claim-{self.spec.name}-{inst.id}")
            else:
                running = await self.backend.start(inst.spec, inst.id)
                inst.container_id = running.id
                inst.address = running.address
                deadline = began + self.config.start_timeout_s
                await self.wait_ready(running.address, deadline, inst.spec)
        except Exception as e:
            self._start_failed(inst, e)
            return
        self._became_ready(inst, began)

    async def _claim(self, inst: Instance) -> None:
        try:
            await self.backend.claim(inst.container_id, inst.spec, inst.id)
        except Exception as e:
            log.warning("prewarmed container not renamed", extra={"error": str(e)})

    async def _unpause(self, inst: Instance) -> None:
        began = self.clock()
        try:
            await self.backend.unpause(inst.container_id)
        except Exception as e:
            self._start_failed(inst, e)
            return
        self._became_ready(inst, began)

    def _became_ready(self, inst: Instance, began: float) -> None:
        if inst.state is not InstanceState.STARTING:  # stopped or drained meanwhile
            self._settle(inst)
            if inst.state is not InstanceState.STOPPING:
                self._stop(inst)
            elif inst.container_id:
                self._remove_container(inst, 0.0)
            return
        inst.last_used = self.clock()
        if inst.spec.version != self.spec.version:
            self._stop(inst)
            return
        inst.state, inst.frozen, inst.since = InstanceState.READY, False, self.clock()
        self._settle(inst)
        if inst.tier is Tier.FORK and self.announce is not None:
            self.announce("fork", inst)  # other gateways route to it too
        self.last_error = None
        start_ms = round((self.clock() - began) * 1000, 1)
        if inst.tier is Tier.PAUSED:
            self._event(inst, "info", f"instance resumed from pause in {start_ms} ms")
            if self.announce is not None:  # thawed through its cgroup, the engine says nothing
                self.announce("ready", inst)
        else:
            self._event(inst, "info", f"instance started ({inst.tier.value}) in {start_ms} ms")
        log.info(
            "instance ready",
            extra={
                "function": self.spec.name,
                "version": inst.version,
                "instance": inst.id,
                "tier": inst.tier.value,
                "start_ms": start_ms,
            },
        )
        self._wake(inst.free_slots)

    def _park(self, inst: Instance) -> None:
        """Scaled down: pause as a standby (or remove when pausing is off, or a forked
        worker: pausing one would pause its container)."""
        if not self.config.pause or inst.tier is Tier.FORK:
            self._stop(inst)
            return
        inst.state, inst.since = InstanceState.PAUSED, self.clock()
        if self.announce is not None:
            self.announce("park", inst)
        self._tasks.spawn(self._pause(inst), f"pause-{self.spec.name}-{inst.id}")

    async def _pause(self, inst: Instance) -> None:
        try:
            # Other gateways stop sending to it, and what they sent finishes first.
            if not await self.before_pause(inst) or inst.state is not InstanceState.PAUSED:
                return
            await self.backend.pause(inst.container_id)
            if inst.state is InstanceState.PAUSED:
                inst.frozen = True
                self._event(inst, "info", "instance paused (a standby)")
            else:  # picked again while freezing
                await self.backend.unpause(inst.container_id)
        except Exception as e:
            log.warning("pause failed; removing", extra={"instance": inst.id, "error": str(e)})
            if inst.state is InstanceState.PAUSED:
                self._stop(inst)

    def _start_failed(self, inst: Instance, e: Exception) -> None:
        message = str(e) if isinstance(e, SchedulerError) else f"{type(e).__name__}: {e}"
        log.warning(
            "instance failed to start",
            extra={"function": self.spec.name, "instance": inst.id, "error": message},
        )
        self._event(inst, "error", f"instance failed to start: {message}")
        self.instances.pop(inst.id, None)
        inst.state = InstanceState.STOPPING
        self._settle(inst)
        if inst.container_id or inst.tier is Tier.FORK:
            self._remove_container(inst, 0.0)
        self.last_error = message
        if not self.active():
            self._fail_waiters(StartFailed(f"function {self.spec.name} failed to start: {message}"))

    def _event(self, inst: Instance, level: str, what: str) -> None:
        if self.events is not None:
            self.events(inst, level, what)

    def _stop(self, inst: Instance, grace_s: float | None = None, why: str = "scaled down") -> None:
        self._settle(inst)
        if inst.state is not InstanceState.STOPPING:
            self._event(inst, "info", f"instance stopped ({why})")
        inst.state = InstanceState.STOPPING
        self.instances.pop(inst.id, None)
        if inst.container_id or inst.tier is Tier.FORK:
            self._remove_container(inst, self.config.stop_grace_s if grace_s is None else grace_s)

    def _remove_container(self, inst: Instance, grace_s: float) -> None:
        """Remove an instance's container, or stop it when it is a forked worker."""
        if inst.tier is Tier.FORK:
            if inst.worker and self.announce is not None:
                self.announce("unfork", inst)
            self._tasks.spawn(self._stop_worker(inst), f"unfork-{self.spec.name}-{inst.id}")
            return
        self._forked.pop(inst.id, None)
        self._resizing.pop(inst.id, None)
        self._sizes.pop(inst.id, None)
        self._tasks.spawn(
            self.backend.remove(inst.container_id, grace_s), f"remove-{self.spec.name}-{inst.id}"
        )

    # -- lifecycle ---------------------------------------------------------------------

    def adopt(self, inst: Instance) -> None:
        """Take over a healthy container found at start-up."""
        self.instances[inst.id] = inst
        self._wake(inst.free_slots)

    def warm(self, serving: int) -> None:
        """Start instances as if `serving` were ready (what the version it takes traffic
        from had), so that traffic does not fall back to cold starts."""
        if not self.leading or self.closed or self.retired:
            return
        wanted = min(self.spec.scaling.max, max(self.min_instances, serving))
        if self.replicas is not None:
            if wanted:
                self.scale_to(wanted)
            return
        for _ in range(wanted - len(self.active())):
            self.add_instance(fork=False)

    def retire(self) -> None:
        """Its version serves no more traffic: whoever waits here is sent to the versions
        that do, what is in flight finishes, then every instance stops."""
        self.retired = True
        self._fail_waiters(Rerouted(self.spec.name))
        if self.replicas is not None:
            for inst in list(self.instances.values()):
                inst.state = InstanceState.DRAINING
                if inst.in_flight == 0:
                    self.forget(inst)
            if self.leading:
                self._tasks.spawn(self._remove_service(), f"retire-{self.spec.name}")
            return
        for inst in list(self.instances.values()):
            if inst.state in (InstanceState.STARTING, InstanceState.READY):
                inst.state = InstanceState.DRAINING
            if self.leading and inst.in_flight == 0:  # one starting is removed once up
                self._stop(inst, why=f"version {self.spec.version} serves no traffic")

    @property
    def done(self) -> bool:
        """Retired (or closed) with nothing left running or to do."""
        return (self.retired or self.closed) and not self.instances and not self._tasks.running

    def take_over(self) -> None:
        """This gateway now leads: finish what the last leader left half done."""
        self.leading = True
        if self.replicas is not None:
            self._replicas_set = None  # the last leader's count is not known here
            if self.retired:
                self._tasks.spawn(self._remove_service(), f"retire-{self.spec.name}")
                return
        for inst in list(self.instances.values()):
            if inst.state is InstanceState.DRAINING and inst.in_flight == 0:
                self._stop(inst)
            elif inst.state is InstanceState.PAUSED and not inst.frozen:
                inst.state = InstanceState.READY  # parked, never frozen: serve again
        self.ensure_min()
        if self._waiters:
            self.poke()

    def idle_bound(self, desired: int) -> int:
        """`desired`, unless the function is idle and its learned keep-alive decides:
        while a request is expected at least one instance stays (more while the
        autoscaler's window still wants them: a burst may resume), otherwise none above
        `min`."""
        kept = self._kept_idle(self.clock())
        if kept is None:
            return desired
        if kept is Want.READY:
            return max(desired, self.min_instances, 1)
        return self.min_instances

    def _kept_idle(self, now: float) -> Want | None:
        """What the learned keep-alive keeps now; None: the function is busy, or its
        history says nothing (the fixed policy holds)."""
        ka = self.keepalive
        if ka is None or ka.idle_since is None or self.observed():
            return None
        w = ka.windows(self.spec.scaling.idle_timeout_s)
        return want(w, now - ka.idle_since) if w.learned else None

    def reap(self) -> None:
        """Remove standbys idle past `idle_timeout_s`, or when the learned keep-alive
        expects no request before it could bring one back."""
        now = self.clock()
        ka = self.keepalive
        if ka is not None and ka.idle_since is None and not self.observed():
            ka.went_idle(now)  # what was in flight ended at other gateways
        if self._kept_idle(now) is Want.NONE:
            for inst in list(self.instances.values()):
                if inst.state is InstanceState.PAUSED:
                    self._stop(inst, why="keep-alive: no request expected for a while")
        for inst in list(self.instances.values()):
            if (
                inst.state is InstanceState.PAUSED
                and now - inst.last_used >= self.spec.scaling.idle_timeout_s
            ):
                log.info(
                    "standby idle, removing",
                    extra={"function": self.spec.name, "instance": inst.id},
                )
                self._stop(inst, why="idle standby removed")

    async def close(self, grace_s: float = 0.0, *, stop: bool = True) -> None:
        """Fail whoever waits (function deleted, or shutdown) and, with `stop`, stop every
        instance (without: leave them to the gateways that stay)."""
        self.closed = True
        self._fail_waiters(UnknownFunction(self.spec.name))
        if self.replicas is not None:
            self.instances.clear()
            await self.drain_tasks()
            if stop:
                await self.replicas.remove_version(self.spec.name, self.spec.version)
            return
        for inst in list(self.instances.values()):
            if stop:
                self._stop(inst, grace_s)
            else:
                self.forget(inst)
        await self.drain_tasks()

    async def drain_tasks(self) -> None:
        while self._tasks.running:
            await asyncio.gather(*list(self._tasks.running), return_exceptions=True)
