"""Pools that grow instances by forking workers in their containers (an in-memory zygote)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from scheduler import probe
from scheduler.autoscaler import AutoscalerConfig
from scheduler.backend import Running
from scheduler.errors import StartFailed
from scheduler.forks import WORKERS_MAX, ForkedWorker
from scheduler.models import FunctionSpec
from scheduler.pool import InstanceState, Pool, Tier
from scheduler.scaler import Scaler
from scheduler.scheduler import Scheduler
from tests.scheduler.test_pool import FakeBackend, FakeClock, spec


@dataclass
class FakeZygotes:
    """Each container (by the host part of its address) forks workers 1, 2, ..."""

    generic: bool = False
    fail: bool = False
    alive: dict[str, set[int]] = field(default_factory=dict)
    stopped: list[tuple[str, int]] = field(default_factory=list)
    sizes: list[tuple[str, int]] = field(default_factory=list)
    # What was asked, in order: ("resize", workers) and ("fork", host).
    calls: list[tuple[str, object]] = field(default_factory=list)

    async def fork(self, address: str) -> ForkedWorker:
        self.calls.append(("fork", address))
        if self.fail:
            raise StartFailed("no worker forked: the container is stopping")
        host = address.rsplit(":", 1)[0]
        slots = self.alive.setdefault(host, set())
        slot = next(k for k in range(1, 100) if k not in slots)
        slots.add(slot)
        return ForkedWorker(slot, f"{host}:{8080 + 2 * slot}", self.generic)

    async def stop(self, address: str, slot: int) -> None:
        host = address.rsplit(":", 1)[0]
        self.stopped.append((host, slot))
        self.alive.get(host, set()).discard(slot)

    async def workers(self, address: str) -> list[ForkedWorker]:
        host = address.rsplit(":", 1)[0]
        return [ForkedWorker(k, f"{host}:{8080 + 2 * k}") for k in sorted(self.alive.get(host, ()))]

    async def resize(self, container_id: str, s: FunctionSpec, workers: int) -> None:
        self.calls.append(("resize", workers))
        await asyncio.sleep(0)  # an engine call: the other forks queue behind it
        self.sizes.append((container_id, workers))


@dataclass
class Readiness:
    """The readiness probe: who was polled, and with which spec (None: a generic one)."""

    polled: list[tuple[str, str | None]] = field(default_factory=list)

    async def __call__(self, address: str, deadline: float, s: FunctionSpec | None) -> None:
        self.polled.append((address, None if s is None else s.name))


def forking_pool(
    backend: FakeBackend, zygotes: FakeZygotes, s: FunctionSpec | None = None, **kw: object
) -> Pool:
    # Every slot counts: one more request, one more instance.
    scaler = Scaler(AutoscalerConfig(target_utilization=1.0))
    return Pool(
        s or spec(concurrency=1, max=40),
        backend,  # type: ignore[arg-type]
        kw.pop("ready", Readiness()),  # type: ignore[arg-type]
        scaler=scaler,
        forks=zygotes,
        **kw,  # type: ignore[arg-type]
    )


async def test_more_instances_are_forked_in_the_running_container() -> None:
    backend, zygotes = FakeBackend(), FakeZygotes()
    pool = forking_pool(backend, zygotes)
    first = await pool.acquire(10**9)
    assert first.tier == "new"
    second = await pool.acquire(10**9)
    assert second.cold and second.tier == "fork"
    fork = second.instance
    assert fork.container_id == first.instance.container_id
    assert fork.worker == 1 and fork.address == "10.0.0.1:8082"
    assert backend.started == [first.instance.container_id]  # no second container
    await pool.drain_tasks()
    assert zygotes.sizes == [(fork.container_id, 2)]  # its limits: two instances' worth
    # The container's own instance is found by its id, never a worker forked in it.
    assert pool.find(fork.container_id) is first.instance


async def test_forks_spread_over_containers_and_stop_at_the_cap() -> None:
    backend, zygotes = FakeBackend(), FakeZygotes()
    pool = forking_pool(backend, zygotes)
    await pool.acquire(10**9)
    for _ in range(WORKERS_MAX):
        pool.add_instance()
    await pool.drain_tasks()
    assert len(backend.started) == 1
    assert pool.add_instance().tier is Tier.NEW  # the container is full: a new one
    await pool.drain_tasks()
    assert len(backend.started) == 2
    second = pool.add_instance()  # the emptier container hosts the next
    assert second.tier is Tier.FORK
    assert pool.instances[second.host].container_id == backend.started[1]
    await pool.drain_tasks()


async def test_scale_down_stops_forks_first_and_keeps_their_container_unpaused() -> None:
    clock = FakeClock()
    backend, zygotes = FakeBackend(), FakeZygotes()
    pool = forking_pool(backend, zygotes, clock=clock)
    host = (await pool.acquire(10**9)).instance
    forks = [pool.add_instance() for _ in range(2)]
    await pool.drain_tasks()
    pool.release(host)
    clock.now += 1
    pool.scale_to(1)  # the host is the least recently used, yet the forks go
    await pool.drain_tasks()
    assert {i.id for i in pool.instances.values()} == {host.id}
    assert sorted(zygotes.stopped) == [("10.0.0.1", 1), ("10.0.0.1", 2)]
    assert backend.paused == [] and backend.removed == []
    assert zygotes.sizes[-1] == (host.container_id, 1)  # limits given back
    assert all(f.state is InstanceState.STOPPING for f in forks)
    pool.scale_to(0)  # no forks left: the container parks as before
    await pool.drain_tasks()
    assert backend.paused == [host.container_id]


async def test_a_container_hosting_a_busy_fork_is_not_paused() -> None:
    backend, zygotes = FakeBackend(), FakeZygotes()
    pool = forking_pool(backend, zygotes)
    host = await pool.acquire(10**9)
    fork = await pool.acquire(10**9)
    pool.release(host.instance)
    pool.scale_to(0)
    await pool.drain_tasks()
    assert host.instance.state is InstanceState.READY
    assert fork.instance.state is InstanceState.READY
    assert backend.paused == []


async def test_a_failed_fork_leaves_its_container_alone_and_the_next_starts_a_container() -> None:
    backend, zygotes = FakeBackend(), FakeZygotes()
    pool = forking_pool(backend, zygotes)
    host = await pool.acquire(10**9)
    zygotes.fail = True
    inst = pool.add_instance()
    await pool.drain_tasks()
    assert inst.id not in pool.instances
    assert backend.removed == [] and zygotes.stopped == []
    assert "no worker forked" in (pool.last_error or "")
    assert host.instance.state is InstanceState.READY
    assert pool.add_instance().tier is Tier.FORK  # forking is tried again next time


async def test_when_the_container_dies_its_forks_go_with_it() -> None:
    backend, zygotes = FakeBackend(), FakeZygotes()
    pool = forking_pool(backend, zygotes)
    host = (await pool.acquire(10**9)).instance
    pool.release(host)
    pool.add_instance()
    await pool.drain_tasks()
    pool.container_exited(host.container_id, "die")
    await pool.drain_tasks()
    assert pool.instances == {}
    assert backend.removed == [host.container_id]


async def test_a_fork_of_a_specialized_prewarmed_container_is_specialized_too() -> None:
    backend, zygotes = FakeBackend(), FakeZygotes(generic=True)

    class Prewarm:
        specialized: list[str] = []

        def claim(self, s: FunctionSpec) -> Running | None:
            return None if self.specialized else Running("warm-1", "10.0.9.9:8080", "_prewarm", 0)

        async def specialize(self, running: Running, s: FunctionSpec) -> None:
            self.specialized.append(running.address)

    ready = Readiness()
    pool = forking_pool(backend, zygotes, prewarm=Prewarm(), ready=ready)
    first = await pool.acquire(10**9)
    assert first.tier == "prewarm"
    second = await pool.acquire(10**9)
    assert second.tier == "fork" and second.instance.container_id == "warm-1"
    # Polled as a generic runtime, then given the function's code like its first worker.
    assert ready.polled == [("10.0.9.9:8082", None)]
    assert Prewarm.specialized == ["10.0.9.9:8080", "10.0.9.9:8082"]


async def test_no_forks_for_image_functions() -> None:
    backend, zygotes = FakeBackend(), FakeZygotes()
    image = FunctionSpec(name="f", version=1, image="nginx:1", runtime="image", port=80)
    pool = forking_pool(backend, zygotes, image.model_copy(update={"scaling": spec().scaling}))
    await pool.acquire(10**9)
    assert pool.add_instance().tier is Tier.NEW


async def test_a_new_leader_stops_the_forks_it_does_not_know() -> None:
    backend, zygotes = FakeBackend(), FakeZygotes()
    pool = forking_pool(backend, zygotes)
    host = (await pool.acquire(10**9)).instance
    known = pool.add_instance()
    await pool.drain_tasks()
    zygotes.alive["10.0.0.1"].add(5)  # forked by the last leader
    await pool.stop_unknown_forks()
    assert zygotes.stopped == [("10.0.0.1", 5)]
    assert known.state is InstanceState.READY and host.state is InstanceState.READY


async def test_forks_wait_for_a_container_still_starting_rather_than_start_their_own() -> None:
    backend, zygotes = FakeBackend(start_delay=0.05), FakeZygotes()
    pool = forking_pool(backend, zygotes)
    host = pool.add_instance()
    forks = [pool.add_instance() for _ in range(3)]
    assert host.tier is Tier.NEW and all(f.tier is Tier.FORK for f in forks)
    await pool.drain_tasks()
    assert len(backend.started) == 1
    assert all(f.state is InstanceState.READY for f in [host, *forks])
    assert {f.container_id for f in forks} == {host.container_id}
    assert zygotes.sizes[-1] == (host.container_id, 4)


async def test_forks_waiting_for_a_container_that_fails_fail_with_it() -> None:
    backend, zygotes = (
        FakeBackend(start_delay=0.05, fail_start=StartFailed("no image")),
        FakeZygotes(),
    )
    pool = forking_pool(backend, zygotes)
    pool.add_instance()
    fork = pool.add_instance()
    await pool.drain_tasks()
    assert pool.instances == {} and fork.state is InstanceState.STOPPING
    assert zygotes.alive == {} and zygotes.stopped == []
    backend.fail_start = None
    assert pool.add_instance().tier is Tier.NEW  # nothing left counted against it
    await pool.drain_tasks()


async def test_a_fork_stopped_while_it_waits_is_never_forked() -> None:
    backend, zygotes = FakeBackend(start_delay=0.05), FakeZygotes()
    pool = forking_pool(backend, zygotes)
    host = pool.add_instance()
    fork = pool.add_instance()
    pool.retire()  # both go; the fork before its container came up
    await pool.drain_tasks()
    assert zygotes.alive == {}
    assert backend.removed == [host.container_id]
    assert fork.state is InstanceState.STOPPING


async def test_other_gateways_hear_of_forks_and_route_to_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The leader announces each fork it made ready, and each it stops; a follower routes
    to them as it does to the containers it discovers."""
    monkeypatch.setattr(probe, "wait_ready", Readiness())  # nothing answers here
    heard: list[dict[str, Any]] = []

    class Peers:
        def publish(self, message: dict[str, Any]) -> None:
            heard.append(message)

        def others(self) -> int:
            return 1

    s = spec(concurrency=1, max=5)
    leader = Scheduler(FakeBackend(), peers=Peers(), forks=FakeZygotes())  # type: ignore[arg-type]
    leader.update([s])
    await leader.lead()
    lead_pool = leader.versions["f"][1]
    lead_pool.scaler = Scaler(AutoscalerConfig(target_utilization=1.0))
    host = await lead_pool.acquire(10**9)
    fork = await lead_pool.acquire(10**9)
    assert fork.tier == "fork"
    announced = {"t": "fork", "c": host.instance.container_id, "w": 1, "a": "10.0.0.1:8082"}
    assert announced in heard

    follower = Scheduler(FakeBackend(), peers=Peers(), forks=FakeZygotes())  # type: ignore[arg-type]
    follower.update([s])
    pool = follower.versions["f"][1]
    running = Running(host.instance.container_id, host.instance.address, "f", 1)
    pool.observe(running, host.instance.id, s)
    follower.receive("leader", announced)
    follower.receive("leader", announced)  # heard twice, routed once
    [seen] = [i for i in pool.instances.values() if i.tier is Tier.FORK]
    assert (seen.address, seen.worker, seen.state) == ("10.0.0.1:8082", 1, InstanceState.READY)

    lead_pool.release(fork.instance)
    lead_pool.release(host.instance)
    lead_pool.scale_to(1)  # the fork goes first
    await lead_pool.drain_tasks()
    unfork = {"t": "unfork", "c": host.instance.container_id, "w": 1, "a": "10.0.0.1:8082"}
    assert unfork in heard
    follower.receive("leader", unfork)
    assert [i.tier for i in pool.instances.values()] == [Tier.NEW]
    await leader.close(last=True)
    await follower.close()


async def test_min_instances_are_containers_of_their_own() -> None:
    backend, zygotes = FakeBackend(start_delay=0.01), FakeZygotes()
    pool = forking_pool(backend, zygotes, spec(concurrency=1, min=2, max=5))
    pool.ensure_min()
    await pool.drain_tasks()
    assert len(backend.started) == 2 and zygotes.alive == {}
    pool.warm(4)  # a new version's warm start too
    await pool.drain_tasks()
    assert len(backend.started) == 4 and zygotes.alive == {}


async def test_limits_grow_in_one_call_for_every_fork_asked_meanwhile_before_they_serve() -> None:
    backend, zygotes = FakeBackend(), FakeZygotes()
    pool = forking_pool(backend, zygotes)
    host = (await pool.acquire(10**9)).instance
    serving_at_resize: list[int] = []
    resize = zygotes.resize

    async def watched(container_id: str, s: FunctionSpec, workers: int) -> None:
        serving_at_resize.append(pool.count(InstanceState.READY))
        await resize(container_id, s, workers)

    zygotes.resize = watched  # type: ignore[method-assign]
    forks = [pool.add_instance() for _ in range(3)]
    await pool.drain_tasks()
    assert [c for c in zygotes.calls if c[0] == "resize"] == [("resize", 4)]
    assert serving_at_resize == [1]  # only the host served before the limits grew
    assert all(f.state is InstanceState.READY for f in forks)
    assert zygotes.sizes == [(host.container_id, 4)]
