"""Long-lived threads that run synchronous handlers, fed one job at a time from the loop.

`loop.run_in_executor` costs ≈ 90 µs a call here (a concurrent Future, a Condition-based
work queue, a chained asyncio future); a `SimpleQueue` of jobs and one
`call_soon_threadsafe` back cost ≈ 30 µs. Threads are started as concurrency needs them.

Not done, measured (issue 15): running a sync handler inline on the loop removes the hop
(sync p50 = async p50) but nothing can preempt it, so a handler that blocks stalls every
other request and the deadline sweep; choosing inline from past run times ("all recent runs
under 1 ms") still runs the first slow call inline. Batching the wake-ups back to the loop,
and the loop waiting briefly on a lock for a lone job's result, did not beat this hop.
"""

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

# (function, its arguments, the future its (result, exception) outcome resolves); None stops.
_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[_Outcome]"] | None
_Outcome = tuple[Any, BaseException | None]


class HandlerThreads:
    """Run blocking calls off the event loop. `run` and `close` are called on the loop only."""

    def __init__(self, limit: int, name: str = "kapal-handler") -> None:
        self._limit = limit
        self._name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._started = 0
        # Jobs handed out whose thread has not finished them, counted on the loop only, so
        # a thread still running a handler past its deadline keeps its slot.
        self._busy = 0
        # Of those, jobs whose caller stopped waiting (a deadline passed) but still run.
        self._late = 0

    @property
    def late(self) -> int:
        return self._late

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on one of the threads; its result, or what it raised, on the loop."""
        future: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        self._busy += 1
        if self._busy > self._started and self._started < self._limit:
            self._start_thread()
        self._jobs.put((fn, args, future))
        try:
            result, exc = await future
        except asyncio.CancelledError:
            self._late += 1
            raise
        if exc is not None:
            raise exc
        return result

    def close(self) -> None:
        """Idle threads exit; one still running a handler exits when it returns."""
        for _ in range(self._started):
            self._jobs.put(None)
        self._started = 0

    def _start_thread(self) -> None:
        self._started += 1
        name = f"{self._name}-{self._started}"
        # Daemon: a handler that never returns must not keep the process alive at exit.
        thread = threading.Thread(target=self._work, name=name, daemon=True)
        # From an empty context: each job brings the context of its own caller.
        contextvars.Context().run(thread.start)

    def _work(self) -> None:
        get = self._jobs.get
        while (job := get()) is not None:
            fn, args, future = job
            outcome: _Outcome
            try:
                outcome = (fn(*args), None)
            except BaseException as exc:  # handed to the caller, who decides what it means
                outcome = (None, exc)
            try:
                future.get_loop().call_soon_threadsafe(self._done, future, outcome)
            except RuntimeError:  # the loop is closed: the process is exiting
                return
            del job, fn, args, future, outcome

    def _done(self, future: "asyncio.Future[_Outcome]", outcome: _Outcome) -> None:
        self._busy -= 1
        if future.cancelled():  # the invocation passed its deadline and was answered
            self._late -= 1
        else:
            future.set_result(outcome)
