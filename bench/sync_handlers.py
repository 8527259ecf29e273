"""`sync`: what a plain `def` handler costs beside an `async def` one, and why (issue 15).

Two parts, no engine, no gateway, no Postgres:
- the hand-off alone, in one process on uvloop: a trivial call made from the loop, one at a
  time (median µs per call) and 16 at once (calls/s), by each candidate: inline on the loop
  (the floor), a long-lived thread fed by a SimpleQueue answering by `call_soon_threadsafe`
  (the previous runtime), the same with the thread spinning on the queue before it blocks,
  the same with `sys.setswitchinterval(1e-4)`, and the runtime's `HandlerThreads` (the loop's
  own thread makes the call between two runs of the loop; a watchdog hands the loop on);
- the runtime itself on this host, an `async def` and a `def` no-op, wrk alternating: p50 at
  1 connection, req/s at 16, and per request its CPU µs and voluntary context switches
  (thread wake-ups), which hold better than latencies on a busy machine.
"""

from __future__ import annotations

import asyncio
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from bench.harness import say
from bench.runtime_logs import RUNTIME_DIR, Runtime
from bench.wrk import wrk

NOOP = "async def handle(event, context):\n    return 'ok'\n"
SYNC_NOOP = "def handle(event, context):\n    return 'ok'\n"

Run = Callable[..., Awaitable[Any]]


class QueueHop:
    """The previous runtime's hand-off: a SimpleQueue to one thread, call_soon_threadsafe back."""

    def __init__(self, spin: int = 0) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._spin = spin
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, args, future))
        return await future

    def close(self) -> None:
        self._jobs.put(None)

    def _get(self) -> Any:
        for _ in range(self._spin):  # spinning keeps the thread awake, yielding the GIL
            try:
                return self._jobs.get_nowait()
            except queue.Empty:
                time.sleep(0)
        return self._jobs.get()

    def _work(self) -> None:
        while (job := self._get()) is not None:
            fn, args, future = job
            future.get_loop().call_soon_threadsafe(future.set_result, fn(*args))


async def _calls(run: Run, one_at_a_time: int, together: int) -> tuple[float, float]:
    """(median µs per call one at a time, calls/s with 16 callers)."""
    took = []
    for _ in range(one_at_a_time):
        started = time.perf_counter_ns()
        await run(int)
        took.append(time.perf_counter_ns() - started)

    async def caller() -> None:
        for _ in range(together // 16):
            await run(int)

    started_s = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(16)))
    return statistics.median(took) / 1000, together / (time.perf_counter() - started_s)


def _on_uvloop(main: Coroutine[Any, Any, None]) -> None:
    import uvloop

    uvloop.run(main)


def hand_offs(n: int) -> dict[str, Any]:
    """Each candidate's figures, all in this process, one after the other."""
    if str(RUNTIME_DIR) not in sys.path:
        sys.path.append(str(RUNTIME_DIR))
    import uvloop
    from kapal_runtime.threads import HandlerThreads

    out: dict[str, Any] = {}

    async def inline(fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    def measure(name: str, run: Run) -> None:
        async def main() -> None:
            await _calls(run, n // 10, n // 10)  # warm
            p50, rate = await _calls(run, n, n)
            out[f"{name}_p50_us"], out[f"{name}_per_s_c16"] = round(p50, 1), round(rate)

        _on_uvloop(main())

    measure("inline", inline)
    for name, spin in (("queue_hop", 0), ("queue_hop_spin100", 100)):
        hop = QueueHop(spin)
        measure(name, hop.run)
        hop.close()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        hop = QueueHop()
        measure("queue_hop_switch100us", hop.run)
        hop.close()
    finally:
        sys.setswitchinterval(interval)
    threads = HandlerThreads(4)

    async def handover() -> None:
        await _calls(threads.run, n // 10, n // 10)
        p50, rate = await _calls(threads.run, n, n)
        out["handover_p50_us"], out["handover_per_s_c16"] = round(p50, 1), round(rate)

    threads.serve(uvloop.new_event_loop(), handover())
    return out


def _counts(pid: int) -> tuple[float, int]:
    """CPU seconds and voluntary context switches of a process, all its threads."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    switches += int(line.split()[1])
        except OSError:  # the thread ended meanwhile
            continue
    return cpu, switches


def runtimes(seconds: float, rounds: int) -> dict[str, Any]:
    # Per style and connections, per round: p50_us, rps, cpu_us, switches, errors.
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="kapal-bench-sync-") as tmp:
        started: dict[str, Runtime] = {}
        try:
            for style, code in (("async", NOOP), ("sync", SYNC_NOOP)):
                folder = Path(tmp) / style
                folder.mkdir()
                (folder / "handler.py").write_text(code)
                started[style] = Runtime(folder, KAPAL_CONCURRENCY="1000")
                wrk(started[style].url + "/", 4, 1)  # warm
            for i in range(rounds):
                say(f"round {i + 1}/{rounds}")
                for style, runtime in started.items():
                    for c in (1, 16):
                        cpu, switches = _counts(runtime.proc.pid)
                        r = wrk(runtime.url + "/", c, seconds, threads=min(2, c))
                        cpu_after, switches_after = _counts(runtime.proc.pid)
                        per = max(1, r.requests)
                        results.setdefault(f"{style}_c{c}", []).append(
                            {
                                "p50_us": r.p50_us,
                                "rps": r.rps,
                                "cpu_us": (cpu_after - cpu) * 1e6 / per,
                                "switches": (switches_after - switches) / per,
                                "errors": r.errors + r.non2xx,
                            }
                        )
        finally:
            for runtime in started.values():
                runtime.stop()

    def med(key: str, figure: str) -> float:
        return statistics.median(f[figure] for f in results[key])

    out: dict[str, Any] = {}
    for style in ("async", "sync"):
        out[f"runtime_{style}_p50_us_c1"] = med(f"{style}_c1", "p50_us")
        out[f"runtime_{style}_rps_c16"] = round(med(f"{style}_c16", "rps"))
        for c in (1, 16):
            out[f"runtime_{style}_cpu_us_per_req_c{c}"] = round(med(f"{style}_c{c}", "cpu_us"), 1)
            out[f"runtime_{style}_switches_per_req_c{c}"] = round(
                med(f"{style}_c{c}", "switches"), 3
            )
    out["errors"] = int(sum(f["errors"] for fs in results.values() for f in fs))
    return out


def run(quick: bool) -> dict[str, Any]:
    say("hand-offs alone")
    result: dict[str, Any] = {"scenario": "sync", **hand_offs(2000 if quick else 20000)}
    say("the runtime on this host")
    result.update(runtimes(2 if quick else 5, 1 if quick else 3))
    return result
