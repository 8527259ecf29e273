"""Exchange deadlines: one sweep fails what is late, nothing else."""

from __future__ import annotations

import asyncio

import pytest

from gateway.upstream import SWEEP_S, Upstreams


async def test_a_late_exchange_fails_with_timeout_and_a_finished_one_is_left_alone() -> None:
    upstreams = Upstreams()
    loop = asyncio.get_running_loop()
    late: asyncio.Future[None] = loop.create_future()
    finished: asyncio.Future[None] = loop.create_future()
    later: asyncio.Future[None] = loop.create_future()
    upstreams.watch(late, loop.time())
    upstreams.watch(finished, loop.time())
    upstreams.watch(later, loop.time() + 3600)
    finished.set_result(None)
    upstreams.unwatch(finished)
    with pytest.raises(TimeoutError):
        await late
    await asyncio.sleep(SWEEP_S * 2)
    assert not later.done()
    upstreams.close()
    assert not later.done()


async def test_the_sweep_stops_when_nothing_is_in_flight_and_starts_again() -> None:
    upstreams = Upstreams()
    loop = asyncio.get_running_loop()
    first: asyncio.Future[None] = loop.create_future()
    upstreams.watch(first, loop.time())
    with pytest.raises(TimeoutError):
        await first
    await asyncio.sleep(SWEEP_S * 3)
    assert upstreams._sweeper is None  # idle: no timer wakes the gateway
    second: asyncio.Future[None] = loop.create_future()
    upstreams.watch(second, loop.time())
    with pytest.raises(TimeoutError):
        await second
    upstreams.close()
