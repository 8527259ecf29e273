"""`warm`: a no-op function hit directly (its container address) and through the gateway,
and the same no-op as a plain `def` beside the `async def` one, on the same settings.

Beside the one-process gateway runs a second one of `KAPAL_WORKERS=2` on the same
database and namespace (peers, serving the same instances), for the figures of one and
two workers. The gateway's CPU time over each run, divided by the requests it proxied,
is steadier on a noisy machine than a throughput ratio.

All are measured in the same run, alternating, so the ratios hold on a noisy machine.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.harness import beside, cpu_s, deploy, get_function, kapal, say
from bench.wrk import WrkResult, wrk
from infra.local import GatewayProcess

WORKERS = 2

NOOP = "async def handle(event, context):\n    return 'ok'\n"
SYNC_NOOP = "def handle(event, context):\n    return 'ok'\n"
SCALING = {"scaling": {"min": 1, "max": 1, "concurrency": 1000}}


def run(quick: bool) -> dict[str, Any]:
    seconds = 4 if quick else 10
    rounds = 1 if quick else 3
    keys = ("d1", "g1", "d64", "g64", "w2", "s1", "g16", "s16")
    runs: dict[str, list[WrkResult]] = {k: [] for k in keys}
    # CPU microseconds per request of the gateway, per run.
    cpu: dict[str, list[float]] = {"g1": [], "g64": [], "w2": []}
    with kapal() as gw, beside(gw, KAPAL_WORKERS=str(WORKERS)) as gw2:
        deploy(gw, "noop", NOOP, SCALING)
        deploy(gw, "noop-sync", SYNC_NOOP, SCALING)
        url, sync_url = f"{gw.url}/fn/noop", f"{gw.url}/fn/noop-sync"
        url2 = f"{gw2.url}/fn/noop"
        wrk(url, 4, 1)  # warm up: instance started, connections open
        wrk(url2, 4, 1)
        wrk(sync_url, 16, 1)
        address = get_function(gw, "noop")["instances"][0]["address"]
        direct_url = f"http://{address}/"

        def measured(key: str, g: GatewayProcess, target: str, c: int, **kw: int) -> None:
            before = cpu_s(g)
            r = wrk(target, c, seconds, **kw)
            cpu[key].append((cpu_s(g) - before) * 1e6 / max(1, r.requests))
            runs[key].append(r)

        for i in range(rounds):
            say(f"round {i + 1}/{rounds}")
            runs["d1"].append(wrk(direct_url, 1, seconds, threads=1))
            measured("g1", gw, url, 1, threads=1)
            runs["d64"].append(wrk(direct_url, 64, seconds))
            measured("g64", gw, url, 64)
            measured("w2", gw2, url2, 64)
            runs["s1"].append(wrk(sync_url, 1, seconds, threads=1))
            runs["g16"].append(wrk(url, 16, seconds))
            runs["s16"].append(wrk(sync_url, 16, seconds))

    def med(key: str, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in runs[key]))

    direct_rps, gateway_rps = med("d64", "rps"), med("g64", "rps")
    d_p50, g_p50 = med("d1", "p50_us"), med("g1", "p50_us")
    return {
        "scenario": "warm",
        "seconds_per_run": seconds,
        "rounds": rounds,
        "direct_rps_c64": round(direct_rps),
        "gateway_rps_c64": round(gateway_rps),
        "rps_ratio_c64": round(gateway_rps / direct_rps, 3),
        "direct_p50_us_c1": d_p50,
        "gateway_p50_us_c1": g_p50,
        "added_p50_us_c1": g_p50 - d_p50,
        "direct_rps_c1": round(med("d1", "rps")),
        "gateway_rps_c1": round(med("g1", "rps")),
        "gateway_p99_us_c64": med("g64", "p99_us"),
        # One gateway process, and a gateway of WORKERS processes on the same instances.
        "gateway_workers": WORKERS,
        "gateway_rps_c64_w1": round(gateway_rps),
        f"gateway_rps_c64_w{WORKERS}": round(med("w2", "rps")),
        f"rps_ratio_c64_w{WORKERS}": round(med("w2", "rps") / direct_rps, 3),
        "gateway_cpu_us_per_req": round(statistics.median(cpu["g64"]), 1),
        "gateway_cpu_us_per_req_c1": round(statistics.median(cpu["g1"]), 1),
        f"gateway_cpu_us_per_req_w{WORKERS}": round(statistics.median(cpu["w2"]), 1),
        # Both handler styles through the gateway, on instances of the same settings.
        "async_p50_us_c1": g_p50,
        "sync_p50_us_c1": med("s1", "p50_us"),
        "async_rps_c16": round(med("g16", "rps")),
        "sync_rps_c16": round(med("s16", "rps")),
        "errors": sum(r.errors + r.non2xx for rs in runs.values() for r in rs),
    }
