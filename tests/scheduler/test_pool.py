"""Pools on an in-memory backend: slots, on-demand starts, draining, idle removal."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from scheduler.autoscaler import AutoscalerConfig
from scheduler.backend import Running
from scheduler.errors import NoCapacity, Rerouted, StartFailed, UnknownFunction
from scheduler.models import FunctionSpec, Scaling
from scheduler.pool import InstanceState, Pool, PoolConfig
from scheduler.scaler import Scaler


@dataclass
class FakeBackend:
    started: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    paused: list[str] = field(default_factory=list)
    unpaused: list[str] = field(default_factory=list)
    fail_start: Exception | None = None
    start_delay: float = 0.0

    async def start(self, spec: FunctionSpec, instance_id: str) -> Running:
        await asyncio.sleep(self.start_delay)
        if self.fail_start:
            raise self.fail_start
        cid = f"c-{instance_id}"
        self.started.append(cid)
        return Running(cid, f"10.0.0.{len(self.started)}:8080", spec.name, spec.version)

    async def remove(self, container_id: str, grace_s: float = 0.0) -> None:
        self.removed.append(container_id)

    async def pause(self, container_id: str) -> None:
        self.paused.append(container_id)

    async def unpause(self, container_id: str) -> None:
        self.unpaused.append(container_id)

    async def claim(self, container_id: str, spec: FunctionSpec, instance_id: str) -> None:
        pass

    def watch(self, on_event: Callable[[str, str], None]) -> Callable[[], None]:
        return lambda: None

    async def inspect(self, container_id: str) -> Running | None:
        return None

    async def list_managed(self) -> list[Running]:
        return []


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def ready_at_once(address: str, deadline: float, spec: FunctionSpec) -> None:
    return None


def spec(version: int = 1, **scaling: int | float) -> FunctionSpec:
    return FunctionSpec(
        name="f", version=version, image=f"img:{version}", scaling=Scaling(**scaling)
    )


def make_pool(
    backend: FakeBackend,
    s: FunctionSpec | None = None,
    target_utilization: float = 1.0,
    **cfg: float,
) -> Pool:
    # Every slot counts, unless a test says otherwise: the slot arithmetic stays exact.
    config = PoolConfig(**cfg)  # type: ignore[arg-type]
    scaler = Scaler(AutoscalerConfig(target_utilization=target_utilization))
    return Pool(s or spec(), backend, ready_at_once, config, scaler=scaler)  # type: ignore[arg-type]


async def test_first_request_starts_an_instance_and_is_cold() -> None:
    backend = FakeBackend()
    pool = make_pool(backend)
    got = await pool.acquire(deadline=asyncio.get_running_loop().time() + 5)
    assert got.cold
    assert got.instance.state is InstanceState.READY
    assert backend.started == [got.instance.container_id]
    pool.release(got.instance)
    again = await pool.acquire(deadline=10**9)
    assert not again.cold and again.instance is got.instance


async def test_concurrency_slots_then_a_second_instance() -> None:
    backend = FakeBackend()
    pool = make_pool(backend, spec(concurrency=2, max=5))
    a = await pool.acquire(10**9)
    b = await pool.acquire(10**9)
    assert a.instance is b.instance and a.instance.in_flight == 2
    c = await pool.acquire(10**9)
    assert c.instance is not a.instance
    assert len(backend.started) == 2


async def test_least_loaded_instance_is_picked() -> None:
    pool = make_pool(FakeBackend(), spec(concurrency=4))
    first = (await pool.acquire(10**9)).instance
    second = pool.add_instance()
    await pool.drain_tasks()
    first.in_flight = 3
    assert (await pool.acquire(10**9)).instance is second


async def test_max_bounds_instances_and_waiters_get_freed_slots() -> None:
    backend = FakeBackend()
    pool = make_pool(backend, spec(concurrency=1, max=1))
    first = await pool.acquire(10**9)
    waiter = asyncio.create_task(pool.acquire(10**9))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    assert len(backend.started) == 1
    pool.release(first.instance)
    got = await asyncio.wait_for(waiter, 1)
    assert got.instance is first.instance


async def test_deadline_passes_gives_no_capacity() -> None:
    pool = make_pool(FakeBackend(), spec(concurrency=1, max=1))
    await pool.acquire(10**9)
    loop_now = pool.clock()
    with pytest.raises(NoCapacity):
        await pool.acquire(loop_now + 0.05)
    assert not pool._waiters


async def test_full_buffer_is_refused_at_once() -> None:
    pool = make_pool(FakeBackend(), spec(concurrency=1, max=1), buffer_size=1)
    await pool.acquire(10**9)
    waiting = asyncio.create_task(pool.acquire(10**9))
    await asyncio.sleep(0)
    with pytest.raises(NoCapacity, match="buffer is full"):
        await pool.acquire(10**9)
    waiting.cancel()


async def test_start_failure_fails_the_waiters_with_its_reason() -> None:
    backend = FakeBackend(fail_start=StartFailed("handler failed to load: boom"))
    pool = make_pool(backend)
    with pytest.raises(StartFailed, match="boom"):
        await pool.acquire(10**9)
    assert pool.instances == {}
    assert pool.last_error is not None


async def test_retiring_drains_in_flight_work_and_sends_waiters_elsewhere() -> None:
    backend = FakeBackend(start_delay=0.01)
    pool = make_pool(backend, spec(1, concurrency=1, max=3))
    busy = await pool.acquire(10**9)
    waiter = asyncio.create_task(pool.acquire(10**9))
    await asyncio.sleep(0)
    assert pool.waiting == 1 and len(pool.active()) == 2  # one more starting for it
    pool.retire()
    with pytest.raises(Rerouted):  # the invoker draws another version for it
        await waiter
    assert busy.instance.state is InstanceState.DRAINING
    await pool.drain_tasks()
    assert len(backend.started) == 2
    assert backend.removed == [backend.started[1]]  # the one that was starting, once up
    pool.release(busy.instance)
    await pool.drain_tasks()
    assert sorted(backend.removed) == sorted(backend.started)
    assert pool.done
    with pytest.raises(Rerouted):
        await pool.acquire(10**9)
    pool.scale_to(3)
    pool.ensure_min()
    assert len(backend.started) == 2 and not pool.instances


async def test_a_waiter_gets_an_instance_back_from_busy_whatever_the_clock_says() -> None:
    backend = FakeBackend()
    clock = FakeClock()  # never advances: only the backoff's timer can end it
    s = spec(concurrency=1, max=1)
    pool = Pool(s, backend, ready_at_once, PoolConfig(), clock=clock)  # type: ignore[arg-type]
    first = await pool.acquire(10**9)
    pool.release(first.instance)
    pool.busy(first.instance)  # it answered "busy": another gateway holds its slot
    # A hang detector, not a timing goal: the backoff is milliseconds.
    again = await asyncio.wait_for(pool.acquire(clock.now + 60), 10)
    assert again.instance is first.instance


async def test_scale_down_pauses_idle_instances_then_removes_them() -> None:
    clock = FakeClock()
    backend = FakeBackend()
    pool = Pool(spec(concurrency=1, idle_timeout_s=60), backend, ready_at_once, clock=clock)  # type: ignore[arg-type]
    a = await pool.acquire(10**9)
    b = await pool.acquire(10**9)
    pool.release(a.instance)
    clock.now += 1
    pool.scale_to(0)  # b is busy: only a can go
    await pool.drain_tasks()
    assert a.instance.state is InstanceState.PAUSED
    assert b.instance.state is InstanceState.READY
    assert backend.paused == [a.instance.container_id]
    clock.now += 30
    pool.reap()
    assert a.instance.state is InstanceState.PAUSED
    clock.now += 31
    pool.reap()
    await pool.drain_tasks()
    assert a.instance.id not in pool.instances
    assert backend.removed == [a.instance.container_id]


async def test_cold_start_prefers_a_paused_standby() -> None:
    backend = FakeBackend()
    pool = make_pool(backend, spec(concurrency=1))
    first = await pool.acquire(10**9)
    pool.release(first.instance)
    pool.scale_to(0)
    await pool.drain_tasks()
    got = await pool.acquire(10**9)
    assert got.instance is first.instance
    assert got.cold and got.tier == "paused"
    assert backend.unpaused == [first.instance.container_id]
    assert len(backend.started) == 1


async def test_a_standby_picked_again_before_it_froze_is_the_paused_tier() -> None:
    backend = FakeBackend()
    pool = make_pool(backend, spec(concurrency=1))
    first = await pool.acquire(10**9)
    pool.release(first.instance)
    pool.scale_to(0)  # parked; its freeze has not run yet
    got = await pool.acquire(10**9)
    assert got.instance is first.instance
    assert got.cold and got.tier == "paused"  # not the tier it was first started from
    await pool.drain_tasks()
    assert len(backend.started) == 1


async def test_cold_start_takes_a_prewarmed_container_before_a_new_one() -> None:
    backend = FakeBackend()

    class Prewarm:
        specialized: list[str] = []

        def claim(self, s: FunctionSpec) -> Running | None:
            return Running("warm-1", "10.0.9.9:8080", "_prewarm", 0)

        async def specialize(self, running: Running, s: FunctionSpec) -> None:
            self.specialized.append(running.id)

    prewarm = Prewarm()
    pool = Pool(spec(), backend, ready_at_once, prewarm=prewarm)  # type: ignore[arg-type]
    connecting: list[str] = []
    pool.preconnect = connecting.append
    got = await pool.acquire(10**9)
    assert got.tier == "prewarm"
    assert got.instance.container_id == "warm-1"
    assert prewarm.specialized == ["warm-1"]
    assert backend.started == []
    # The gateway opened a connection to it while its code loaded.
    assert connecting == ["10.0.9.9:8080"]


async def test_scale_to_starts_instances_up_to_desired() -> None:
    backend = FakeBackend()
    pool = make_pool(backend, spec(max=5))
    pool.scale_to(3)
    await pool.drain_tasks()
    assert pool.count(InstanceState.READY) == 3
    assert pool.desired == 3


async def test_min_instances_are_started() -> None:
    backend = FakeBackend()
    pool = make_pool(backend, spec(min=2))
    pool.ensure_min()
    await pool.drain_tasks()
    assert [i.state for i in pool.instances.values()] == [InstanceState.READY] * 2


async def test_discard_removes_at_once_and_next_request_starts_fresh() -> None:
    backend = FakeBackend()
    pool = make_pool(backend)
    got = await pool.acquire(10**9)
    pool.discard(got.instance, "timeout")
    pool.release(got.instance)
    await pool.drain_tasks()
    assert backend.removed == [got.instance.container_id]
    again = await pool.acquire(10**9)
    assert again.instance is not got.instance and again.cold


async def test_close_fails_waiters_and_removes_everything() -> None:
    backend = FakeBackend(start_delay=0.05)
    pool = make_pool(backend)
    waiter = asyncio.create_task(pool.acquire(10**9))
    await asyncio.sleep(0)
    await pool.close()
    with pytest.raises(UnknownFunction):
        await waiter
    assert sorted(backend.removed) == sorted(backend.started)


async def test_container_death_replaces_the_instance() -> None:
    backend = FakeBackend()
    pool = make_pool(backend)
    got = await pool.acquire(10**9)
    pool.release(got.instance)
    pool.container_exited(got.instance.container_id, "oom")
    await pool.drain_tasks()
    assert got.instance.exit_reason == "out of memory"
    assert got.instance.id not in pool.instances
    again = await pool.acquire(10**9)
    assert again.cold and again.instance is not got.instance


def test_only_functions_a_generic_container_can_be_are_prewarmable() -> None:
    from scheduler.models import Limits, Network
    from scheduler.prewarm import can_specialize

    base = spec()
    assert can_specialize(base)
    assert can_specialize(base.model_copy(update={"limits": Limits(rps=5)}))
    assert not can_specialize(base.model_copy(update={"limits": Limits(memory_mb=512)}))
    assert not can_specialize(base.model_copy(update={"has_dependencies": True}))
    assert not can_specialize(base.model_copy(update={"secrets": ["token"]}))
    assert not can_specialize(base.model_copy(update={"network": Network(outbound=False)}))


async def test_waiting_requests_start_instances_for_the_target_utilization() -> None:
    backend = FakeBackend(start_delay=0.01)
    pool = make_pool(backend, spec(concurrency=4, max=50), target_utilization=0.5)
    waiters = [asyncio.create_task(pool.acquire(10**9)) for _ in range(16)]
    await asyncio.sleep(0)
    # 16 requests at 4 slots x 0.5: 8 instances at once, not one at a time.
    assert len(pool.active()) == 8
    await asyncio.gather(*waiters)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_newcomer_queues_behind_those_waiting() -> None:
    pool = make_pool(FakeBackend(), spec(concurrency=1, max=1))
    a = await pool.acquire(10**9)
    b = asyncio.ensure_future(pool.acquire(10**9))
    await settle()
    pool.release(a.instance)  # wakes b
    newcomer = asyncio.ensure_future(pool.acquire(10**9))
    await settle()
    assert b.done() and not newcomer.done()
    pool.release((await b).instance)
    await settle()
    assert newcomer.done()


async def test_a_newcomer_takes_a_free_slot_beyond_those_promised() -> None:
    pool = make_pool(FakeBackend(), spec(concurrency=2, max=1))
    a = await pool.acquire(10**9)
    b = await pool.acquire(10**9)
    c = asyncio.ensure_future(pool.acquire(10**9))
    await settle()
    pool.release(a.instance)  # one slot, promised to c
    pool.release(b.instance)  # a second one, free for whoever comes
    newcomer = await pool.acquire(10**9)
    assert newcomer.instance is a.instance and not newcomer.cold
    assert (await c).instance is a.instance
