"""Container log lines on stderr: one JSON object per notable event, tracebacks as text."""

import json
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

_RUNTIME_DIR = str(Path(__file__).resolve().parent)


def log_event(event: str, level: str = "info", **fields: object) -> None:
    """Write one JSON line such as {"ts": ..., "level": "info", "event": "started", ...}."""
    ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    record = {"ts": ts, "level": level, "event": event, **fields}
    sys.stderr.write(json.dumps(record, default=str, separators=(",", ":")) + "\n")
    sys.stderr.flush()


def describe(exc: BaseException) -> str:
    """One line for callers, e.g. "ValueError: boom"; the traceback goes to the logs."""
    message = str(exc).strip().splitlines()
    first = message[0] if message else ""
    name = type(exc).__name__
    return f"{name}: {first}" if first else name


def log_traceback(exc: BaseException, prefix: str) -> None:
    """Write the traceback with every line prefixed, so one grep finds a request's lines.

    Leading frames of the runtime itself are dropped: the user wants to see their code.
    """
    tb = _skip_runtime_frames(exc.__traceback__)
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    sys.stderr.write("".join(f"{prefix}{line}\n" for line in text.splitlines()))
    sys.stderr.flush()


def _skip_runtime_frames(tb: TracebackType | None) -> TracebackType | None:
    first = tb
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_RUNTIME_DIR):
        tb = tb.tb_next
    # An error raised by the runtime itself (say, a bad return value) keeps all its frames.
    return tb if tb is not None else first
