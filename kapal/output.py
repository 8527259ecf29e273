"""How the CLI shows things: the function table, ages, invocation heads and errors."""

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from kapal.client import InvokeResult

COLUMNS = ("NAME", "VERSION", "INSTANCES", "INVOCATIONS", "UPDATED")
KEY_COLUMNS = ("ID", "NAME", "SCOPES", "RPS", "CREATED")


def format_table(functions: Sequence[dict[str, Any]], now: datetime | None = None) -> str:
    """The `kapal ls` table, header included, one line per function."""
    now = now or datetime.now(UTC)
    rows = [COLUMNS] + [
        (
            str(fn.get("name", "?")),
            str(fn.get("version", "?")),
            str(len(fn.get("instances") or [])),
            str(fn.get("invocations", 0)),
            format_age(fn.get("updated_at"), now),
        )
        for fn in functions
    ]
    return _table(rows)


RECORD_COLUMNS = ("STARTED", "ID", "TRIGGER", "STATUS", "COLD", "MS", "INSTANCE")


def format_records(records: Sequence[dict[str, Any]]) -> str:
    """The `kapal invocations` table: one line per invocation record."""
    rows = [RECORD_COLUMNS] + [
        (
            str(r.get("started_at", "?"))[:23],
            str(r.get("id", "?")),
            str(r.get("trigger", "?")),
            str(r.get("status", "?")),
            r.get("tier") or "-",
            f"{r.get('duration_ms', 0):.1f}",
            str(r.get("instance", "")),
        )
        for r in records
    ]
    return _table(rows)


def format_log_line(line: dict[str, Any]) -> str:
    """One log line as `kapal logs` prints it: time, stream (and level), request, text."""
    ts = str(line.get("ts", ""))[:23].replace("T", " ")
    stream = str(line.get("stream", "?"))
    if line.get("level"):
        stream += f":{line['level']}"
    request = str(line.get("request_id") or "")[:12] or "-"
    return f"{ts} {stream:<14} {request:<12} {line.get('line', '')}"


def format_keys(keys: Sequence[dict[str, Any]], now: datetime | None = None) -> str:
    """The `kapal keys ls` table: ids, names and scopes (the API never returns secrets)."""
    now = now or datetime.now(UTC)
    rows = [KEY_COLUMNS] + [
        (
            str(k.get("id", "?")),
            str(k.get("name", "")),
            ",".join(k.get("scopes") or []),
            "-" if k.get("rps") is None else f"{k['rps']:g}",
            format_age(k.get("created_at"), now),
        )
        for k in keys
    ]
    return _table(rows)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        + "\n"
        for row in rows
    )


def format_age(timestamp: str | None, now: datetime) -> str:
    """`"2024-05-01T10:00:00Z"` as `"3m ago"` relative to `now`; "-" when unknown."""
    if not timestamp:
        return "-"
    try:
        then = datetime.fromisoformat(timestamp)
    except ValueError:
        return timestamp
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def format_invoke_head(result: InvokeResult) -> str:
    """Status line and headers, as `kapal invoke -i` shows them."""
    lines = [f"HTTP {result.status} {_reason(result.status)}".rstrip()]
    lines += [f"{key}: {value}" for key, value in result.headers.items()]
    return "\n".join(lines) + "\n\n"


def invoke_error(name: str, result: InvokeResult) -> str:
    """One line saying why an invocation failed: Kapal's error message when there is one."""
    try:
        error = json.loads(result.body)["error"]
        if isinstance(error, dict) and "message" in error:
            return f"{error['message']} (HTTP {result.status})"
    except (ValueError, TypeError, KeyError):
        pass
    return f"{name} answered HTTP {result.status} {_reason(result.status)}".rstrip()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
