"""Batch jobs: create from JSON Lines (with a progress bar), follow, results, cancel."""

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kapal.client import KapalClient
from kapal.errors import KapalError
from kapal.output import (
    POLL_S,
    console,
    print_json,
    print_ndjson,
    print_table,
)


async def jobs(client: KapalClient, args: argparse.Namespace) -> int:
    sub = args.jobs_command
    if sub == "create":
        try:
            items = await asyncio.to_thread(Path(args.items).read_bytes)
        except OSError as exc:
            raise KapalError(f"cannot read {args.items}: {exc.strerror or exc}") from exc
        made = await client.create_job(
            args.function, items, max_concurrency=args.max_concurrency, retries=args.retries
        )
        if not args.wait:
            if args.json:
                print_json(made)
            else:
                print(made["id"])
            return 0
        job = await follow_job(client, str(made["id"]), args.json)
        if args.json:
            print_json(job)
        else:
            print_table(("STATE", "ITEMS"), [(s, n) for s, n in job["counts"].items()])
        return 0 if job["counts"].get("succeeded") == job["total"] else 1
    if sub == "get":
        job = await client.job(args.id)
        if args.json:
            print_json(job)
        else:
            _job_table([job])
        return 0
    if sub == "ls":
        found = await client.jobs(args.function, args.limit)
        if args.json:
            print_json(found)
        else:
            _job_table(found)
        return 0
    if sub == "cancel":
        cancelled = await client.cancel_job(args.id)
        if args.json:
            print_json(cancelled or {"id": args.id, "cancelled": True})
        else:
            print(f"cancelled {args.id}")
        return 0
    async for line in client.job_results(args.id):
        if args.json:
            print_ndjson(line)
        else:
            result = line.get("result", line.get("error"))
            print(f"{line['index']}\t{line['status']}\t{json.dumps(result, default=str)}")
    return 0


def _job_table(found: list[dict[str, Any]]) -> None:
    print_table(
        ("ID", "FUNCTION", "STATE", "DONE", "TOTAL", "SUCCEEDED", "FAILED", "DEAD", "CREATED"),
        [
            (
                j["id"],
                j["function"],
                j["state"],
                j["done"],
                j["total"],
                j["counts"].get("succeeded", 0),
                j["counts"].get("failed", 0),
                j["counts"].get("dead", 0),
                j["created_at"],
            )
            for j in found
        ],
    )


async def follow_job(client: KapalClient, id: str, quiet: bool) -> dict[str, Any]:
    """Poll a job until it is no longer running; a progress bar on stderr meanwhile."""
    bar = Progress(
        TextColumn("job {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console(stderr=True),
        disable=quiet,
    )
    with bar:
        task = bar.add_task(id[:8], total=None)
        while True:
            job = await client.job(id)
            bar.update(task, total=job["total"], completed=job["done"])
            if job["state"] != "running":
                return job
            await asyncio.sleep(POLL_S)
