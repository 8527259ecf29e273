"""`kapal top`: a live table of functions from GET /v1/stats and GET /v1/functions."""

import argparse
import asyncio
import sys
from typing import Any

from rich.live import Live

from kapal.client import KapalClient
from kapal.output import (
    console,
    print_json,
    table,
)

TOP_COLUMNS = (
    "FUNCTION",
    "VERSION",
    "RPS",
    "P50 MS",
    "P99 MS",
    "CALLS",
    "ERRORS",
    "COLD",
    "READY",
    "BUSY",
    "STARTING",
    "PAUSED",
    "DRAINING",
)


async def top_rows(client: KapalClient, minutes: int) -> list[dict[str, Any]]:
    stats, functions = await asyncio.gather(client.stats(minutes), client.list())
    rows = []
    for fn in functions:
        total = (stats["functions"].get(fn["name"]) or {}).get("total") or {}
        states = {"ready": 0, "busy": 0, "starting": 0, "paused": 0, "draining": 0}
        for inst in fn.get("instances") or []:
            state = inst.get("state", "?")
            if state == "ready" and inst.get("in_flight"):
                state = "busy"
            states[state] = states.get(state, 0) + 1
        rows.append(
            {
                "function": fn["name"],
                "version": fn.get("version"),
                **{k: total.get(k) for k in ("rps", "p50_ms", "p99_ms", "count", "errors", "cold")},
                "instances": states,
            }
        )
    return rows


def top_table(rows: list[dict[str, Any]], minutes: int) -> Any:
    grid = table(
        TOP_COLUMNS,
        [
            (
                r["function"],
                r["version"],
                _num(r["rps"], 2),
                _num(r["p50_ms"], 1),
                _num(r["p99_ms"], 1),
                r["count"],
                r["errors"],
                r["cold"],
                *(
                    r["instances"].get(s, 0)
                    for s in ("ready", "busy", "starting", "paused", "draining")
                ),
            )
            for r in rows
        ],
    )
    grid.title = f"last {minutes} min"
    return grid


def _num(value: float | None, digits: int) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


async def top(client: KapalClient, args: argparse.Namespace) -> int:
    if args.once or args.json:
        rows = await top_rows(client, args.minutes)
        if args.json:
            print_json(rows)
        else:
            console().print(top_table(rows, args.minutes))
        return 0
    out = console()
    if not out.is_terminal:
        # Into a pipe or a file: one table after the other, until interrupted.
        while True:
            out.print(top_table(await top_rows(client, args.minutes), args.minutes))
            sys.stdout.flush()
            await asyncio.sleep(args.interval)
    with Live(console=out, auto_refresh=False) as live:
        while True:
            live.update(top_table(await top_rows(client, args.minutes), args.minutes))
            live.refresh()
            await asyncio.sleep(args.interval)
