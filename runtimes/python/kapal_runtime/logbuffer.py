"""Log lines waiting for the gateway: their COPY text rows, sequence numbers, acks and caps.

Each line becomes one row of PostgreSQL COPY text format when it is recorded, so serving a
pull is a join of ready bytes: `seq TAB ts TAB stream TAB level TAB request_id TAB text LF`.
`seq` is not stored: line n of the buffer has seq `base + n`, so seqs are 1, 2, 3... per
process with no gaps (a dropped line takes no seq). A pull's `after` frees every line up
to it (the caller has stored them).

Caps, all in bytes of text as stored (UTF-8): a line is cut at `line_bytes` (by the
splitters in lines.py); an invocation's output past `invocation_bytes` is replaced by one
marker line and the rest of it is dropped; lines past `buffer_bytes` not yet acked are
dropped (never waited for), and a marker says how many once there is room again. Every
dropped line is counted in `dropped`, which only grows.
"""

import threading
import time
from collections.abc import Callable

NULL = "\\N"
STREAMS = ("stdout", "stderr", "log", "runtime")
LEVELS = ("debug", "info", "warning", "error", "critical")


def escape(text: str) -> str:
    """Text as a COPY text field: backslash, TAB, LF, CR escaped; NUL shown as `\\x00`."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\t" in text:
        text = text.replace("\t", "\\t")
    if "\n" in text:
        text = text.replace("\n", "\\n")
    if "\r" in text:
        text = text.replace("\r", "\\r")
    if "\x00" in text:
        # PostgreSQL text cannot hold NUL: store the four characters `\x00` instead.
        text = text.replace("\x00", "\\\\x00")
    return text


def utf8_len(text: str) -> int:
    """Bytes of `text` in UTF-8 (lone surrogates counted as their 3 escaped-able bytes)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def format_row(ts: float, stream: str, level: str, request_id: str, text: str) -> bytes:
    """One row without its seq; `level` and `request_id` are COPY fields (NULL or escaped)."""
    row = f"\t{ts:.6f}\t{stream}\t{level}\t{request_id}\t{escape(text)}\n"
    try:
        return row.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: shown escaped, like invalid bytes are
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        return f"\t{ts:.6f}\t{stream}\t{level}\t{request_id}\t{escape(text)}\n".encode()


class Invocation:
    """One invocation's output budget; its context (and threads it starts) holds it.

    Nothing else keeps it, so its counters are gone once the invocation and every thread
    it started have ended.
    """

    __slots__ = ("field", "left", "request_id")

    def __init__(self, request_id: str, budget: int) -> None:
        self.request_id = request_id
        # The request id as a COPY field, escaped once.
        self.field = escape(request_id)
        # Bytes of output still allowed; below 0 once the marker is written.
        self.left = budget


class LogBuffer:
    """Rows not yet acked, safe to add to from any thread; read and acked on the loop."""

    def __init__(self, buffer_bytes: int, invocation_bytes: int) -> None:
        self.buffer_bytes = buffer_bytes
        self.invocation_bytes = invocation_bytes
        # Reentrant: a signal handler or a finaliser that prints while a line is being
        # added must not deadlock the thread.
        self._lock = threading.RLock()
        self._rows: list[bytes] = []
        self._base = 1  # seq of _rows[0]
        self._bytes = 0  # bytes of _rows
        self._dropped = 0
        # Lines dropped at the buffer cap since the last marker that reported them.
        self._unreported = 0
        # Called once (then forgotten) when the next line is added.
        self._waiter: Callable[[], None] | None = None

    @property
    def last_seq(self) -> int:
        """The seq of the newest line (0 before the first)."""
        return self._base + len(self._rows) - 1

    @property
    def acked(self) -> int:
        """Every line up to this seq has been stored by the caller and freed."""
        return self._base - 1

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def begin(self, request_id: str) -> Invocation:
        return Invocation(request_id, self.invocation_bytes)

    def add(
        self,
        stream: str,
        level: str | None,
        text: str,
        invocation: Invocation | None = None,
        capped: bool = True,
    ) -> None:
        """Record one line (already cut to the line cap). `capped`: counts against the
        invocation's budget (the runtime's own lines do not)."""
        if capped and invocation is not None and invocation.left < 0:
            with self._lock:  # over its budget already: not even formatted
                self._dropped += 1
            return
        ts = time.time()
        field = NULL if invocation is None else invocation.field
        row = format_row(ts, stream, level or NULL, field, text)
        charged = capped and invocation is not None
        size = utf8_len(text) + 1 if charged else 0
        with self._lock:
            if charged:
                assert invocation is not None
                if invocation.left < 0:
                    self._dropped += 1
                    return
                if size > invocation.left:
                    invocation.left = -1
                    self._dropped += 1
                    cap = self.invocation_bytes
                    message = f"output of this invocation truncated at {cap} bytes"
                    row = format_row(ts, "runtime", "warning", field, message)
                else:
                    invocation.left -= size
            if self._bytes + len(row) > self.buffer_bytes:
                self._dropped += 1
                self._unreported += 1
                return
            if self._unreported:
                message = f"log buffer full: {self._unreported} lines dropped"
                marker = format_row(ts, "runtime", "warning", NULL, message)
                self._unreported = 0
                self._rows.append(marker)
                self._bytes += len(marker)
            self._rows.append(row)
            self._bytes += len(row)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter()

    def wake_on_next(self, after: int, waiter: Callable[[], None]) -> bool:
        """Have `waiter` called once, from the adding thread, when the next line is added;
        False (and not set) if a line past `after` is already there."""
        with self._lock:
            if self.last_seq > after:
                return False
            self._waiter = waiter
            return True

    def ack(self, after: int) -> None:
        """The caller has stored every line up to `after`: free them."""
        with self._lock:
            n = min(after - self._base + 1, len(self._rows))
            if n <= 0:
                return
            freed = self._rows[:n]
            del self._rows[:n]
            self._base += n
            self._bytes -= sum(map(len, freed))

    def read(self, after: int, limit: int) -> tuple[bytes, int]:
        """Rows past `after`, about `limit` bytes of them but at least one, and the seq of
        the last one (the last acked seq when there are none)."""
        with self._lock:
            base = self._base
            start = max(after - base + 1, 0)
            # Every row is longer than 32 bytes: this many are enough to reach the limit.
            rows = self._rows[start : start + limit // 32 + 1]
        if not rows:
            return b"", base - 1
        parts: list[bytes] = []
        size = 0
        seq = base + start
        for row in rows:
            head = b"%d" % seq
            parts.append(head)
            parts.append(row)
            size += len(head) + len(row)
            seq += 1
            if size >= limit:
                break
        return b"".join(parts), seq - 1

    def take_all(self) -> tuple[bytes, int]:
        """Every row not acked, for the last-resort dump at exit."""
        with self._lock:
            rows, base = list(self._rows), self._base
        return b"".join(b"%d%s" % (base + i, row) for i, row in enumerate(rows)), len(rows)
