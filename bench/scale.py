"""`scale`: a 50 ms function (concurrency 4) hit by a step from 1 to 64 connections, then idle.

Figures: errors, seconds_to_target_instances, p99 during the step and steady at 1
connection, instances_peak, seconds_to_zero (short idle timeout) and requests dropped
while the pool scales down under a light load; idle_memory_mib (every Kapal container
with no load, from the engine's stats) before the step and once back at zero; and where
the step's time went (`trace`: instances ready by tier, new-container start times, the
autoscaler's decisions), read from the gateway's log. Then the same step again
(`second_step_*`): what the first burst taught the prewarm pool.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from bench.burst_trace import idle_memory_mib, running, step_trace
from bench.harness import deploy, get_function, kapal, say
from bench.wrk import WrkResult, wrk
from infra.local import GatewayProcess

SLEEP_50MS = (
    "import asyncio\n"
    "async def handle(event, context):\n"
    "    await asyncio.sleep(0.05)\n"
    "    return 'ok'\n"
)
CONCURRENCY = 4
CONNECTIONS = 64
MAX_INSTANCES = 32


def active(fn: dict[str, Any]) -> int:
    return int(fn["pool"]["ready"])


def run(quick: bool) -> dict[str, Any]:
    step_s = 10 if quick else 20
    stable_s = 6 if quick else 20
    idle_s = 2 if quick else 5
    target = min(MAX_INSTANCES, math.ceil(CONNECTIONS / (CONCURRENCY * 0.7)))
    env = {"KAPAL_AUTOSCALE_STABLE_WINDOW_S": str(stable_s)}
    # INFO: the log says which tier each instance came from and what the scaler decided.
    with kapal(log_level="INFO", **env) as gw:
        spec = {
            "scaling": {"concurrency": CONCURRENCY, "max": MAX_INSTANCES, "idle_timeout_s": idle_s}
        }
        deploy(gw, "sleepy", SLEEP_50MS, spec)
        url = f"{gw.url}/fn/sleepy"
        wrk(url, 1, 1, threads=1)  # the first (cold) request is not part of steady state
        say("steady: 1 connection")
        steady = wrk(url, 1, 5 if quick else 10, threads=1)
        time.sleep(1.0)  # the last requests finish and the prewarm pool is refilled
        memory_idle, containers_idle = idle_memory_mib(gw.namespace)

        say(f"step: {CONNECTIONS} connections for {step_s}s")
        step, reached, peak, trace = burst(gw, url, target, step_s)

        say("scale-down under 2 connections, then idle to zero")
        light: list[WrkResult] = []
        light_s = stable_s + 4
        loader = threading.Thread(target=lambda: light.append(wrk(url, 2, light_s, threads=1)))
        loader.start()
        loader.join()
        idle_began = time.monotonic()
        zero: float | None = None
        while time.monotonic() - idle_began < stable_s * 3 + idle_s + 30:
            fn = get_function(gw, "sleepy")
            if not fn["instances"]:
                zero = time.monotonic() - idle_began
                break
            time.sleep(0.2)
        settle(gw.namespace)  # the prewarm pool is refilled
        memory_zero, containers_zero = idle_memory_mib(gw.namespace)

        # The same step again: what the first burst taught the prewarm pool.
        say(f"second step: {CONNECTIONS} connections for {step_s}s")
        again, reached_again, _, trace_again = burst(gw, url, target, step_s)
    return {
        "scenario": "scale",
        "step_seconds": step_s,
        "stable_window_s": stable_s,
        "idle_timeout_s": idle_s,
        "target_instances": target,
        "errors": sum(r.errors + r.non2xx for r in (steady, step, again)),
        "seconds_to_target_instances": round(reached, 2) if reached is not None else None,
        "p99_ms_during_step": round(step.p99_us / 1000, 1),
        "p99_ms_steady": round(steady.p99_us / 1000, 1),
        "rps_during_step": round(step.rps),
        "instances_peak": peak,
        "seconds_to_zero": round(zero, 1) if zero is not None else None,
        "dropped_on_scale_down": light[0].errors + light[0].non2xx,
        "requests_during_scale_down": light[0].requests,
        # One warm instance and the prewarmed containers, no load.
        "idle_memory_mib": memory_idle,
        "idle_containers": containers_idle,
        # Back at zero instances after the burst (what is left: prewarmed containers).
        "idle_memory_mib_at_zero": memory_zero,
        "idle_containers_at_zero": containers_zero,
        "trace": trace,
        "second_step_seconds_to_target": (
            round(reached_again, 2) if reached_again is not None else None
        ),
        "second_step_p99_ms": round(again.p99_us / 1000, 1),
        "second_step_requests": again.requests,
        "second_step_trace": trace_again,
    }


def burst(
    gw: GatewayProcess, url: str, target: int, seconds: float
) -> tuple[WrkResult, float | None, int, dict[str, Any]]:
    """`CONNECTIONS` connections for `seconds`: the load's figures, seconds until `target`
    instances were ready (None: never), the most ready, and where the time went."""
    result: list[WrkResult] = []
    loader = threading.Thread(
        target=lambda: result.append(wrk(url, CONNECTIONS, seconds, threads=2))
    )
    began = time.monotonic()
    began_wall = time.time()
    loader.start()
    reached: float | None = None
    peak = 0
    while loader.is_alive():
        n = active(get_function(gw, "sleepy"))
        peak = max(peak, n)
        if reached is None and n >= target:
            reached = time.monotonic() - began
        time.sleep(0.1)
    loader.join()
    return result[0], reached, peak, step_trace(gw.log_path, began_wall, time.time())


def settle(namespace: str, quiet_s: float = 3.0, longest_s: float = 30.0) -> None:
    """Wait until the namespace's container count has not changed for `quiet_s`."""
    began = last_change = time.monotonic()
    last = -1
    while time.monotonic() - began < longest_s:
        n = len(running(namespace))
        if n != last:
            last, last_change = n, time.monotonic()
        elif time.monotonic() - last_change >= quiet_s:
            return
        time.sleep(0.5)
