"""How the CLI shows things: rich tables and progress on a terminal, plain text (no escape
codes) into a pipe or a file, JSON with `--json`; ages, invocation heads and errors."""

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from kapal.client import InvokeResult

# Not a terminal: no width to fit, so no cell is wrapped or cut.
PIPE_WIDTH = 1000
# How often a command that waits (deploy --wait, jobs --wait, invoke --wait) asks again.
POLL_S = 0.5


def note(message: str) -> None:
    """A message for the person at the terminal, on stderr (stdout stays for data)."""
    print(message, file=sys.stderr, flush=True)


def console(stderr: bool = False) -> Console:
    """A console on the current stdout (or stderr): colour only when it is a terminal."""
    file = sys.stderr if stderr else sys.stdout
    terminal = file.isatty()
    return Console(
        file=file,
        width=None if terminal else PIPE_WIDTH,
        force_terminal=terminal,
        no_color=not terminal,
        highlight=False,
        markup=False,
        emoji=False,
        soft_wrap=not terminal,
    )


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A borderless table: header, then one line per row ("-" for None)."""
    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*("-" if cell is None else str(cell) for cell in row))
    return grid


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    console().print(table(columns, rows))


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def print_ndjson(value: Any) -> None:
    print(json.dumps(value, default=str), flush=True)


def functions_table(functions: Sequence[dict[str, Any]], now: datetime | None = None) -> Table:
    """The `kapal ls` table: one line per function."""
    now = now or datetime.now(UTC)
    return table(
        ("NAME", "VERSION", "INSTANCES", "INVOCATIONS", "PUBLIC", "UPDATED"),
        (
            (
                fn.get("name", "?"),
                fn.get("version", "?"),
                len(fn.get("instances") or []),
                fn.get("invocations", 0),
                "yes" if fn.get("public") else "no",
                format_age(fn.get("updated_at"), now),
            )
            for fn in functions
        ),
    )


def records_table(records: Sequence[dict[str, Any]]) -> Table:
    """The `kapal invocations` table: one line per invocation record."""
    return table(
        ("STARTED", "ID", "TRIGGER", "STATUS", "COLD", "MS", "INSTANCE"),
        (
            (
                str(r.get("started_at", "?"))[:23],
                r.get("id", "?"),
                r.get("trigger", "?"),
                r.get("status", "?"),
                r.get("tier"),
                f"{r.get('duration_ms', 0):.1f}",
                r.get("instance", ""),
            )
            for r in records
        ),
    )


def format_log_line(line: dict[str, Any]) -> str:
    """One log line as `kapal logs` prints it: time, stream (and level), request, text."""
    ts = str(line.get("ts", ""))[:23].replace("T", " ")
    stream = str(line.get("stream", "?"))
    if line.get("level"):
        stream += f":{line['level']}"
    request = str(line.get("request_id") or "")[:12] or "-"
    return f"{ts} {stream:<14} {request:<12} {line.get('line', '')}"


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
