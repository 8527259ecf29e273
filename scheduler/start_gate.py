"""A bound on how many containers the engine is asked to start at once.

The engine does much of a start one at a time: asked for 12 at once here, each took
4.3 s (p50) and they all arrived together near the end; 2 at a time, each took 0.7 s at
the same total rate (2.3-2.8 starts/s on this 2-core host). So the starts beyond a few
wait here, instances requests wait for before prewarmed containers, each kind in the
order asked, and a burst's capacity arrives one instance after another instead of all
at once after seconds. Everything else passes straight through.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from scheduler.backend import ContainerBackend, Running
from scheduler.models import PREWARM_NAME, FunctionSpec


class StartGate:
    """A `ContainerBackend` that runs at most `at_once` instance starts at a time.

    Instances that requests wait for never wait for prewarmed containers (started ahead,
    for a later burst): those start only while no instance starts or waits, at most
    `at_once` of them, or a refill of many would hold a burst's cold starts back.
    """

    def __init__(self, backend: ContainerBackend, at_once: int) -> None:
        if at_once < 1:
            raise ValueError(f"at_once must be at least 1, not {at_once}")
        self.backend = backend
        self.at_once = at_once
        # Starts under way, and starts waiting for a turn: instances, prewarmed containers.
        self._running = {True: 0, False: 0}
        self._waiting: dict[bool, deque[asyncio.Future[None]]] = {True: deque(), False: deque()}

    @property
    def queued(self) -> int:
        """Starts asked for and not yet handed to the engine."""
        return sum(not f.done() for q in self._waiting.values() for f in q)

    def _may_start(self, urgent: bool) -> bool:
        if urgent:
            return self._running[True] < self.at_once
        idle = not self._running[True] and not any(not f.done() for f in self._waiting[True])
        return idle and self._running[False] < self.at_once

    async def start(self, spec: FunctionSpec, instance_id: str) -> Running:
        urgent = spec.name != PREWARM_NAME
        waiting = self._waiting[urgent]
        if self._may_start(urgent) and not any(not f.done() for f in waiting):
            self._running[urgent] += 1
        else:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiting.append(turn)
            try:
                await turn  # the turn is handed over with its count
            except BaseException:
                if turn.done() and not turn.cancelled():
                    self._done(urgent)  # handed a turn it will not use: pass it on
                else:
                    turn.cancel()
                raise
        try:
            return await self.backend.start(spec, instance_id)
        finally:
            self._done(urgent)

    def _done(self, urgent: bool) -> None:
        """A start is over: hand turns to those waiting, instances first."""
        self._running[urgent] -= 1
        for kind in (True, False):
            waiting = self._waiting[kind]
            while waiting and self._may_start(kind):
                turn = waiting.popleft()
                if not turn.done():
                    self._running[kind] += 1
                    turn.set_result(None)

    async def remove(self, container_id: str, grace_s: float = 0.0) -> None:
        await self.backend.remove(container_id, grace_s)

    async def pause(self, container_id: str) -> None:
        await self.backend.pause(container_id)

    async def unpause(self, container_id: str) -> None:
        await self.backend.unpause(container_id)

    async def claim(self, container_id: str, spec: FunctionSpec, instance_id: str) -> None:
        await self.backend.claim(container_id, spec, instance_id)

    def watch(self, on_event: Callable[[str, str], None]) -> Callable[[], None]:
        return self.backend.watch(on_event)

    async def inspect(self, container_id: str) -> Running | None:
        return await self.backend.inspect(container_id)

    async def list_managed(self) -> list[Running]:
        return await self.backend.list_managed()
