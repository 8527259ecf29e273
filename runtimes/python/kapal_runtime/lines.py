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


class _Partial:
    """The start of a line not yet ended: its kept pieces and the bytes cut from it."""

    __slots__ = ("over", "parts", "size")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0  # characters in parts
        self.over = 0  # bytes past the cap, counted and dropped


class TextSplitter:
    """Lines from text written in pieces by many threads; each key (an invocation, or None
    for output outside one) has its own unfinished line, so invocations never mix."""

    def __init__(self, cap: int, emit: Callable[[str, Invocation | None], None]) -> None:
        self._cap = cap
        self._emit = emit
        self._partials: dict[Invocation | None, _Partial] = {}
        self._lock = threading.RLock()

    def write(self, text: str, key: Invocation | None) -> None:
        if "\n" not in text:
            if text:
                with self._lock:
                    self._hold(key, text)
            return
        cap = self._cap
        pieces = text.split("\n")
        with self._lock:
            partial = self._partials.pop(key, None)
            if pieces[-1]:
                self._hold(key, pieces[-1])
        first = pieces[0]
        over = 0
        if partial is not None:
            self._keep(partial, first)
            first, over = "".join(partial.parts), partial.over
        emit = self._emit
        emit(cut(first, cap, over), key)
        for i in range(1, len(pieces) - 1):
            emit(cut(pieces[i], cap), key)

    def end(self, key: Invocation | None) -> None:
        """The line `key` left unfinished is a line of its own (its invocation ended)."""
        if key not in self._partials:  # the usual case, and a read needs no lock
            return
        with self._lock:
            partial = self._partials.pop(key, None)
        if partial is not None:
            self._emit(cut("".join(partial.parts), self._cap, partial.over), key)

    def end_all(self) -> None:
        with self._lock:
            keys = list(self._partials)
        for key in keys:
            self.end(key)

    def pending(self) -> int:
        """Keys with an unfinished line (for tests)."""
        return len(self._partials)

    def _hold(self, key: Invocation | None, text: str) -> None:
        partial = self._partials.get(key)
        if partial is None:
            partial = self._partials[key] = _Partial()
        self._keep(partial, text)

    def _keep(self, partial: _Partial, text: str) -> None:
        room = self._cap - partial.size
        if len(text) <= room:
            partial.parts.append(text)
            partial.size += len(text)
            return
        if room > 0:
            partial.parts.append(text[:room])
            partial.size = self._cap
        partial.over += bytes_in(text, max(room, 0), len(text))


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
