"""The zygote: the container's first process imports the runtime once and forks workers.

A fresh Python process needs about 200 ms to import aiohttp and the runtime before it can
answer; a fork of a process that already did answers in a few milliseconds (SOCK, ATC
'18, built on the same fact). So the container's command does the imports, then forks
worker 0, the runtime every container has always run (port 8080, log port 8081), and
waits. Under a burst the gateway asks it for more workers over a line protocol on its
own port (KAPAL_ZYGOTE_PORT):

    fork\\n    -> {"worker": k, "port": p, "log_port": l, "pid": n, "prewarm": bool}
    stop K\\n  -> {"stopped": K}        (SIGTERM: worker K drains, then exits)
    list\\n    -> {"workers": [{"worker": k, "port": p, "log_port": l, "pid": n,
                  "stopping": bool}, ...]}   (stopped ones until they have exited)

Worker k listens on port + 2k and log port + 2k. Each is its own instance to the gateway
(its own slots, its own globals, its own log port); the container stays the isolation
and limit unit (the gateway raises its limits with its workers).

The zygote never starts a thread or an event loop: forking a process with threads can
leave a lock held forever in the child. It loads no function code either (a module may
open connections or start threads when imported): each worker loads the handler itself.

It is the container's PID 1. SIGTERM is passed to every worker (each drains), and it exits
once they have. When worker 0 ends, the container ends with it: the other workers get
SIGTERM, and the engine's die event tells the gateway.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kapal_runtime.config import RuntimeConfig
from kapal_runtime.log import log_event

# A command line longer than this is refused (they are a few bytes).
MAX_LINE = 256
# How long a client may take to send its line: the zygote serves one at a time.
CLIENT_TIMEOUT_S = 1.0
# A forked worker's handler threads still running after its drain get this long.
EXIT_GRACE_S = 1.0

Work = Callable[[RuntimeConfig], int]


@dataclass
class Worker:
    slot: int
    pid: int
    port: int
    log_port: int

    def describe(self) -> dict[str, Any]:
        return {
            "worker": self.slot,
            "port": self.port,
            "log_port": self.log_port,
            "pid": abs(self.pid),
            "stopping": self.pid < 0,
        }


def worker_config(config: RuntimeConfig, slot: int) -> RuntimeConfig:
    """Worker `slot`'s configuration: its own ports, two apart from the one before."""
    log_port = config.log_port + 2 * slot if config.log_port else 0
    return dataclasses.replace(config, port=config.port + 2 * slot, log_port=log_port)


class Zygote:
    def __init__(self, config: RuntimeConfig, work: Work) -> None:
        self.config = config
        # What a worker runs (the runtime's server) with its configuration; its exit code.
        self.work = work
        self.workers: dict[int, Worker] = {}
        self.stopping = False
        self.code = 0
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()

    # -- the zygote's loop -------------------------------------------------------------

    def serve(self) -> int:
        """Fork worker 0, answer commands until worker 0 ends or SIGTERM; the exit code."""
        listener = socket.create_server(("0.0.0.0", self.config.zygote_port), backlog=64)
        self._listener = listener
        for sock in (listener, self._wake_r, self._wake_w):
            sock.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the selector
        self.fork(0)
        log_event("zygote_started", port=self.config.zygote_port, pid=os.getpid())
        while self.workers:
            for key, _ in self._selector.select(timeout=1.0):
                if key.data == "accept":
                    self._accept()
                else:
                    with contextlib.suppress(BlockingIOError):
                        self._wake_r.recv(4096)
            self._reap()
            if self.stopping or 0 not in self.workers:
                self._stop_all()
        log_event("zygote_stopped", code=self.code)
        return self.code

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _stop_all(self) -> None:
        """SIGTERM each worker once; they drain on their own."""
        for worker in self.workers.values():
            if worker.pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
                worker.pid = -worker.pid  # signalled
        if self._listener is not None:
            self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            for slot, worker in list(self.workers.items()):
                if abs(worker.pid) == pid:
                    del self.workers[slot]
                    if slot == 0:
                        self.code = code if code >= 0 else 128 - code
                    level = "info" if code == 0 else "warning"
                    log_event("worker_exited", level, worker=slot, pid=pid, code=code)

    # -- commands ----------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            conn.settimeout(CLIENT_TIMEOUT_S)
            try:
                line = _read_line(conn)
                answer = self.command(line)
                conn.sendall(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
            except (OSError, ValueError) as exc:
                log_event("zygote_command_failed", "warning", error=str(exc))

    def command(self, line: str) -> dict[str, Any]:
        """Run one command line; the answer to send back."""
        words = line.split()
        if words == ["fork"]:
            if self.stopping:
                return {"error": "the container is stopping"}
            slot = self._free_slot()
            if slot is None:
                return {"error": f"at most {self.config.workers_max} workers"}
            try:
                # A generic runtime's worker awaits /_/init as its first did.
                return {**self.fork(slot).describe(), "prewarm": self.config.prewarm}
            except OSError as exc:
                log_event("fork_failed", "error", error=str(exc))
                return {"error": f"fork failed: {exc}"}
        if len(words) == 2 and words[0] == "stop" and words[1].isdigit():
            slot = int(words[1])
            worker = self.workers.get(slot)
            if slot == 0 or worker is None:
                return {"error": f"no forked worker {slot}"}
            if worker.pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
                worker.pid = -worker.pid
            return {"stopped": slot}
        if words == ["list"]:
            # Until it has exited, a stopped worker is listed (its memory is still used).
            return {"workers": [self.workers[k].describe() for k in sorted(self.workers)]}
        return {"error": f"unknown command {line.strip()[:40]!r}"}

    def _free_slot(self) -> int | None:
        for slot in range(1, self.config.workers_max + 1):
            if slot not in self.workers:
                return slot
        return None

    def fork(self, slot: int) -> Worker:
        config = worker_config(self.config, slot)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._become_worker(config)  # never returns
        worker = Worker(slot, pid, config.port, config.log_port)
        self.workers[slot] = worker
        if slot:
            log_event("worker_forked", worker=slot, pid=pid, port=config.port)
        return worker

    def _become_worker(self, config: RuntimeConfig) -> None:
        """In the child: drop the zygote's sockets and signal handlers, run the runtime,
        exit without unwinding into the zygote's frames."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            self._selector.close()
            if self._listener is not None:
                self._listener.close()
            self._wake_r.close()
            self._wake_w.close()
            code = self.work(config)
            _join_threads(EXIT_GRACE_S)
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)


def _read_line(conn: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(MAX_LINE)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_LINE:
            raise ValueError("command line too long")
    return data.decode("ascii", errors="replace")


def _join_threads(grace_s: float) -> None:
    """Handler threads still running after the drain get `grace_s`, as the interpreter's
    exit would give them, then the worker exits anyway."""
    deadline = time.monotonic() + grace_s
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
