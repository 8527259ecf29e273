"""An image function's lines, read from the engine's log of its container.

An image function has no Kapal runtime inside, so no log port: its stdout and stderr are
followed through the engine (`docker logs --follow --timestamps`), one stream each, and
stored like a runtime's lines but with no request id and no level. A line's seq is its
engine timestamp in nanoseconds, so `log_cursors` says where a gateway that takes over
resumes (`since`). The engine's own log of the container (json-file, capped at 2 x 10 MB)
is the buffer; lines written in a burst past that cap before they are read are lost.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

log = logging.getLogger("kapal.gateway.logs")

STREAMS = ("stdout", "stderr")
# Lines are gathered this long (or up to this many bytes) before they are stored.
BATCH_S = 0.1
BATCH_BYTES = 256 * 1024
# Longest line kept; the rest is cut (the runtime's own cap, KAPAL_LOG_LINE_BYTES, is 16 KiB).
LINE_CHARS = 16 * 1024


class LogStream(Protocol):
    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class EngineLogs(Protocol):
    def follow_logs(self, container_id: str, stream: str, since_s: float) -> LogStream:
        """One stream of a container's log from `since_s` on, followed, each entry
        prefixed with its RFC 3339 timestamp (blocking; called on a thread)."""
        ...


Store = Callable[[bytes, int], Awaitable[None]]


def timestamp_ns(stamp: bytes) -> int:
    """`2026-12-06T15:07:37.123456789Z` in nanoseconds since the epoch."""
    text = stamp.decode("ascii")
    whole, _, frac = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int((frac + "000000000")[:9])


def escape(text: str) -> str:
    """Text as a COPY text field (the writer copies rows as they come)."""
    text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    # PostgreSQL text cannot hold NUL: the four characters `\x00` instead.
    return text.replace("\r", "\\r").replace("\x00", "\\\\x00")


def row(entry: bytes, stream: str) -> tuple[int, bytes] | None:
    """(seq, COPY row) of one engine log entry; None when it has no timestamp."""
    stamp, _, line = entry.partition(b" ")
    try:
        seq = timestamp_ns(stamp)
    except (ValueError, UnicodeDecodeError):
        return None
    text = line.rstrip(b"\n").decode("utf-8", "backslashreplace")[:LINE_CHARS]
    return seq, f"{seq}\t{seq / 1e9:.6f}\t{stream}\t\\N\t\\N\t{escape(text)}\n".encode()


async def follow(
    engine: EngineLogs,
    container_id: str,
    after: int,
    store: Store,
    keep_going: Callable[[], bool],
) -> None:
    """Store the container's lines newer than seq `after` until its log ends (the container
    is gone) or `keep_going()` turns false (checked between batches)."""
    loop = asyncio.get_running_loop()
    entries: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
    streams: list[LogStream] = []
    lock = threading.Lock()
    stopped = False

    def read(stream: str) -> None:
        try:
            logs = engine.follow_logs(container_id, stream, after / 1e9)
            with lock:
                if stopped:
                    logs.close()
                    return
                streams.append(logs)
            for entry in logs:
                loop.call_soon_threadsafe(entries.put_nowait, (stream, entry))
        except Exception as e:  # the container went, or we closed the stream
            log.debug("engine log ended", extra={"container": container_id[:12], "error": str(e)})
        finally:
            loop.call_soon_threadsafe(entries.put_nowait, None)

    # A thread per stream, not the loop's executor: a follow holds its thread for as long
    # as the container lives.
    for stream in STREAMS:
        name = f"kapal-engine-logs-{container_id[:12]}-{stream}"
        threading.Thread(target=read, args=(stream,), name=name, daemon=True).start()
    open_streams = len(STREAMS)
    # Both streams start from the stored cursor; each may run ahead of the other, so only
    # lines the cursor already covered are left out.
    last = after
    try:
        while open_streams and keep_going():
            rows: list[bytes] = []
            size = 0
            deadline = loop.time() + BATCH_S
            while open_streams and size < BATCH_BYTES:
                try:
                    item = await asyncio.wait_for(entries.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    break
                if item is None:
                    open_streams -= 1
                    continue
                found = row(item[1], item[0])
                if found is not None and found[0] > after:
                    rows.append(found[1])
                    size += len(found[1])
                    last = max(last, found[0])
            if rows:
                await store(b"".join(rows), last)
    finally:
        with lock:
            stopped = True
            for logs in streams:
                with contextlib.suppress(Exception):
                    logs.close()
