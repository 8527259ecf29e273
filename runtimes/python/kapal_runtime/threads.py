"""Synchronous handlers run by the thread that runs the event loop, which hands the loop to
another thread when one of them blocks.

Why (issue 15): a hop to a worker thread and back costs two thread wake-ups, and that was
most of what separated a plain `def` handler from an `async def` one. Measured alone here
(`python -m bench sync`): an executor future ≈ 90 µs; a SimpleQueue out and
`call_soon_threadsafe` back 16 to 47 µs (busy vs idle CPUs); the same with the thread
spinning on the queue before it blocks 74 to 145 µs (they pass the GIL back and forth);
`sys.setswitchinterval(1e-4)` changes nothing; stopping the loop, making the call and
running the loop again ≈ 4 µs. So no hop in the common case:

- `run` queues the call and stops the loop; when the loop has finished its iteration, the
  thread that ran it (the driver) makes the queued calls itself, sets their futures (no
  other thread touches the loop while it is stopped) and runs the loop again;
- a watchdog looks every `tick_s`: a call found running at two looks in a row costs its
  thread the loop, which another thread takes over (it makes the calls still queued and
  runs the loop); the slow call's outcome reaches the loop by `call_soon_threadsafe` when
  it returns, and its thread then waits to be handed the loop in turn.

A blocking handler so stalls the others for one or two ticks, and the deadline sweep, a
task on the loop, still answers its invocation. Also rejected: running sync handlers on the
loop with nothing to take the loop back (one blocking call stalls everything), and choosing
that from past run times (the first slow call still stalls everything).
"""

import asyncio
import contextvars
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

# How often the watchdog looks; a call running at two looks in a row loses the loop.
WATCH_TICK_S = 0.005
# Looks without a new call after which the watchdog sleeps until the next call starts, so
# an idle instance is not woken 200 times a second.
PARK_AFTER_LOOKS = 4

_Outcome = tuple[Any, BaseException | None]


@dataclass(slots=True)
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    # Resolved with the call's (result, exception) outcome.
    future: "asyncio.Future[_Outcome]"


class HandlerThreads:
    """Blocking calls made without a thread hop unless they block. `serve` runs the loop;
    `run` and `late` are used on the loop only."""

    def __init__(self, limit: int, name: str = "kapal-handler", tick_s: float = WATCH_TICK_S):
        # Threads that may be held by calls still running after losing the loop.
        self._limit = limit
        self._name = name
        self._tick_s = tick_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._target: asyncio.Task[None] | None = None
        # Queued by `run`, made by the driver while the loop is stopped.
        self._calls: deque[_Call] = deque()
        # Between a driver finishing a call and the watchdog taking the loop from it.
        self._lock = threading.Lock()
        # The call the driver is making, and how many it has started, so the watchdog tells
        # one long call from two short ones.
        self._running: _Call | None = None
        self._started_calls = 0
        # The watchdog sleeps (parked) until a driver starting a call releases `_unpark`.
        self._parked = False
        self._unpark = threading.Lock()
        self._unpark.acquire()
        # To threads waiting for the loop: True, take it; False, exit.
        self._orders: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._threads = 0
        self._idle = 0
        # Calls whose caller stopped waiting (a deadline passed) but which still run.
        self._late = 0
        self._ended = threading.Event()
        self._error: BaseException | None = None

    @property
    def late(self) -> int:
        return self._late

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) between two runs of the loop; its result, or what it raised."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            raise RuntimeError("HandlerThreads.run is for the loop its serve() runs")
        future: asyncio.Future[_Outcome] = loop.create_future()
        if not self._calls:
            loop.stop()  # the driver makes the calls once this iteration ends
        self._calls.append(_Call(fn, args, future))
        try:
            result, exc = await future
        except asyncio.CancelledError:
            if future.cancelled():  # the call is queued or still running
                self._late += 1
            raise
        if exc is not None:
            raise exc
        return result

    def serve(self, loop: asyncio.AbstractEventLoop, main: Coroutine[Any, Any, None]) -> None:
        """Run `main` on `loop`, then cancel its leftover tasks and close the loop.

        The loop runs on threads of this object's own; the calling thread only waits, so a
        Python signal handler it installed runs at once whatever the handlers do.
        """
        self._loop = loop
        self._target = loop.create_task(self._whole(main))
        self._target.add_done_callback(lambda _: loop.stop())
        self._start_thread(self._watch, "watchdog")
        self._start_thread(self._hold, str(self._new_thread()), first=True)
        self._ended.wait()
        if self._error is not None:
            raise self._error

    async def _whole(self, main: Coroutine[Any, Any, None]) -> None:
        try:
            await main
        finally:
            current = asyncio.current_task()
            leftovers = [task for task in asyncio.all_tasks() if task is not current]
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)
            loop = asyncio.get_running_loop()
            await loop.shutdown_asyncgens()

    def _new_thread(self) -> int:
        self._threads += 1
        return self._threads

    def _start_thread(self, target: Callable[..., None], suffix: str, **kw: bool) -> None:
        # Daemon: a handler that never returns must not keep the process alive at exit.
        thread = threading.Thread(
            target=target, name=f"{self._name}-{suffix}", kwargs=kw, daemon=True
        )
        # From an empty context: each call brings the context of its own caller.
        contextvars.Context().run(thread.start)

    def _hold(self, first: bool = False) -> None:
        """A thread's life: drive the loop when told to, until the end."""
        take = first
        try:
            while take or self._wait_for_loop():
                take = False
                if self._drive():
                    self._end()
                    return
        except BaseException as exc:  # the loop itself failed: `serve` must not wait forever
            self._error = exc
            self._ended.set()

    def _wait_for_loop(self) -> bool:
        with self._lock:
            self._idle += 1
        return self._orders.get()

    def _drive(self) -> bool:
        """Hold the loop: make the queued calls, run the loop, again, until the target is
        done (True) or the watchdog hands the loop to another thread (False)."""
        loop, target = self._loop, self._target
        assert loop is not None and target is not None
        calls = self._calls
        while True:
            while calls:
                if not self._make(calls.popleft()):
                    return False
            if target.done():
                return True
            loop.run_forever()

    def _make(self, call: _Call) -> bool:
        """Make one call as the driver; False if the loop was taken away meanwhile."""
        future = call.future
        if future.cancelled():  # its caller gave up before it started
            self._late -= 1
            return True
        with self._lock:
            self._running = call
            self._started_calls += 1
            parked, self._parked = self._parked, False
        if parked:
            self._unpark.release()
        outcome: _Outcome
        try:
            outcome = (call.fn(*call.args), None)
        except BaseException as exc:  # handed to the caller, who decides what it means
            outcome = (None, exc)
        with self._lock:
            kept = self._running is call
            if kept:  # else it lost the loop, and `_running` may be the new driver's call
                self._running = None
        if kept:
            self._settle(future, outcome)  # the loop is stopped: this thread may touch it
            return True
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._settle, future, outcome)
        except RuntimeError:  # the loop is closed: the process is exiting
            pass
        return False

    def _settle(self, future: "asyncio.Future[_Outcome]", outcome: _Outcome) -> None:
        if future.cancelled():  # the invocation passed its deadline and was answered
            self._late -= 1
        else:
            future.set_result(outcome)

    def _watch(self) -> None:
        seen, quiet = -1, 0
        while not self._ended.is_set():
            if quiet >= PARK_AFTER_LOOKS:
                quiet = 0
                with self._lock:
                    park = self._parked = self._running is None and self._started_calls == seen
                if park:
                    self._unpark.acquire()  # until a call starts (even one started meanwhile)
                continue
            time.sleep(self._tick_s)
            with self._lock:
                if self._running is None or self._started_calls != seen:
                    quiet = quiet + 1 if self._started_calls == seen else 0
                    seen = self._started_calls
                    continue
                # The same call at two looks: its thread loses the loop, if one can take it.
                if self._idle:
                    self._idle -= 1
                    fresh = False
                elif self._threads <= self._limit:
                    fresh = True
                else:
                    continue
                self._running = None
            if fresh:
                self._start_thread(self._hold, str(self._new_thread()), first=True)
            else:
                self._orders.put(True)

    def _end(self) -> None:
        """The target is done: close the loop and let every thread go."""
        loop, target = self._loop, self._target
        assert loop is not None and target is not None
        if not target.cancelled() and target.exception() is not None:
            self._error = target.exception()
        loop.close()
        self._ended.set()
        with self._lock:
            parked, self._parked = self._parked, False
        if parked:
            self._unpark.release()
        for _ in range(self._threads):
            self._orders.put(False)
