"""Reactive prewarm: as many ready as the recent cold starts asked for, floor to cap, on a
fake clock; the pool refills to that count and gives back what ages out."""

from __future__ import annotations

import asyncio

from scheduler.backend import Running
from scheduler.models import FunctionSpec, Limits
from scheduler.prewarm import PrewarmPool
from scheduler.prewarm_size import WINDOW_S, PrewarmSize, wanted
from tests.scheduler.test_pool import FakeBackend, FakeClock


class NoCode:
    async def code(self, name: str, version: int) -> bytes:
        return b""


def test_floor_until_cold_starts_then_as_many_up_to_the_cap() -> None:
    size = PrewarmSize(floor=4, cap=10)
    assert wanted(0.0, [], size) == 4
    assert wanted(10.0, [1.0] * 3, size) == 4
    assert wanted(10.0, [1.0] * 7, size) == 7
    assert wanted(10.0, [1.0] * 30, size) == 10


def test_cold_starts_age_out_of_the_window() -> None:
    size = PrewarmSize(floor=2, cap=20)
    starts = [0.0] * 5 + [60.0] * 3
    assert wanted(61.0, starts, size) == 8
    assert wanted(WINDOW_S + 1.0, starts, size) == 3
    assert wanted(WINDOW_S + 61.0, starts, size) == 2


def test_a_cap_below_the_floor_keeps_the_floor() -> None:
    assert wanted(0.0, [0.0] * 9, PrewarmSize(floor=4, cap=0)) == 4


def make(backend: FakeBackend, clock: FakeClock, floor: int, cap: int) -> PrewarmPool:
    return PrewarmPool(
        backend,  # type: ignore[arg-type]
        {"python": "runtime:1"},
        {"python": floor},
        NoCode(),
        cap=cap,
        clock=clock,
    )


def fn(**limits: int) -> FunctionSpec:
    return FunctionSpec(name="f", version=1, image="img:1", limits=Limits(**limits))


async def test_a_burst_of_cold_starts_grows_the_pool_then_it_shrinks_back() -> None:
    backend, clock = FakeBackend(), FakeClock()
    pool = make(backend, clock, floor=2, cap=5)
    for n in range(2):
        pool.adopt(Running(f"w{n}", f"10.0.0.{n}:8080", "_prewarm", 0), "python")

    # Seven cold starts: two find a container ready, all seven count.
    claimed = [pool.claim(fn()) for _ in range(7)]
    assert [c.id for c in claimed if c is not None] == ["w0", "w1"]
    assert pool.wanted("python") == 5

    # Past the window the count falls back to the floor and the extras are removed.
    for n in range(5):
        pool.adopt(Running(f"x{n}", f"10.0.1.{n}:8080", "_prewarm", 0), "python")
    clock.now += WINDOW_S + 1
    pool.refill()
    await asyncio.gather(*pool._tasks)
    assert [r.id for r in pool.ready["python"]] == ["x3", "x4"]
    assert backend.removed == ["x0", "x1", "x2"]
    await pool.close(remove=False)


async def test_refill_starts_what_the_recent_cold_starts_ask_for() -> None:
    backend, clock = FakeBackend(), FakeClock()
    pool = make(backend, clock, floor=1, cap=3)
    for _ in range(4):
        assert pool.claim(fn()) is None
    pool.refill()
    assert pool.starting["python"] == 3
    await asyncio.sleep(0)
    for task in pool._tasks:  # they would wait for runtimes that do not exist
        task.cancel()
    await pool.close(remove=True)
    assert pool.starting["python"] == 0


async def test_functions_a_generic_container_cannot_serve_do_not_count() -> None:
    backend, clock = FakeBackend(), FakeClock()
    pool = make(backend, clock, floor=1, cap=8)
    for _ in range(5):
        assert pool.claim(fn(memory_mb=512)) is None
    assert pool.wanted("python") == 1
