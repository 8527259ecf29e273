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
