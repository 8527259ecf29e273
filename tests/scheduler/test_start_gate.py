"""The start gate: at most N starts reach the engine at once; the rest wait, instances
before prewarmed containers, each in the order asked."""

from __future__ import annotations

import asyncio

import pytest

from scheduler.backend import Running
from scheduler.models import PREWARM_NAME, FunctionSpec
from scheduler.start_gate import StartGate
from tests.scheduler.test_pool import FakeBackend


class HeldBackend(FakeBackend):
    """Each start waits until the test lets it finish."""

    def __init__(self) -> None:
        super().__init__()
        self.entered: list[str] = []
        self.release: dict[str, asyncio.Event] = {}

    async def start(self, spec: FunctionSpec, instance_id: str) -> Running:
        self.entered.append(instance_id)
        self.release[instance_id] = asyncio.Event()
        await self.release[instance_id].wait()
        return await super().start(spec, instance_id)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def spec(name: str = "f") -> FunctionSpec:
    return FunctionSpec(name=name, version=1, image="img:1")


async def test_at_most_n_starts_at_once_the_rest_in_order() -> None:
    backend = HeldBackend()
    gate = StartGate(backend, 2)
    tasks = [asyncio.ensure_future(gate.start(spec(), f"i{n}")) for n in range(5)]
    await settle()
    assert backend.entered == ["i0", "i1"]
    assert gate.queued == 3

    backend.release["i1"].set()
    await settle()
    assert backend.entered == ["i0", "i1", "i2"]
    assert gate.queued == 2
    assert (await tasks[1]).id == "c-i1"

    for n in range(5):
        await settle()
        if f"i{n}" in backend.release:
            backend.release[f"i{n}"].set()
    await asyncio.gather(*tasks)
    assert backend.entered == ["i0", "i1", "i2", "i3", "i4"]
    assert gate.queued == 0


async def test_a_failed_start_gives_its_turn_to_the_next() -> None:
    backend = FakeBackend(fail_start=RuntimeError("engine said no"))
    gate = StartGate(backend, 1)
    for n in range(3):
        with pytest.raises(RuntimeError):
            await gate.start(spec(), f"i{n}")
    backend.fail_start = None
    assert (await gate.start(spec(), "ok")).id == "c-ok"


async def test_other_calls_pass_straight_through() -> None:
    backend = FakeBackend()
    gate = StartGate(backend, 1)
    await gate.pause("c")
    await gate.unpause("c")
    await gate.remove("c", 1.0)
    assert (backend.paused, backend.unpaused, backend.removed) == (["c"], ["c"], ["c"])


def test_at_least_one_at_once() -> None:
    with pytest.raises(ValueError, match="at_once"):
        StartGate(FakeBackend(), 0)


async def test_instances_never_wait_for_prewarmed_containers() -> None:
    backend = HeldBackend()
    gate = StartGate(backend, 1)
    first = asyncio.ensure_future(gate.start(spec(PREWARM_NAME), "p0"))
    ahead = [asyncio.ensure_future(gate.start(spec(PREWARM_NAME), f"p{n}")) for n in (1, 2)]
    await settle()
    burst = [asyncio.ensure_future(gate.start(spec(), f"i{n}")) for n in range(2)]
    await settle()
    # An instance starts beside the prewarm start under way; the next waits for it only.
    assert backend.entered == ["p0", "i0"] and gate.queued == 3

    for done, then in (("i0", "i1"), ("p0", None), ("i1", "p1"), ("p1", "p2")):
        backend.release[done].set()
        await settle()
        assert backend.entered[-1] == (then or "i1")
    backend.release["p2"].set()
    await asyncio.gather(first, *ahead, *burst)
    assert backend.entered == ["p0", "i0", "i1", "p1", "p2"]
    assert gate.queued == 0


async def test_a_start_cancelled_while_waiting_leaves_the_turn_to_others() -> None:
    backend = HeldBackend()
    gate = StartGate(backend, 1)
    first = asyncio.ensure_future(gate.start(spec(), "i0"))
    gone = asyncio.ensure_future(gate.start(spec(), "i1"))
    last = asyncio.ensure_future(gate.start(spec(), "i2"))
    await settle()
    gone.cancel()
    backend.release["i0"].set()
    await settle()
    assert backend.entered == ["i0", "i2"]
    backend.release["i2"].set()
    await asyncio.gather(first, last)
    assert gone.cancelled()
