"""`logs`: how many log lines a second Kapal stores end to end, and what a chatty function
costs its quiet neighbour.

One function prints 500 lines of 60 bytes per call (below the 64 KiB per-invocation cap),
called by wrk as fast as it answers; the lines counted are those in Postgres, from the
first call until the last line arrived. The per-function rate cap is off for the run
(`KAPAL_LOG_RATE_LINES_S=0`), the worst case for a neighbour. Then a quiet no-op's p50 at
one connection is measured alone and while the chatty one floods, alternating.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from typing import Any

import asyncpg

from bench.harness import deploy, kapal, say
from bench.wrk import WrkResult, wrk

LINES_PER_CALL = 500
CHATTY = (
    "def handle(event, context):\n"
    f"    for n in range({LINES_PER_CALL}):\n"
    "        print('line', n, 'of a chatty function, printing as fast as it can ....')\n"
    "    return 'ok'\n"
)
QUIET = "async def handle(event, context):\n    return 'ok'\n"
SCALING = {"scaling": {"min": 1, "max": 1, "concurrency": 64}}


async def _stored(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM function_logs WHERE function = 'chatty' AND stream = 'stdout'"
        )
        return n
    finally:
        await conn.close()


def stored(database_url: str) -> int:
    return asyncio.run(_stored(database_url))


def run(quick: bool) -> dict[str, Any]:
    seconds = 4 if quick else 8
    rounds = 1 if quick else 3
    quiet_alone: list[WrkResult] = []
    quiet_chatty: list[WrkResult] = []
    with kapal(KAPAL_LOG_RATE_LINES_S="0") as gw:
        deploy(gw, "chatty", CHATTY, SCALING)
        deploy(gw, "quiet", QUIET, SCALING)
        chatty_url, quiet_url = f"{gw.url}/fn/chatty", f"{gw.url}/fn/quiet"
        wrk(chatty_url, 1, 1)
        wrk(quiet_url, 1, 1)
        time.sleep(2.0)  # the warm-up lines stored

        say(f"throughput: chatty function, 4 connections, {seconds} s")
        before = stored(gw.database_url)
        started = time.monotonic()
        flood = wrk(chatty_url, 4, seconds)
        produced = flood.requests * LINES_PER_CALL
        last, last_at = before, time.monotonic()
        while time.monotonic() - last_at < 3.0:  # until nothing arrives for 3 s
            time.sleep(0.25)
            now = stored(gw.database_url)
            if now != last:
                last, last_at = now, time.monotonic()
        kept = last - before
        lines_per_s = kept / (last_at - started)

        for i in range(rounds):
            say(f"neighbour round {i + 1}/{rounds}")
            quiet_alone.append(wrk(quiet_url, 1, seconds, threads=1))
            background = threading.Thread(target=wrk, args=(chatty_url, 4, seconds + 2))
            background.start()
            time.sleep(1.0)
            quiet_chatty.append(wrk(quiet_url, 1, seconds, threads=1))
            background.join()
            time.sleep(2.0)  # the flood's lines stored before the next quiet run

    quiet = statistics.median(r.p50_us for r in quiet_alone)
    chatty = statistics.median(r.p50_us for r in quiet_chatty)
    return {
        "scenario": "logs",
        "seconds_per_run": seconds,
        "rounds": rounds,
        "lines_per_call": LINES_PER_CALL,
        "log_lines_produced": produced,
        "log_lines_stored": kept,
        "log_lines_per_s": round(lines_per_s),
        "chatty_calls_per_s": round(flood.rps),
        "warm_p50_us_neighbour_quiet": quiet,
        "warm_p50_us_neighbour_chatty": chatty,
        "neighbour_p50_ratio": round(chatty / quiet, 3),
        "errors": sum(r.errors + r.non2xx for r in (flood, *quiet_alone, *quiet_chatty)),
    }
