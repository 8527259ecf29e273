"""Cutting output into lines: text written in pieces (`sys.stdout`), bytes read from a pipe.

A line longer than the cap is cut while it accumulates: at most `cap` characters (or bytes)
of it are kept and the rest is only counted, so a 10 MB line held in pieces costs no more
memory than a 16 KiB one. When the line ends it is cut to `cap` bytes of UTF-8 and gets a
suffix saying how many bytes were cut. Lines end at LF only; invalid UTF-8 read from a
pipe is kept as `\\xNN` escapes.
"""

import threading
from collections.abc import Callable

from kapal_runtime.logbuffer import Invocation, utf8_len

_CHUNK = 1 << 16


def cut(text: str, cap: int, over: int = 0, keep_tail: bool = False) -> str:
    """`text` cut to `cap` bytes of UTF-8, naming the bytes cut (`over` were cut before).

    The head is kept, or with `keep_tail` the end (a traceback's last line says what
    happened)."""
    if len(text) > cap:  # more characters than bytes allowed: slice before measuring
        if keep_tail:
            over += bytes_in(text, 0, len(text) - cap)
            text = text[-cap:]
        else:
            over += bytes_in(text, cap, len(text))
            text = text[:cap]
    if len(text) * 4 > cap and not text.isascii():
        data = text.encode("utf-8", "surrogatepass")
        if len(data) > cap:
            kept = data[-cap:] if keep_tail else data[:cap]
            # A character split at the cut is left out (and counted as cut).
            text = kept.decode("utf-8", "ignore")
            over += len(data) - utf8_len(text)
    if not over:
        return text
    if keep_tail:
        return f"[truncated {over} bytes] …{text}"
    return f"{text}… [truncated {over} bytes]"


def bytes_in(text: str, start: int, end: int) -> int:
    """UTF-8 bytes of text[start:end], measured a chunk at a time (no copy of it all)."""
    if text.isascii():
        return end - start
    return sum(utf8_len(text[i : min(i + _CHUNK, end)]) for i in range(start, end, _CHUNK))


# Pieces of an unfinished line held before they are joined and cut to the cap: a print()
# is several writes, and joining at each one would cost more than the line.
_PIECES = 16


class TextSplitter:
    """Lines from text written in pieces by many threads; each key (the invocation being
    served when it is written, from `current`, or None outside one) has its own unfinished
    line, so invocations never mix. `write` is a text stream's (capture.StreamWriter).

    An unfinished line holds at most `_PIECES` pieces of at most `cap` characters each.
    """

    def __init__(
        self,
        cap: int,
        emit: Callable[[str, Invocation | None], None],
        current: Callable[[], Invocation | None],
    ) -> None:
        self._cap = cap
        self._emit = emit
        self._current = current
        # key -> the pieces of its unfinished line.
        self._partials: dict[Invocation | None, list[str]] = {}
        # key -> bytes already cut from its unfinished line (rarely any).
        self._over: dict[Invocation | None, int] = {}
        self._lock = threading.RLock()

    def write(self, text: str, /) -> int:
        if type(text) is not str and not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        key = self._current()
        if "\n" not in text:
            if not text:
                return 0
            with self._lock:
                if len(text) > self._cap:
                    text = self._cut_piece(key, text)
                parts = self._partials.get(key)
                if parts is None:
                    self._partials[key] = [text]
                elif len(parts) < _PIECES:
                    parts.append(text)
                else:
                    parts.append(text)
                    self._compact(key, parts)
            return len(text)
        if text != "\n":
            self._write_lines(text, key)
            return len(text)
        # A lone LF, as print() ends a line: the usual case, kept short.
        with self._lock:
            parts = self._partials.pop(key, None)
            over = self._over.pop(key, 0) if self._over else 0
        line = "" if parts is None else parts[0] if len(parts) == 1 else "".join(parts)
        if over or len(line) * 4 > self._cap:
            line = cut(line, self._cap, over)
        self._emit(line, key)
        return 1

    def end(self, key: Invocation | None) -> None:
        """The line `key` left unfinished is a line of its own (its invocation ended)."""
        if key not in self._partials:  # the usual case, and a read needs no lock
            return
        with self._lock:
            parts = self._partials.pop(key, None)
            over = self._over.pop(key, 0)
        if parts is not None:
            self._emit(cut("".join(parts), self._cap, over), key)

    def end_all(self) -> None:
        with self._lock:
            keys = list(self._partials)
        for key in keys:
            self.end(key)

    def pending(self) -> int:
        """Keys with an unfinished line (for tests)."""
        return len(self._partials)

    def held(self, key: Invocation | None) -> int:
        """Characters held of `key`'s unfinished line (for tests)."""
        return sum(map(len, self._partials.get(key, ())))

    def _write_lines(self, text: str, key: Invocation | None) -> None:
        cap = self._cap
        pieces = text.split("\n")
        tail = pieces[-1]
        with self._lock:
            parts = self._partials.pop(key, None)
            over = self._over.pop(key, 0)
            if tail:
                if len(tail) > cap:
                    tail = self._cut_piece(key, tail)
                self._partials[key] = [tail]
        first = pieces[0] if parts is None else "".join(parts) + pieces[0]
        emit = self._emit
        emit(cut(first, cap, over), key)
        for i in range(1, len(pieces) - 1):
            emit(cut(pieces[i], cap), key)

    def _cut_piece(self, key: Invocation | None, text: str) -> str:
        """The first `cap` characters of a piece; the bytes of the rest are counted."""
        self._over[key] = self._over.get(key, 0) + bytes_in(text, self._cap, len(text))
        return text[: self._cap]

    def _compact(self, key: Invocation | None, parts: list[str]) -> None:
        joined = "".join(parts)
        if len(joined) > self._cap:
            joined = self._cut_piece(key, joined)
        parts[:] = [joined]


class ByteSplitter:
    """Lines from bytes read off one pipe, by one thread."""

    def __init__(self, cap: int, emit: Callable[[str], None]) -> None:
        self._cap = cap
        self._emit = emit
        self._held = bytearray()
        self._over = 0

    def feed(self, data: bytes) -> None:
        pieces = data.split(b"\n")
        if len(pieces) > 1:
            self._keep(pieces[0])
            self._end_line()
            cap, emit = self._cap, self._emit
            for i in range(1, len(pieces) - 1):
                piece = pieces[i]
                if len(piece) > cap:
                    emit(f"{decode(piece[:cap])}… [truncated {len(piece) - cap} bytes]")
                else:
                    emit(decode(piece))
        self._keep(pieces[-1])

    def end(self) -> None:
        """The pipe closed: a last line without LF is still a line."""
        if self._held or self._over:
            self._end_line()

    def _keep(self, piece: bytes) -> None:
        room = self._cap - len(self._held)
        if len(piece) <= room:
            self._held += piece
        else:
            self._held += piece[: max(room, 0)]
            self._over += len(piece) - max(room, 0)

    def _end_line(self) -> None:
        text = decode(bytes(self._held))
        if self._over:
            text = f"{text}… [truncated {self._over} bytes]"
        self._held.clear()
        self._over = 0
        self._emit(text)


def decode(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")
