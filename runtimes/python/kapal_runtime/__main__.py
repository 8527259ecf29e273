"""`python3 -m kapal_runtime`: the container's command.

With KAPAL_ZYGOTE_PORT set (containers) this process is the zygote and each runtime is a
forked worker (zygote.py); without it, this process is the runtime.
"""

import io
import os
import sys
import threading

from kapal_runtime.capture import Capture
from kapal_runtime.config import ConfigError, RuntimeConfig
from kapal_runtime.log import log_event
from kapal_runtime.server import preload, run
from kapal_runtime.zygote import Zygote

# After a drain, how long a handler thread stuck past its deadline may delay the exit.
EXIT_GRACE_S = 1.0


def main() -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        # Without capture (KAPAL_LOG_PORT=0), print() calls reach stdout as they happen.
        sys.stdout.reconfigure(line_buffering=True)
    try:
        config = RuntimeConfig.from_env()
    except ConfigError as exc:
        log_event("config_invalid", "error", error=str(exc))
        return 2
    if config.zygote_port:
        preload(config)
        return Zygote(config, work).serve()
    work(config)
    _exit_soon(EXIT_GRACE_S)
    return 0


def work(config: RuntimeConfig) -> int:
    """One runtime: serve until SIGTERM, drain, return its exit code."""
    # From here on, output becomes tagged lines served on the log port (capture.py).
    capture = Capture(config) if config.log_port else None
    if capture is not None:
        capture.install()
    try:
        run(config, capture)
    finally:
        if capture is not None:
            capture.close()  # a failure's traceback, printed after this, reaches stderr
    return 0


def _exit_soon(grace_s: float) -> None:
    """Interpreter exit joins the handler threads; one that never returns must not keep a
    drained container alive, so exit hard after a grace period if exit has not happened."""

    def hard_exit() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    timer = threading.Timer(grace_s, hard_exit)
    timer.daemon = True
    timer.start()


if __name__ == "__main__":
    sys.exit(main())
