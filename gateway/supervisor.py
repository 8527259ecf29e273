"""Named background loops, restarted when they crash, stopped by one event."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("kapal.gateway.supervisor")

Loop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


async def either(a: asyncio.Event, b: asyncio.Event) -> None:
    """Until `a` or `b` is set (a loop's wake-up or its stop)."""
    waiters = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


class Supervisor:
    """Runs each loop as a named task; a loop that raises is logged and restarted."""

    def __init__(self, restart_delay_s: float = 1.0) -> None:
        self.restart_delay_s = restart_delay_s
        self.stop = asyncio.Event()
        self._loops: dict[str, Loop] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, name: str, loop: Loop) -> None:
        self._loops[name] = loop

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="kapal-supervisor")

    async def _supervise(self) -> None:
        tasks: dict[asyncio.Task[None], str] = {
            asyncio.create_task(loop(self.stop), name=n): n for n, loop in self._loops.items()
        }
        while tasks:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                name = tasks.pop(task)
                if task.cancelled() or self.stop.is_set():
                    continue
                exc = task.exception()
                log.error(
                    "background loop ended; restarting",
                    extra={"loop": name, "error": repr(exc)},
                    exc_info=exc,
                )
                await asyncio.sleep(self.restart_delay_s)
                tasks[asyncio.create_task(self._loops[name](self.stop), name=name)] = name

    async def close(self) -> None:
        self.stop.set()
        if self._task is not None:
            await self._task
