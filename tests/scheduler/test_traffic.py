"""Traffic splits: the cumulative table, and one pool per version in the scheduler (an
in-memory backend)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from scheduler import probe
from scheduler.errors import Rerouted, UnknownFunction
from scheduler.models import FunctionSpec, Scaling
from scheduler.pool import InstanceState, PoolConfig
from scheduler.scheduler import Scheduler
from scheduler.traffic import Routes, Split
from tests.scheduler.test_pool import FakeBackend, ready_at_once


@pytest.fixture(autouse=True)
def instances_ready_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The in-memory backend's addresses answer nothing: no health check to wait for.
    monkeypatch.setattr(probe, "wait_ready", ready_at_once)


def spec(version: int, name: str = "f", **scaling: Any) -> FunctionSpec:
    return FunctionSpec(
        name=name, version=version, image=f"{name}:{version}", scaling=Scaling(**scaling)
    )


def test_a_split_is_a_cumulative_table_of_its_positive_weights() -> None:
    split = Split.of({4: 10, 3: 90, 5: 0})
    assert (split.versions, split.bounds) == ((3, 4), (90, 100))
    assert split.weights == {3: 90, 4: 10}
    assert (split.share(3), split.share(4), split.share(5)) == (90, 10, 0)
    assert split.primary == 3
    assert Split.of({1: 50, 2: 50}).primary == 2  # a tie: the higher version
    assert Split.only(7).weights == {7: 100}


@pytest.mark.parametrize("weights", [{1: 90}, {1: 60, 2: 60}, {1: 110, 2: -10}, {}, {1: 0}])
def test_weights_must_add_up_to_a_hundred(weights: dict[int, int]) -> None:
    with pytest.raises(ValueError, match="add up to 100"):
        Split.of(weights)


def test_share_of_a_count_is_rounded_up() -> None:
    split = Split.of({1: 90, 2: 10})
    assert (split.scaled(1, 5), split.scaled(2, 5), split.scaled(2, 0)) == (5, 1, 0)


async def scheduler(*specs: FunctionSpec, **traffic: dict[int, int]) -> Scheduler:
    s = Scheduler(FakeBackend(), PoolConfig(stop_grace_s=0))  # type: ignore[arg-type]
    s.update(list(specs), traffic)
    return s


def backend(s: Scheduler) -> FakeBackend:
    assert isinstance(s.backend, FakeBackend)
    return s.backend


async def test_evenly_spread_draws_land_on_the_weights_exactly() -> None:
    s = await scheduler(spec(3), spec(4), f={3: 90, 4: 10})
    routes = s.routes["f"]
    draw = iter([i / 1000 for i in range(1000)]).__next__
    landed = Counter(routes.choose(draw).spec.version for _ in range(1000))
    assert landed == {3: 900, 4: 100}
    # Random draws: each one lands on a version of the split.
    assert {p.spec.version for p in (routes.choose() for _ in range(100))} <= {3, 4}
    await s.close()


async def test_one_version_serving_needs_no_draw() -> None:
    s = await scheduler(spec(1))
    pool = s.versions["f"][1]
    assert s.pick("f") is pool and s.pool("f") is pool
    assert s.routes["f"].choose(lambda: 0.999) is pool
    assert s.pick("nope") is None
    await s.close()


async def test_each_version_has_its_own_pool_and_min_scaled_by_its_share() -> None:
    s = await scheduler(spec(3, min=3), spec(4, min=3), f={3: 90, 4: 10})
    await s.lead()
    v3, v4 = s.versions["f"][3], s.versions["f"][4]
    assert s.pool("f") is v3  # the primary: largest share
    await v3.drain_tasks()
    await v4.drain_tasks()
    # min 3 scaled by the share, rounded up: 3 of 3 and 1 (0.3) of 3.
    assert (len(v3.active()), len(v4.active())) == (3, 1)
    assert {i.version for i in v3.instances.values()} == {3}
    assert {i.version for i in v4.instances.values()} == {4}
    got = await v4.acquire(10**9)
    assert got.instance.version == 4 and v3.local() == 0 and v4.local() == 1
    v4.release(got.instance)

    s.set_backlog("f", 10)  # queued work follows the split when it runs
    assert (v3.backlog, v4.backlog) == (9, 1)
    status = s.status("f")
    assert status is not None and status.ready == 4
    assert sorted(i.version for i in s.describe("f")) == [3, 3, 3, 4]
    await s.close()


async def test_a_version_leaving_the_split_drains_and_its_waiters_go_to_the_others() -> None:
    s = await scheduler(spec(3), spec(4, concurrency=1, max=1), f={3: 50, 4: 50})
    await s.lead()
    v3, v4 = s.versions["f"][3], s.versions["f"][4]
    busy = await v4.acquire(10**9)
    waiter = asyncio.create_task(v4.acquire(10**9))
    await asyncio.sleep(0)
    assert v4.waiting == 1

    s.update([spec(3)])  # all traffic to version 3
    with pytest.raises(Rerouted):
        await waiter
    assert s.routes["f"].pools == (v3,) and s.pick("f") is v3
    assert v4.retired and v4 in s.all_pools()
    assert busy.instance.state is InstanceState.DRAINING
    assert busy.instance in [i for p in s.all_pools() for i in p.instances.values()]
    v4.release(busy.instance)  # its last request ends: it stops
    await v4.drain_tasks()
    assert busy.instance.container_id in backend(s).removed
    assert v4.done
    await s.close()


async def test_a_new_version_starts_warm_with_its_share_of_what_served() -> None:
    s = await scheduler(spec(1, max=10))
    await s.lead()
    v1 = s.versions["f"][1]
    v1.scale_to(4)
    await v1.drain_tasks()
    assert v1.ready_count() == 4
    s.update([spec(1, max=10), spec(2, max=10)], {"f": {1: 75, 2: 25}})
    v2 = s.versions["f"][2]
    await v2.drain_tasks()
    assert len(v2.active()) == 1  # a quarter of 4
    assert s.versions["f"][1] is v1 and v1.share == 75 and v2.share == 25
    s.update([spec(2, max=10)])  # a rollback or a deploy: 100% to one, the rest goes
    assert s.pool("f") is v2 and v1.retired
    await s.close()


async def test_deleting_a_function_stops_every_version_and_answers_its_waiters() -> None:
    s = await scheduler(spec(1), spec(2), f={1: 50, 2: 50})
    await s.lead()
    pools = list(s.versions["f"].values())
    waiters = [asyncio.create_task(p.acquire(10**9)) for p in pools]
    await asyncio.sleep(0)
    s.update([])
    await s.removed("f")
    for w in waiters:
        with pytest.raises(UnknownFunction):
            await w
    assert s.pick("f") is None and s.all_pools() == [] and s.status("f") is None
    assert sorted(backend(s).removed) == sorted(backend(s).started)
    await s.close()


async def test_gateways_report_each_version_s_load_under_its_own_name() -> None:
    published: list[dict[str, Any]] = []

    class Peers:
        def publish(self, message: dict[str, Any]) -> None:
            published.append(message)

        def others(self) -> int:
            return 1

    s = Scheduler(FakeBackend(), peers=Peers())  # type: ignore[arg-type]
    s.update([spec(3), spec(4)], {"f": {3: 90, 4: 10}})
    await s.lead()
    v3, v4 = s.versions["f"][3], s.versions["f"][4]
    got = await v4.acquire(10**9)
    s._report()
    assert published[-1] == {"t": "load", "f": {"f@4": 1}}
    s.receive("other", {"t": "load", "f": {"f@3": 5, "f@9": 2, "g@x": 1}})
    assert (v3.remote, v4.remote) == (5, 0)
    v4.release(got.instance)
    await s.close(last=True)


def test_routes_choose_by_the_table() -> None:
    pools: Any = {3: "three", 4: "four"}
    routes = Routes(Split.of({3: 90, 4: 10}), pools)
    draws = (0.0, 0.5, 0.9, 0.95, 0.9999999999999999)
    draw = iter(draws).__next__
    assert [routes.choose(draw) for _ in draws] == ["three"] * 2 + ["four"] * 3
