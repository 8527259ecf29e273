"""`keepalive`: a synthetic trace of many functions replayed against Kapal, once with the
fixed keep-alive and once with the learned one, in the same run.

The trace is `scheduler.keepalive_sim.generate` (Poisson, periodic and bursty functions,
mean gaps 1 s to 10,000 s: four orders of magnitude) with time scaled down 60 times: a
simulated minute lasts a real second, so 5 real minutes replay 5 simulated hours (1 with
`--quick`), as two replays of half that length per policy in the order fixed, learned,
learned, fixed. Every function has `idle_timeout_s` 10 (the 10-minute keep-alive of "Serverless
in the Wild", scaled) and the autoscaler's stable window is 1 s (a minute, scaled): under
the fixed policy an idle instance is ready for about a second, paused, then removed after
10 s. The learned policy's histogram has 1 s bins (a minute, scaled, as in the paper).

Figures per policy: cold starts (requests answered with `X-Kapal-Cold-Start`: a paused,
prewarmed or new instance) as a percent of requests, and instance memory over time in
MiB·s, counted as each function's memory limit x the seconds its instances exist
(starting, ready, paused or draining) as the gateway lists them, sampled every 0.5 s.
`sim_*` are the decider alone over the same scaled trace, for comparison.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from bench.harness import deploy, kapal, say
from scheduler.keepalive import KeepAliveConfig, KeepAlivePolicy
from scheduler.keepalive_sim import FunctionTrace, SimConfig, generate, replay_all

NOOP = "def handle(event, context):\n    return 'ok'\n"
# A simulated minute per real second.
TIME_SCALE = 60.0
SEED = 13
IDLE_TIMEOUT_S = 10.0
MEMORY_MIB = 128
SAMPLE_S = 0.5


def scaled_trace(real_s: float) -> list[FunctionTrace]:
    return [
        FunctionTrace(
            t.name,
            t.kind,
            t.mean_gap_s / TIME_SCALE,
            tuple(a / TIME_SCALE for a in t.arrivals),
            real_s,
        )
        for t in generate(SEED, real_s * TIME_SCALE)
    ]


async def _replay(url: str, headers: dict[str, str], traces: list[FunctionTrace]) -> dict[str, Any]:
    """Send every request at its time; count cold starts, errors and instance MiB·s."""
    arrivals = sorted((a, t.name) for t in traces for a in t.arrivals)
    cold = errors = 0
    # Failed requests by status (0: no answer).
    failed: dict[int, int] = {}
    # Cold starts per kind of arrivals (poisson, periodic, bursty).
    by_kind: dict[str, int] = {t.kind: 0 for t in traces}
    kind_of = {t.name: t.kind for t in traces}
    mib_s = 0.0
    done = asyncio.Event()
    conn = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=conn) as http:

        async def call(name: str) -> None:
            nonlocal cold, errors
            try:
                async with http.get(f"{url}/fn/{name}") as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                        failed[r.status] = failed.get(r.status, 0) + 1
                    elif "X-Kapal-Cold-Start" in r.headers:
                        cold += 1
                        by_kind[kind_of[name]] += 1
            except aiohttp.ClientError:
                errors += 1
                failed[0] = failed.get(0, 0) + 1

        async def sample() -> None:
            nonlocal mib_s
            last = time.monotonic()
            while not done.is_set():
                async with http.get(f"{url}/v1/functions", headers=headers) as r:
                    body = await r.json()
                now = time.monotonic()
                loaded = sum(len(f.get("instances") or []) for f in body["functions"])
                mib_s += loaded * MEMORY_MIB * (now - last)
                last = now
                await asyncio.sleep(SAMPLE_S)

        sampler = asyncio.create_task(sample())
        began = time.monotonic()
        calls: set[asyncio.Task[None]] = set()
        for at, name in arrivals:
            delay = began + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(call(name))
            calls.add(task)
            task.add_done_callback(calls.discard)
        # The trace's end: what is still loaded until then counts, as in the simulation.
        end = began + traces[0].end_s
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        await asyncio.gather(*calls)
        done.set()
        await sampler
    return {
        "requests": len(arrivals),
        "cold": cold,
        "errors": errors,
        "mib_s": mib_s,
        "by_kind": by_kind,
        "failed": failed,
    }


def _one(policy: KeepAlivePolicy, traces: list[FunctionTrace]) -> dict[str, Any]:
    env = {
        "KAPAL_KEEPALIVE": policy.value,
        "KAPAL_AUTOSCALE_STABLE_WINDOW_S": "1",
        "KAPAL_AUTOSCALE_PANIC_WINDOW_S": "1",
    }
    with kapal(**env) as gw:
        say(f"{policy.value}: deploying {len(traces)} functions")
        spec = {
            "scaling": {"idle_timeout_s": IDLE_TIMEOUT_S},
            "limits": {"memory_mb": MEMORY_MIB},
        }
        for t in traces:
            deploy(gw, t.name, NOOP, spec)
        say(f"{policy.value}: replaying {traces[0].end_s:.0f} s")
        return asyncio.run(_replay(gw.url, gw.headers, traces))


def _add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key in ("requests", "cold", "errors", "mib_s"):
        out[key] = a[key] + b[key]
    for key in ("by_kind", "failed"):
        out[key] = {k: a[key].get(k, 0) + b[key].get(k, 0) for k in {*a[key], *b[key]}}
    return out


def run(quick: bool) -> dict[str, Any]:
    # Each policy twice, in the order fixed, learned, learned, fixed: a machine whose
    # load drifts during the run weighs on both alike.
    real_s = 30.0 if quick else 150.0
    traces = scaled_trace(real_s)
    f, learn = KeepAlivePolicy.FIXED, KeepAlivePolicy.LEARNED
    got = {f: _one(f, traces)}
    got[learn] = _one(learn, traces)
    got[learn] = _add(got[learn], _one(learn, traces))
    got[f] = _add(got[f], _one(f, traces))
    sim_config = SimConfig(
        idle_timeout_s=IDLE_TIMEOUT_S,
        fixed_ready_s=1.0,
        duration_s=0.002,
        memory_mib=MEMORY_MIB,
        keepalive=KeepAliveConfig(),
    )
    sim = {p: replay_all(traces, p, sim_config) for p in got}  # one pass: ratios compare

    def pct(r: dict[str, Any]) -> float:
        return round(100.0 * float(r["cold"]) / max(1, int(r["requests"])), 2)

    fixed, learned = got[KeepAlivePolicy.FIXED], got[KeepAlivePolicy.LEARNED]
    return {
        "seed": SEED,
        "time_scale": TIME_SCALE,
        "seconds_per_policy": 2 * real_s,
        "order": "fixed, learned, learned, fixed",
        "functions": len(traces),
        "requests": fixed["requests"],
        "errors_fixed": fixed["errors"],
        "errors_learned": learned["errors"],
        "errors_by_status_fixed": fixed["failed"],
        "errors_by_status_learned": learned["failed"],
        "cold_starts_fixed": fixed["cold"],
        "cold_starts_learned": learned["cold"],
        "cold_start_pct_fixed": pct(fixed),
        "cold_start_pct_learned": pct(learned),
        "cold_starts_by_kind_fixed": fixed["by_kind"],
        "cold_starts_by_kind_learned": learned["by_kind"],
        "instance_mib_s_fixed": round(fixed["mib_s"]),
        "instance_mib_s_learned": round(learned["mib_s"]),
        "sim_cold_start_pct_fixed": round(sim[KeepAlivePolicy.FIXED].cold_pct, 2),
        "sim_cold_start_pct_learned": round(sim[KeepAlivePolicy.LEARNED].cold_pct, 2),
        "sim_instance_mib_s_fixed": round(sim[KeepAlivePolicy.FIXED].mib_s),
        "sim_instance_mib_s_learned": round(sim[KeepAlivePolicy.LEARNED].mib_s),
        "goal_met": pct(learned) < pct(fixed) and learned["mib_s"] < fixed["mib_s"],
    }
