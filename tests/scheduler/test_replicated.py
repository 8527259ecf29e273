"""Pools on a replicated backend (a Swarm service per version), on an in-memory swarm:
the pool sets replica counts, routes to the tasks the backend reports, drains those the
backend stops, and removes a retired version's service once it has drained."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from scheduler import pool as pool_module
from scheduler import scheduler as scheduler_module
from scheduler.autoscaler import AutoscalerConfig
from scheduler.backend import Running
from scheduler.errors import StartFailed
from scheduler.models import FunctionSpec, Scaling
from scheduler.pool import InstanceState, PoolConfig
from scheduler.scheduler import Scheduler


@dataclass
class FakeSwarm:
    """Tasks appear when replicas go up and go (newest first) when they go down."""

    tasks: dict[str, Running] = field(default_factory=dict)
    replicas: list[tuple[str, int, int]] = field(default_factory=list)
    removed: list[tuple[str, int]] = field(default_factory=list)
    fail: Exception | None = None
    on_event: Callable[[str, str], None] | None = None
    serial: int = 0

    async def set_replicas(self, spec: FunctionSpec, replicas: int) -> None:
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        self.replicas.append((spec.name, spec.version, replicas))
        mine = [
            t for t in self.tasks.values() if (t.function, t.version) == (spec.name, spec.version)
        ]
        for _ in range(replicas - len(mine)):
            self.serial += 1
            task = Running(f"t{self.serial}", f"10.0.0.{self.serial}:8080", spec.name, spec.version)
            self.tasks[task.id] = task
            self._tell(task.id, "start")
        for task in mine[replicas:][::-1] if replicas < len(mine) else []:
            del self.tasks[task.id]
            self._tell(task.id, "die")

    async def remove_version(self, function: str, version: int) -> None:
        self.removed.append((function, version))
        for task in [
            t for t in self.tasks.values() if (t.function, t.version) == (function, version)
        ]:
            del self.tasks[task.id]
            self._tell(task.id, "die")

    def _tell(self, task_id: str, action: str) -> None:
        if self.on_event is not None:
            asyncio.get_running_loop().call_soon(self.on_event, task_id, action)

    # The ContainerBackend side a replicated pool still uses.
    def watch(self, on_event: Callable[[str, str], None]) -> Callable[[], None]:
        self.on_event = on_event
        return lambda: None

    async def inspect(self, container_id: str) -> Running | None:
        return self.tasks.get(container_id)

    async def list_managed(self) -> list[Running]:
        return list(self.tasks.values())

    async def remove(self, container_id: str, grace_s: float = 0.0) -> None:
        raise AssertionError("a replicated pool never removes one task")

    async def start(self, spec: FunctionSpec, instance_id: str) -> Running:
        raise AssertionError("a replicated pool never starts one task")


@pytest.fixture(autouse=True)
def instant(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    async def ready(address: str, deadline: float, spec: FunctionSpec) -> None:
        return None

    monkeypatch.setattr(scheduler_module.probe, "wait_ready", ready)
    monkeypatch.setattr(pool_module, "RETIRE_GRACE_S", 0.0)
    yield


def spec(version: int = 1, **scaling: int | float) -> FunctionSpec:
    return FunctionSpec(
        name="f", version=version, image=f"reg/f@{version}", scaling=Scaling(**scaling)
    )


async def started(swarm: FakeSwarm, *specs: FunctionSpec) -> Scheduler:
    sched = Scheduler(
        swarm,  # type: ignore[arg-type]
        PoolConfig(pause=False),
        AutoscalerConfig(target_utilization=1.0),
        replicas=swarm,
        sample_s=0.01,
        decide_s=0.02,
    )
    sched.leading = True
    await sched.start(list(specs))
    return sched


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_cold_request_sets_one_replica_and_is_served_by_the_task_found() -> None:
    swarm = FakeSwarm()
    sched = await started(swarm, spec())
    pool = sched.pick("f")
    assert pool is not None
    got = await pool.acquire(asyncio.get_running_loop().time() + 5)
    assert got.cold and got.tier == "new"
    assert swarm.replicas == [("f", 1, 1)]
    assert got.instance.container_id == "t1" and got.instance.address == "10.0.0.1:8080"
    pool.release(got.instance)
    await sched.close(last=True)
    assert swarm.removed == [("f", 1)] and not swarm.tasks


async def test_counts_are_coalesced_and_an_unchanged_count_is_not_sent_again() -> None:
    swarm = FakeSwarm()
    sched = await started(swarm, spec())
    pool = sched.pick("f")
    assert pool is not None
    pool.scale_to(2)
    pool.scale_to(5)
    pool.scale_to(3)
    await settle()
    pool.scale_to(3)
    await settle()
    assert swarm.replicas == [("f", 1, 3)]  # the latest count, once
    assert pool.ready_count() == 3
    await sched.close(last=True)


async def test_a_task_the_backend_stops_drains_what_it_serves_and_gets_nothing_new() -> None:
    swarm = FakeSwarm()
    sched = await started(swarm, spec(concurrency=1))
    pool = sched.pick("f")
    assert pool is not None
    pool.scale_to(2)
    await settle()
    first = await pool.acquire(10**9)
    second = await pool.acquire(10**9)
    assert {first.instance.container_id, second.instance.container_id} == {"t1", "t2"}
    pool.scale_to(1)  # the backend chooses which goes: the fake stops t2
    await settle()
    gone = first.instance if first.instance.container_id == "t2" else second.instance
    kept = second.instance if gone is first.instance else first.instance
    assert gone.state is InstanceState.DRAINING and pool.instances.get(gone.id) is gone
    pool.release(gone)
    assert gone.id not in pool.instances
    pool.release(kept)
    again = await pool.acquire(10**9)
    assert again.instance is kept
    await sched.close(last=True)


async def test_a_discarded_task_leaves_routing_without_a_call_to_the_backend() -> None:
    swarm = FakeSwarm()
    sched = await started(swarm, spec())
    pool = sched.pick("f")
    assert pool is not None
    got = await pool.acquire(10**9)
    pool.release(got.instance)
    pool.discard(got.instance, "unreachable")
    assert pool.instances == {}
    assert swarm.replicas == [("f", 1, 1)]  # the backend replaces a task that died
    await sched.close(last=True)


async def test_a_new_version_starts_warm_and_the_old_service_goes_once_drained() -> None:
    swarm = FakeSwarm()
    sched = await started(swarm, spec(1))
    old = sched.pick("f")
    assert old is not None
    old.scale_to(2)
    await settle()
    busy = await old.acquire(10**9)
    sched.update([spec(2)])
    await settle()
    assert ("f", 2, 2) in swarm.replicas  # as many as served before
    new = sched.pick("f")
    assert new is not None and new.spec.version == 2
    assert swarm.removed == []  # a request still runs on version 1
    old.release(busy.instance)
    for _ in range(50):
        await asyncio.sleep(0.01)
        if swarm.removed:
            break
    assert swarm.removed == [("f", 1)]
    assert {t.version for t in swarm.tasks.values()} == {2}
    await sched.close(last=True)


async def test_a_leader_removes_services_of_versions_nothing_serves() -> None:
    swarm = FakeSwarm()
    await swarm.set_replicas(spec(1), 1)
    sched = Scheduler(swarm, PoolConfig(pause=False), replicas=swarm)  # type: ignore[arg-type]
    await sched.start([spec(2)])
    await sched.lead()
    assert swarm.removed == [("f", 1)]
    await sched.close(last=True)


async def test_a_count_the_backend_refuses_fails_the_waiters_with_its_reason() -> None:
    swarm = FakeSwarm(fail=StartFailed("no such image in the registry"))
    sched = await started(swarm, spec())
    pool = sched.pick("f")
    assert pool is not None
    with pytest.raises(StartFailed, match="no such image"):
        await pool.acquire(asyncio.get_running_loop().time() + 5)
    await sched.close(last=False)
