"""What each `kapal` command does; `kapal.cli` parses the arguments and picks one."""

import argparse
import asyncio
import base64
import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kapal import deploy as deploying
from kapal.archive import build_archive
from kapal.client import KapalClient
from kapal.errors import KapalError
from kapal.manifest import ManifestFunction, load_manifest
from kapal.output import (
    console,
    format_age,
    format_invoke_head,
    format_log_line,
    functions_table,
    invoke_error,
    print_json,
    print_ndjson,
    print_table,
    records_table,
    table,
)
from kapal.spec import load_spec

Command = Callable[[KapalClient, argparse.Namespace], Awaitable[int]]
FINAL = ("succeeded", "failed", "dead", "cancelled")
POLL_S = 0.5


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- deploy ------------------------------------------------------------------------


async def deploy(client: KapalClient, args: argparse.Namespace) -> int:
    if args.file is not None:
        return await deploy_manifest(client, args)
    if args.folder is None:
        raise KapalError("deploy needs a folder, or -f kapal.yaml")
    folder: Path = args.folder
    spec = load_spec(folder, overrides(args))
    archive = await asyncio.to_thread(build_archive, folder)
    started = time.monotonic()
    with BuildDisplay(spec["name"], args.json) as display:
        done = await deploying.deploy_folder(client, archive, spec, on_event=display.event)
    if args.wait:
        done_fn = await wait_ready(client, spec["name"], args.wait_timeout, args.json)
    else:
        done_fn = done.function
    if args.json:
        print_ndjson({"event": "deployed", "function": done_fn})
        return 0
    name = done_fn.get("name", spec["name"])
    print(
        f"{'deployed' if done.function_created else 'updated'} {name} version "
        f"{done_fn.get('version', '?')} (image {done_fn.get('image', '?')}) in "
        f"{time.monotonic() - started:.1f}s"
    )
    print(f"curl {client.url}/fn/{name}")
    return 0


class BuildDisplay:
    """A deploy's progress: the build's lines on stderr (with a spinner on a terminal),
    or every event as NDJSON on stdout with --json."""

    def __init__(self, name: str, as_json: bool, prefix: str = "") -> None:
        self.name = name
        self.as_json = as_json
        self.prefix = prefix
        self.err = console(stderr=True)
        self.status = None if as_json or not self.err.is_terminal else self.err.status("")

    def __enter__(self) -> "BuildDisplay":
        if self.status is not None:
            self.status.update(f"deploying {self.name}: sending the code")
            self.status.start()
        elif not self.as_json:
            note(f"deploying {self.name} ...")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.stop()

    def event(self, event: dict[str, Any]) -> None:
        if self.as_json:
            print_ndjson(event)
            return
        kind = event.get("event")
        if kind == "build":
            self.err.print(f"{self.prefix}{event.get('line', '')}")
            if self.status is not None:
                self.status.update(f"building {self.name}: {event.get('line', '')[:60]}")
        elif kind == "built":
            self.err.print(f"{self.prefix}built {event.get('image')} in {event.get('seconds')}s")
        elif kind == "started" and self.status is not None:
            self.status.update(f"building {self.name} version {event.get('version')}")


async def wait_ready(client: KapalClient, name: str, timeout_s: float, quiet: bool) -> Any:
    """Until the current version has `scaling.min` ready instances and no older version
    has any. Invoke-free: a call would run the handler, and a function at min 0 has no
    instance until one comes."""
    deadline = time.monotonic() + timeout_s
    while True:
        fn = await client.get(name)
        version = fn.get("version")
        want = int((fn.get("scaling") or {}).get("min", 0))
        instances = fn.get("instances") or []
        ready = [i for i in instances if i.get("version") == version and i["state"] == "ready"]
        older = [i for i in instances if i.get("version") != version]
        if len(ready) >= want and not older:
            if not quiet:
                note(f"{name} version {version}: {len(ready)} ready, no older instance left")
            return fn
        if time.monotonic() > deadline:
            raise KapalError(
                f"{name} version {version} not ready after {timeout_s:g}s: {len(ready)} of"
                f" {want} ready, {len(older)} older instance(s) left"
            )
        await asyncio.sleep(POLL_S)


async def deploy_manifest(client: KapalClient, args: argparse.Namespace) -> int:
    manifest = load_manifest(args.file)
    plan = await deploying.plan(client, manifest)
    displays: dict[str, BuildDisplay] = {}

    def on_event(fn: ManifestFunction, event: dict[str, Any]) -> None:
        if fn.name not in displays:
            displays[fn.name] = BuildDisplay(fn.name, args.json, prefix=f"{fn.name}| ")
        if args.json:
            print_ndjson({"deploying": fn.name, **event})
        else:
            displays[fn.name].event(event)

    say = (lambda _: None) if args.json else print
    applied = await deploying.apply(client, manifest, plan, on_event, say)
    if args.wait:
        for fn in manifest.functions:
            await wait_ready(client, fn.name, args.wait_timeout, args.json)
    if args.json:
        print_ndjson({"event": "applied", **applied.as_json()})
    return 0


async def rm(client: KapalClient, args: argparse.Namespace) -> int:
    if args.file is not None:
        manifest = load_manifest(args.file)
        removed = await deploying.remove(client, manifest, (lambda _: None) if args.json else print)
        if args.json:
            print_json({"removed": removed})
        return 0
    if args.name is None:
        raise KapalError("rm needs a function name, or -f kapal.yaml")
    await client.delete(args.name)
    if args.json:
        print_json({"removed": [args.name]})
    else:
        print(f"removed {args.name}")
    return 0


# -- functions -----------------------------------------------------------------------


async def ls(client: KapalClient, args: argparse.Namespace) -> int:
    functions = await client.list()
    if args.json:
        print_json(functions)
    else:
        console().print(functions_table(functions))
    return 0


async def get(client: KapalClient, args: argparse.Namespace) -> int:
    fn = await client.get(args.name)
    if args.json:
        print_json(fn)
        return 0
    out = console()
    pool = fn.get("pool") or {}
    out.print(
        table(
            ("FIELD", "VALUE"),
            [
                ("name", fn.get("name")),
                ("version", fn.get("version")),
                ("image", fn.get("image")),
                ("public", fn.get("public")),
                ("invocations", fn.get("invocations")),
                ("updated", fn.get("updated_at")),
                ("pool", ", ".join(f"{k} {v}" for k, v in pool.items())),
            ],
        )
    )
    instances = fn.get("instances") or []
    if instances:
        out.print(
            table(
                ("INSTANCE", "VERSION", "STATE", "TIER", "IN FLIGHT"),
                [
                    (
                        i.get("id"),
                        i.get("version"),
                        i.get("state"),
                        i.get("tier"),
                        i.get("in_flight"),
                    )
                    for i in instances
                ],
            )
        )
    return 0


async def versions(client: KapalClient, args: argparse.Namespace) -> int:
    found = await client.versions(args.name)
    if args.json:
        print_json(found)
        return 0
    print_table(
        ("VERSION", "CURRENT", "IMAGE", "CODE", "CREATED"),
        [
            (
                v["version"],
                "yes" if v.get("current") else "no",
                v.get("image"),
                str(v.get("code_sha256", ""))[:12],
                v.get("created_at"),
            )
            for v in found
        ],
    )
    return 0


async def rollback(client: KapalClient, args: argparse.Namespace) -> int:
    fn = await client.rollback(args.name, args.to)
    if args.json:
        print_json(fn)
    else:
        print(f"{args.name} now serves version {fn.get('version')}")
    return 0


# -- invocations ---------------------------------------------------------------------


async def invoke(client: KapalClient, args: argparse.Namespace) -> int:
    data = read_data(args.data)
    headers: list[tuple[str, str]] = args.header or []
    if data is not None and not any(k.lower() == "content-type" for k, _ in headers):
        headers = [*headers, ("Content-Type", guess_content_type(data))]
    call = {"method": args.method, "data": data, "headers": headers, "query": args.query or []}
    if args.async_:
        queued = await client.invoke_async(args.name, args.path, **call)
        if not args.wait:
            if args.json:
                print_json(queued)
            else:
                print(queued["id"])
            return 0
        return await wait_invocation(client, str(queued["id"]), args.json)
    result = await client.invoke(args.name, args.path, **call)
    if args.json:
        print_json(
            {
                "status": result.status,
                "headers": dict(result.headers),
                **_body_json(result.body),
            }
        )
        return 0 if result.ok else 1
    if args.include:
        sys.stderr.write(format_invoke_head(result))
        sys.stderr.flush()
    _write_body(result.body)
    if not result.ok:
        note(f"error: {invoke_error(args.name, result)}")
        return 1
    return 0


def _body_json(body: bytes) -> dict[str, str]:
    try:
        return {"body": body.decode(), "body_encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(body).decode(), "body_encoding": "base64"}


def _write_body(body: bytes) -> None:
    """The body byte for byte; a newline after it on a terminal or when it has none, so
    output always ends with one (a binary body into a pipe is left as it is)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(body)
    if body and not body.endswith(b"\n") and _is_text(body):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.buffer.flush()


def _is_text(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


async def wait_invocation(client: KapalClient, id: str, as_json: bool) -> int:
    while True:
        found = await client.queued(id)
        if found["status"] in FINAL:
            break
        await asyncio.sleep(POLL_S)
    if as_json:
        print_json(found)
    else:
        response = found.get("response") or {}
        body = str(response.get("body") or "")
        raw = base64.b64decode(body) if response.get("body_encoding") == "base64" else body.encode()
        _write_body(raw)
    if found["status"] != "succeeded":
        if not as_json:
            why = found.get("error") or f"HTTP {(found.get('response') or {}).get('status')}"
            tries = found["attempts"]
            note(f"error: invocation {id} {found['status']} after {tries} attempt(s): {why}")
        return 1
    return 0


async def logs(client: KapalClient, args: argparse.Namespace) -> int:
    lines = client.logs(
        args.name,
        follow=args.follow,
        since=args.since,
        until=args.until,
        request_id=args.request,
        instance=args.instance,
        limit=args.limit,
    )
    async for line in lines:
        if args.json:
            print_ndjson(line)
        else:
            print(format_log_line(line), flush=args.follow)
    return 0


async def invocations(client: KapalClient, args: argparse.Namespace) -> int:
    if args.id:
        detail = await client.invocation(args.name, args.id)
        if args.json:
            print_json(detail)
            return 0
        records = [detail["record"]] if detail.get("record") else detail.get("attempts", [])
        console().print(records_table(records))
        for line in detail.get("logs", []):
            print(format_log_line(line))
        return 0
    page = await client.invocations(
        args.name,
        since=args.since,
        status=args.status,
        cold=args.cold,
        trigger=args.trigger,
        limit=args.limit,
        cursor=args.cursor,
    )
    if args.json:
        print_json(page)
        return 0
    console().print(records_table(page["invocations"]))
    if page.get("next_cursor"):
        note(f"more: --cursor {page['next_cursor']}")
    return 0


async def dead(client: KapalClient, args: argparse.Namespace) -> int:
    if args.dead_command == "retry":
        retried = await client.retry(args.id)
        if args.json:
            print_json(retried)
        else:
            print(f"retrying {args.id}")
        return 0
    found = await client.queued_list(status="dead", function=args.function, limit=args.limit)
    if args.json:
        print_json(found)
        return 0
    print_table(
        ("ID", "FUNCTION", "ATTEMPTS", "ERROR", "FINISHED"),
        [
            (d["id"], d["function"], d["attempts"], d.get("error"), d.get("finished_at"))
            for d in found
        ],
    )
    return 0


# -- jobs ----------------------------------------------------------------------------


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


# -- webhooks and schedules ----------------------------------------------------------


async def webhooks(client: KapalClient, args: argparse.Namespace) -> int:
    sub = args.webhooks_command
    if sub == "rm":
        await client.delete_webhook(args.id)
        if args.json:
            print_json({"removed": args.id})
        else:
            print(f"removed {args.id}")
        return 0
    if sub == "ls":
        found = await client.webhooks()
        if args.json:
            print_json(found)
        else:
            print_table(
                ("ID", "FUNCTION", "VERIFY", "URL", "CREATED"),
                [(h["id"], h["function"], h["verify"], h["url"], h["created_at"]) for h in found],
            )
        return 0
    if sub == "create":
        hook = await client.create_webhook(args.function, args.verify)
    elif sub == "rotate":
        hook = await client.rotate_webhook(args.id)
    else:
        hook = await client.webhook(args.id)
    if args.json:
        print_json(hook)
    else:
        print_table(("FIELD", "VALUE"), [(k, v) for k, v in hook.items()])
        if hook.get("secret"):
            note("the secret is shown this once: store it now")
    return 0


async def schedules(client: KapalClient, args: argparse.Namespace) -> int:
    sub = args.schedules_command
    if sub == "rm":
        await client.delete_schedule(args.id)
        if args.json:
            print_json({"removed": args.id})
        else:
            print(f"removed {args.id}")
        return 0
    if sub == "ls":
        found = await client.schedules()
        if args.json:
            print_json(found)
        else:
            print_table(
                ("ID", "FUNCTION", "CRON", "TIMEZONE", "NEXT", "LAST"),
                [
                    (s["id"], s["function"], s["cron"], s["timezone"], s["next_run"], s["last_run"])
                    for s in found
                ],
            )
        return 0
    if sub == "create":
        try:
            payload = None if args.payload is None else json.loads(args.payload)
        except ValueError as exc:
            raise KapalError(f"--payload is not JSON: {exc}") from exc
        made = await client.create_schedule(args.function, args.cron, payload, args.timezone)
    else:
        made = await client.schedule(args.id)
    if args.json:
        print_json(made)
    else:
        print_table(
            ("FIELD", "VALUE"),
            [(k, json.dumps(v) if k == "payload" else v) for k, v in made.items()],
        )
    return 0


# -- keys and secrets ----------------------------------------------------------------


async def keys(client: KapalClient, args: argparse.Namespace) -> int:
    if args.keys_command == "create":
        created = await client.create_key(args.name, args.scope, args.rps)
        if args.json:
            print_json(created)
            return 0
        print(created["key"])
        note(
            f"created API key {created['id']} ({', '.join(created['scopes'])});"
            " it is shown this once: store it now"
        )
    elif args.keys_command == "ls":
        listed = await client.list_keys()
        if args.json:
            print_json(listed)
        else:
            print_table(
                ("ID", "NAME", "SCOPES", "RPS", "CREATED"),
                [
                    (
                        k.get("id"),
                        k.get("name", ""),
                        ",".join(k.get("scopes") or []),
                        None if k.get("rps") is None else f"{k['rps']:g}",
                        format_age(k.get("created_at"), _now()),
                    )
                    for k in listed
                ],
            )
    else:
        await client.revoke_key(args.id)
        if args.json:
            print_json({"revoked": args.id})
        else:
            print(f"revoked {args.id}")
    return 0


async def secrets(client: KapalClient, args: argparse.Namespace) -> int:
    if args.secrets_command == "set":
        # From stdin, so the value stays out of shell history and `ps`.
        value = sys.stdin.read()
        await client.put_secret(args.name, value.removesuffix("\n"))
        done: dict[str, Any] = {"set": args.name}
    elif args.secrets_command == "ls":
        listed = await client.list_secrets()
        if args.json:
            print_json(listed)
        else:
            print_table(("NAME",), [(s["name"],) for s in listed])
        return 0
    else:
        await client.delete_secret(args.name)
        done = {"removed": args.name}
    if args.json:
        print_json(done)
    else:
        print(" ".join(f"{k} {v}" for k, v in done.items()))
    return 0


# -- top -----------------------------------------------------------------------------

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


def _now() -> datetime:
    return datetime.now(UTC)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The spec fields given as `kapal deploy` options (None: not given)."""
    return {
        "name": args.name,
        "runtime": args.runtime,
        "handler": args.handler,
        "env": dict(args.env or []),
        "limits": {
            "timeout_s": args.timeout,
            "memory_mb": args.memory,
            "cpus": args.cpus,
            "rps": args.rps,
        },
        "public": args.public,
        "secrets": args.secret,
        "network": {"outbound": args.outbound},
        "scaling": {
            "min": args.min,
            "max": args.max,
            "concurrency": args.concurrency,
            "idle_timeout_s": args.idle_timeout,
        },
    }


def read_data(data: str | None) -> bytes | None:
    """`-d`: text, @file, or @- for stdin."""
    if data is None:
        return None
    if data == "@-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        try:
            return Path(data[1:]).read_bytes()
        except OSError as exc:
            raise KapalError(f"cannot read {data[1:]}: {exc.strerror or exc}") from exc
    return data.encode()


def guess_content_type(data: bytes) -> str:
    # `-d '{"a": 1}'` should reach a handler as JSON without a -H.
    if data.lstrip()[:1] in (b"{", b"["):
        try:
            json.loads(data)
            return "application/json"
        except ValueError:
            pass
    return "application/octet-stream"


COMMANDS: dict[str, Command] = {
    "deploy": deploy,
    "invoke": invoke,
    "ls": ls,
    "get": get,
    "rm": rm,
    "versions": versions,
    "rollback": rollback,
    "logs": logs,
    "invocations": invocations,
    "dead": dead,
    "jobs": jobs,
    "webhooks": webhooks,
    "schedules": schedules,
    "keys": keys,
    "secrets": secrets,
    "top": top,
}
