"""Calls and what they left: invoke (sync or queued), logs, records, dead letters."""

import argparse
import asyncio
import base64
import json
import sys
from pathlib import Path

from kapal.client import KapalClient
from kapal.errors import KapalError
from kapal.output import (
    POLL_S,
    console,
    format_invoke_head,
    format_log_line,
    invoke_error,
    note,
    print_json,
    print_ndjson,
    print_table,
    records_table,
)

FINAL = ("succeeded", "failed", "dead", "cancelled")


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
