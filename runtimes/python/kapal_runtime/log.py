"""The runtime's own log lines: one JSON object per notable event, tracebacks as text.

Once output is captured (capture.py) they go to the sink it installs: events as lines of
stream `runtime` with their level, a traceback as one entry of stream `stderr`, level
`error`, both tagged with the invocation being served. Before that (a bad configuration),
or with capture off, they are written to stderr.
"""

import json
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Protocol

_RUNTIME_DIR = str(Path(__file__).resolve().parent)


class Sink(Protocol):
    def event(self, level: str, text: str) -> None: ...

    def traceback(self, text: str) -> None: ...


_sink: Sink | None = None


def set_sink(sink: Sink | None) -> None:
    global _sink
    _sink = sink


def log_event(event: str, level: str = "info", **fields: object) -> None:
    """Write one JSON line such as {"ts": ..., "level": "info", "event": "started", ...}."""
    ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    record = {"ts": ts, "level": level, "event": event, **fields}
    text = json.dumps(record, default=str, separators=(",", ":"))
    if _sink is not None:
        _sink.event(level, text)
        return
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def describe(exc: BaseException) -> str:
    """One line for callers, e.g. "ValueError: boom"; the traceback goes to the logs."""
    message = str(exc).strip().splitlines()
    first = message[0] if message else ""
    name = type(exc).__name__
    return f"{name}: {first}" if first else name


def log_traceback(exc: BaseException) -> None:
    """Record the traceback as one entry (the invocation's tag says whose it is).

    Leading frames of the runtime itself are dropped: the user wants to see their code.
    """
    tb = _skip_runtime_frames(exc.__traceback__)
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    if _sink is not None:
        _sink.traceback(text.rstrip("\n"))
        return
    sys.stderr.write(text)
    sys.stderr.flush()


def _skip_runtime_frames(tb: TracebackType | None) -> TracebackType | None:
    first = tb
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_RUNTIME_DIR):
        tb = tb.tb_next
    # An error raised by the runtime itself (say, a bad return value) keeps all its frames.
    return tb if tb is not None else first
