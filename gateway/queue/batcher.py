"""Group commit: concurrent callers' items written together, each caller answered after."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("kapal.gateway.queue")


class GroupCommit(Generic[T, R]):
    """`submit` waits until its item is part of a flushed batch and returns its result.

    `flush` gets a batch and returns one result per item, in order (an exception for an
    item that alone failed). While `parallel`
    batches are being written the next one fills, so batches grow with load and an idle
    system answers in one round trip.
    """

    def __init__(
        self,
        name: str,
        flush: Callable[[list[T]], Awaitable[list[R | BaseException]]],
        *,
        max_batch: int = 500,
        window_s: float = 0.001,
        parallel: int = 3,
    ) -> None:
        self.name = name
        self._flush = flush
        self.max_batch = max_batch
        self.window_s = window_s
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._ready = asyncio.Event()
        self._slots = asyncio.Semaphore(parallel)
        self._inflight: set[asyncio.Task[None]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._pending)

    async def submit(self, item: T) -> R:
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        self._ready.set()
        return await fut

    async def run(self, stop: asyncio.Event) -> None:
        """The flushing loop; returns once `stop` is set and everything pending is written."""
        while True:
            if not self._pending:
                if stop.is_set():
                    break
                self._ready.clear()
                waiters = (
                    asyncio.ensure_future(stop.wait()),
                    asyncio.ensure_future(self._ready.wait()),
                )
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
                continue
            # Items pile up while every writer is busy: that wait is the grouping. With a
            # writer free, a short window still lets a burst's first requests share a write.
            await self._slots.acquire()
            if self.window_s and len(self._pending) < self.max_batch and self._inflight:
                await asyncio.sleep(self.window_s)
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            task = asyncio.create_task(self._write(batch), name=f"{self.name}-flush")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        self._closed = True

    async def _write(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
        except Exception as e:
            log.warning("group commit failed", extra={"batcher": self.name, "error": str(e)})
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
        else:
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
        finally:
            self._slots.release()
