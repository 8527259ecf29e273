"""Capturing everything the function writes as tagged lines in a LogBuffer.

- `sys.stdout` / `sys.stderr` become `StreamWriter`s: text is cut into lines (lines.py)
  recorded with stream `stdout`/`stderr`, no level, and the request id of the invocation
  whose context wrote them (`CURRENT`).
- fds 1 and 2 become pipes read by one thread, so C extensions, `os.write(1, ...)` and
  subprocesses are captured too; those lines are untagged (an fd write has no context).
- The root logger gets a handler recording each record as one entry: stream `log`, its
  level. `logging.basicConfig()` then does nothing, the root having a handler.
- The runtime's own events and tracebacks come in through `log.set_sink`.
- `threading.Thread.start` and `ThreadPoolExecutor.submit` run the thread (the job) in a
  copy of the starter's context, so a thread a handler starts, or a job it hands to
  `run_in_executor`, is tagged with that handler's request id.

The original fds 1 and 2 are kept (as dups) for a last resort only: at close, lines nobody
acked (the gateway did not pull within the drain, or the runtime failed before its log
port served) are written there, so `docker logs` still has them. Nothing else is written
there while capture works: dockerd would store every line a second time.
"""

import codecs
import contextvars
import io
import logging
import os
import selectors
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from kapal_runtime import log
from kapal_runtime.config import RuntimeConfig
from kapal_runtime.lines import ByteSplitter, TextSplitter, cut
from kapal_runtime.logbuffer import Invocation, LogBuffer

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

# The invocation being served, set by the server for each one; its context is copied into
# the sync handler's thread, tasks an async one spawns, and threads either starts.
CURRENT: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar(
    "kapal_invocation", default=None
)

# Pipes this large let a burst of fd writes wait for the reader without blocking writers.
PIPE_BYTES = 1 << 20
# At close, how long the reader may take to read what is still in the pipes.
READER_DRAIN_S = 0.5


class Capture:
    def __init__(self, config: RuntimeConfig) -> None:
        self.buffer = LogBuffer(config.log_buffer_bytes, config.log_invocation_bytes)
        self.line_bytes = config.log_line_bytes
        self.level = config.log_level
        add = self.buffer.add
        self._out = TextSplitter(self.line_bytes, lambda text, inv: add("stdout", None, text, inv))
        self._err = TextSplitter(self.line_bytes, lambda text, inv: add("stderr", None, text, inv))
        self.stdout = StreamWriter("<stdout>", 1, self._out)
        self.stderr = StreamWriter("<stderr>", 2, self._err)
        self._handler = RecordHandler(self)
        self._saved: dict[int, int] = {}  # fd -> a dup of what it was before capture
        self._previous: tuple[Any, Any] = (None, None)
        self._reader: threading.Thread | None = None
        self._undo: list[Callable[[], None]] = []
        self.installed = False

    # --- what the server calls --------------------------------------------------------

    def begin(self, request_id: str) -> contextvars.Token[Invocation | None]:
        """Tag what this context writes from now on with `request_id`."""
        return CURRENT.set(self.buffer.begin(request_id))

    def end(self, token: contextvars.Token[Invocation | None]) -> None:
        """The invocation is answered: a line it left unfinished is ended, the tag reset.
        Threads it started keep its budget (and tag) until they end."""
        invocation = CURRENT.get()
        CURRENT.reset(token)
        if invocation is not None:
            self._out.end(invocation)
            self._err.end(invocation)

    # --- log.Sink: the runtime's own lines --------------------------------------------

    def event(self, level: str, text: str) -> None:
        self.buffer.add("runtime", level, cut(text, self.line_bytes), CURRENT.get(), False)

    def traceback(self, text: str) -> None:
        text = cut(text, self.line_bytes, keep_tail=True)
        self.buffer.add("stderr", "error", text, CURRENT.get(), False)

    def record(self, level: str, text: str) -> None:
        """One `logging` record, formatted."""
        self.buffer.add("log", level, cut(text, self.line_bytes), CURRENT.get())

    # --- installing and removing ------------------------------------------------------

    def install(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        pipes: dict[int, ByteSplitter] = {}
        for fd, name in ((1, "stdout"), (2, "stderr")):
            self._saved[fd] = os.dup(fd)
            read_end, write_end = os.pipe()
            _grow_pipe(write_end)
            os.dup2(write_end, fd)  # inheritable: subprocesses write to the pipe too
            os.close(write_end)
            pipes[read_end] = ByteSplitter(self.line_bytes, self._untagged(name))
        self._reader = threading.Thread(
            target=self._read_pipes, args=(pipes,), name="kapal-log-pipes", daemon=True
        )
        self._reader.start()
        self._previous = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = self.stdout, self.stderr
        root = logging.getLogger()
        root.setLevel(self.level.upper())
        root.addHandler(self._handler)
        log.set_sink(self)
        self._undo.append(_patch_thread_start())
        self._undo.append(_patch_executor_submit())
        if not self.installed:
            os.register_at_fork(after_in_child=self._after_fork_in_child)
        self.installed = True

    def close(self) -> None:
        """Give the original fds back; write what nobody acked to the original stderr."""
        if not self.installed:
            return
        self.installed = False
        log.set_sink(None)
        logging.getLogger().removeHandler(self._handler)
        while self._undo:
            self._undo.pop()()
        sys.stdout, sys.stderr = self._previous
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)  # the pipe loses its writer: the reader reads the rest, ends
            os.close(saved)
        self._saved.clear()
        if self._reader is not None:
            self._reader.join(READER_DRAIN_S)
        self._out.end_all()
        self._err.end_all()
        rows, count = self.buffer.take_all()
        if count:
            log.log_event("logs_not_pulled", "warning", lines=count, dropped=self.buffer.dropped)
            _write_all(2, rows)

    def _untagged(self, stream: str) -> Callable[[str], None]:
        add = self.buffer.add
        return lambda text: add(stream, None, text, None)

    def _read_pipes(self, pipes: dict[int, ByteSplitter]) -> None:
        try:
            with selectors.DefaultSelector() as selector:
                for fd in pipes:
                    selector.register(fd, selectors.EVENT_READ)
                while pipes:
                    for key, _ in selector.select():
                        data = os.read(key.fd, 1 << 16)
                        if data:
                            pipes[key.fd].feed(data)
                            continue
                        pipes.pop(key.fd).end()
                        selector.unregister(key.fd)
                        os.close(key.fd)
        except Exception:  # nothing of fds 1 and 2 is captured now: say so where it still can
            saved = self._saved.get(2)
            if saved is not None:
                _write_all(saved, traceback.format_exc().encode("utf-8", "backslashreplace"))

    def _after_fork_in_child(self) -> None:
        """A forked child has no log port: it writes to fds 1 and 2, which the parent's
        reader captures (untagged). Its copy of the buffer, and its locks, are not used."""
        if not self.installed:
            return
        self.installed = False
        log.set_sink(None)
        self.stdout.detach_to_fd()
        self.stderr.detach_to_fd()
        self._handler.detached = True


class StreamWriter(io.TextIOBase):
    """`sys.stdout` or `sys.stderr` while captured: text goes to lines, not to an fd."""

    # Class attributes: io.TextIOBase has read-only ones of these names.
    encoding = "utf-8"
    errors = "backslashreplace"

    def __init__(self, name: str, fd: int, splitter: TextSplitter) -> None:
        super().__init__()
        self._name = name
        self._fd = fd
        self._splitter = splitter
        # After a fork: the child's stream, straight to the fd.
        self._direct: io.TextIOWrapper | None = None
        self._binary = BinaryWriter(self)

    def write(self, s: str, /) -> int:
        if self._direct is not None:
            return self._direct.write(s)
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self._splitter.write(s, CURRENT.get())
        return len(s)

    def flush(self) -> None:
        # A line is recorded when it ends (or when its invocation does): nothing to flush.
        if self._direct is not None:
            self._direct.flush()

    def detach_to_fd(self) -> None:
        raw = io.FileIO(self._fd, "w", closefd=False)
        self._direct = io.TextIOWrapper(
            raw, encoding="utf-8", errors="backslashreplace", write_through=True
        )

    def fileno(self) -> int:
        return self._fd  # the pipe: what is written there is captured too

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def reconfigure(self, **options: object) -> None:
        """Accepted and ignored, as line buffering and encoding are fixed here."""

    @property
    def buffer(self) -> "BinaryWriter":
        return self._binary

    @property
    def line_buffering(self) -> bool:
        return True

    @property
    def name(self) -> str:
        return self._name

    @property
    def mode(self) -> str:
        return "w"


class BinaryWriter(io.BufferedIOBase):
    """`sys.stdout.buffer`: bytes decoded as UTF-8 (invalid bytes escaped), then text."""

    def __init__(self, text: StreamWriter) -> None:
        super().__init__()
        self._text = text
        self._decoder = codecs.getincrementaldecoder("utf-8")("backslashreplace")
        self._lock = threading.Lock()

    def write(self, data: "ReadableBuffer", /) -> int:
        view = memoryview(data)
        with self._lock:
            text = self._decoder.decode(view)
        self._text.write(text)
        return view.nbytes

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._text.fileno()


class RecordHandler(logging.Handler):
    """The root logger's handler: each record is one entry, however many lines it has."""

    def __init__(self, capture: Capture) -> None:
        super().__init__()
        self._capture = capture
        self.setFormatter(NamedFormatter())
        # After a fork: records are written to stderr as text.
        self.detached = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if self.detached:
                sys.stderr.write(text + "\n")
                return
            self._capture.record(level_name(record.levelno), text)
        except Exception:
            self.handleError(record)


class NamedFormatter(logging.Formatter):
    """The message, after the logger's name unless it is the root logger's (time, level and
    request id are fields of the line)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        if record.name == "root":
            return record.message
        return f"{record.name}: {record.message}"


def level_name(levelno: int) -> str:
    if levelno >= logging.CRITICAL:
        return "critical"
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


def _patch_thread_start() -> Callable[[], None]:
    """Threads run in a copy of the context that started them (as `asyncio` tasks do)."""
    start = threading.Thread.start

    def start_in_context(self: threading.Thread) -> None:
        context = contextvars.copy_context()
        run = self.run

        def run_in_context() -> None:
            try:
                context.run(run)
            finally:
                if self.__dict__.get("run") is run_in_context:
                    del self.__dict__["run"]  # the thread and its run refer to each other

        self.__dict__["run"] = run_in_context
        start(self)

    setattr(threading.Thread, "start", start_in_context)  # noqa: B010 (a method, for mypy)
    return lambda: setattr(threading.Thread, "start", start)


def _patch_executor_submit() -> Callable[[], None]:
    """Each job runs in a copy of its submitter's context; the pool's threads themselves
    start in an empty one, as they serve many submitters."""
    submit: Callable[..., Future[Any]] = ThreadPoolExecutor.submit

    def submit_in_context(
        self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> "Future[Any]":
        context = contextvars.copy_context()
        return contextvars.Context().run(submit, self, context.run, fn, *args, **kwargs)

    setattr(ThreadPoolExecutor, "submit", submit_in_context)  # noqa: B010
    return lambda: setattr(ThreadPoolExecutor, "submit", submit)


def _grow_pipe(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError):  # not Linux, or over the system's limit: the default
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except OSError:
            return
        view = view[written:]
