"""`KAPAL_WORKERS=N`: N gateway processes sharing one port on this host (SO_REUSEPORT).

Each worker is a whole gateway (`python -m gateway --worker I`): its own services, a peer
of the namespace's cluster exactly as a gateway on another host would be. The kernel
spreads new connections over their listening sockets, so warm traffic uses every core.

This parent only starts the workers, restarts one that dies, and stops them. It stops
all but worker 0 first and worker 0 last, so that exactly one of them sees itself as the
last gateway and removes what the namespace leaves (containers, network, secret files).
The workers run in their own session: a Ctrl-C at a terminal reaches only the parent.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger("kapal.gateway.workers")

# A worker that exits this soon after it started failed to start: give up, do not loop.
START_FAILURE_S = 10.0
RESTART_DELAY_S = 1.0
POLL_S = 0.2


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)


def command(index: int) -> list[str]:
    return [sys.executable, "-m", "gateway", "--worker", str(index)]


def spawn(index: int) -> Worker:
    proc = subprocess.Popen(command(index), start_new_session=True)
    log.info("worker started", extra={"worker": index, "pid": proc.pid})
    return Worker(index, proc)


def stop(workers: list[Worker], timeout_s: float) -> None:
    """SIGTERM each, then wait for all of them; kill what outlives `timeout_s`."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for w in workers:
        try:
            w.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker did not stop in time; killed", extra={"worker": w.index})
            w.proc.kill()
            w.proc.wait()


def supervise(count: int, stop_timeout_s: float) -> int:
    """Run `count` workers until SIGTERM or SIGINT; the exit code of the group."""
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workers = [spawn(i) for i in range(count)]
    code = 0
    try:
        while not stopping:
            time.sleep(POLL_S)
            for i, w in enumerate(workers):
                rc = w.proc.poll()
                if rc is None or stopping:
                    continue
                if time.monotonic() - w.started < START_FAILURE_S:
                    log.error("worker failed at start-up", extra={"worker": w.index, "code": rc})
                    code = rc or 1
                    stopping = True
                    break
                log.error("worker exited; restarting", extra={"worker": w.index, "code": rc})
                time.sleep(RESTART_DELAY_S)
                workers[i] = spawn(w.index)
    finally:
        # The others first, worker 0 (still serving) last: it is the one that cleans up.
        stop(workers[1:], stop_timeout_s)
        stop(workers[:1], stop_timeout_s)
    return code


def orphaned(parent: int) -> bool:
    """True when the supervising parent is gone (this worker was re-parented)."""
    return os.getppid() != parent
