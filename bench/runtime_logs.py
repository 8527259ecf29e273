"""`runtime-logs`: the runtime alone: log lines/s it records and serves, what capture costs.

The Python runtime runs on this host (no engine, no gateway, no Postgres):
- a sync handler prints N short lines; then a loop pulls them from the log port as the
  gateway does (`after` = last seen, 1 MiB pages); then both at once (long polls);
- the same print loop in a plain process whose stdout is a pipe drained by a reader, as
  the container's stdout is read by dockerd (PYTHONUNBUFFERED=1, as in the image);
- what tagging adds per invocation: the context copied for a sync handler's thread, and
  the invocation's begin and end;
- a trivial sync handler under wrk, capture on and off (KAPAL_LOG_PORT=0).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import say
from bench.wrk import wrk
from infra.local import REPO

RUNTIME_DIR = REPO / "runtimes" / "python"

HANDLER = """
import time


def handle(event, context):
    n = int(event.query.get("n", "0"))
    started = time.perf_counter()
    for i in range(n):
        print("line", i)
    return {"seconds": time.perf_counter() - started}
"""

PRINT_LOOP = """
import sys, time
n = int(sys.argv[1])
started = time.perf_counter()
for i in range(n):
    print("line", i)
sys.stderr.write(repr(time.perf_counter() - started))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Runtime:
    def __init__(self, code: Path, **env: str) -> None:
        self.port, self.log_port = _free_port(), _free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith("KAPAL_")}
        full.update(
            PYTHONPATH=str(RUNTIME_DIR),
            PYTHONUNBUFFERED="1",
            KAPAL_CODE_DIR=str(code),
            KAPAL_PORT=str(self.port),
            KAPAL_LOG_PORT=str(self.log_port),
            # Room for every line: the caps are not what is measured.
            KAPAL_LOG_INVOCATION_BYTES=str(1 << 30),
            KAPAL_LOG_BUFFER_BYTES=str(1 << 30),
            KAPAL_LOG_DRAIN_S="0.1",
        )
        full.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kapal_runtime"],
            cwd=code,
            env=full,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the runtime did not start") from None
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


async def _invoke(http: aiohttp.ClientSession, runtime: Runtime, n: int) -> float:
    async with http.get(f"{runtime.url}/?n={n}") as resp:
        seconds: float = (await resp.json())["seconds"]
        return seconds


async def _pull_all(
    http: aiohttp.ClientSession, runtime: Runtime, after: int, until: int, wait: float
) -> tuple[int, int]:
    """Pull until the last seq is `until`; (lines pulled, bytes pulled)."""
    lines = size = 0
    url = f"http://127.0.0.1:{runtime.log_port}/_/logs"
    while after < until:
        params = {"after": str(after), "wait": str(wait)}
        async with http.get(url, params=params) as resp:
            body = await resp.read()
            after = int(resp.headers["X-Kapal-Log-Last"])
        lines += body.count(b"\n")
        size += len(body)
    return lines, size


async def _last_seq(http: aiohttp.ClientSession, runtime: Runtime) -> int:
    url = f"http://127.0.0.1:{runtime.log_port}/_/logs"
    async with http.get(url, params={"after": str(1 << 62), "limit": "1"}) as resp:
        return int(resp.headers["X-Kapal-Log-Last"])


async def _lines(code: Path, n: int) -> dict[str, Any]:
    runtime = Runtime(code)
    try:
        async with aiohttp.ClientSession() as http:
            await _invoke(http, runtime, 10)  # threads started, handler warm
            start = await _last_seq(http, runtime)  # acks the start-up lines too
            produce_s = await _invoke(http, runtime, n)
            started = time.perf_counter()
            pulled, size = await _pull_all(http, runtime, start, start + n, 0)
            serve_s = time.perf_counter() - started
            # Both at once: the puller long-polls while the handler prints.
            start += n
            started = time.perf_counter()
            puller = asyncio.create_task(_pull_all(http, runtime, start, start + n, 1.0))
            both_produce_s = await _invoke(http, runtime, n)
            await puller
            both_s = time.perf_counter() - started
    finally:
        runtime.stop()
    return {
        "lines": n,
        "produce_lines_per_s": round(n / produce_s),
        "captured_print_us": round(produce_s / n * 1e6, 2),
        "serve_lines_per_s": round(pulled / serve_s),
        "serve_mib_per_s": round(size / serve_s / (1 << 20), 1),
        "row_bytes": round(size / pulled, 1),
        "both_lines_per_s": round(n / both_s),
        "both_print_us": round(both_produce_s / n * 1e6, 2),
    }


def _pipe_print_us(n: int, unbuffered: bool) -> float:
    """print() to a pipe a reader drains, as the container's stdout is drained."""
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-c", PRINT_LOOP, str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    stdout = proc.stdout
    drained = threading.Thread(target=lambda: [None for _ in iter(lambda: stdout.read(65536), b"")])
    drained.start()
    seconds = float(proc.stderr.read())
    proc.wait()
    drained.join()
    return round(seconds / n * 1e6, 2)


def _per_invocation_ns() -> dict[str, float]:
    """What tagging adds to each invocation, measured in this process (best of 5)."""
    sys.path.insert(0, str(RUNTIME_DIR))
    from kapal_runtime.capture import Capture
    from kapal_runtime.config import RuntimeConfig

    capture = Capture(RuntimeConfig.from_env({}))

    def job() -> None:
        pass

    def best(stmt: str) -> float:
        g = {"contextvars": contextvars, "job": job, "capture": capture}
        n = 100_000
        return round(min(timeit.repeat(stmt, globals=g, number=n, repeat=5)) / n * 1e9)

    plain = best("job()")
    return {
        "copy_context_run_ns": best("contextvars.copy_context().run(job)") - plain,
        "begin_end_ns": best("capture.end(capture.begin('0123456789abcdef'))"),
    }


def _sync_rps(code: Path, seconds: int, **env: str) -> dict[str, float]:
    runtime = Runtime(code, **env)
    try:
        result = wrk(f"{runtime.url}/?n=0", connections=16, seconds=seconds)
    finally:
        runtime.stop()
    return {"rps": round(result.rps), "p50_us": result.p50_us}


def run(quick: bool) -> dict[str, Any]:
    n = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="kapal-bench-logs-") as tmp:
        code = Path(tmp)
        (code / "handler.py").write_text(HANDLER)
        say(f"a handler printing {n} lines, pulled from the log port")
        result = asyncio.run(_lines(code, n))
        say("the same print loop to a pipe")
        result["pipe_print_us_unbuffered"] = _pipe_print_us(n, unbuffered=True)
        result["pipe_print_us_buffered"] = _pipe_print_us(n, unbuffered=False)
        result.update(_per_invocation_ns())
        say("a trivial sync handler under wrk, capture on and off")
        seconds = 3 if quick else 10
        on = _sync_rps(code, seconds)
        off = _sync_rps(code, seconds, KAPAL_LOG_PORT="0")
    result["sync_rps_capture_on"] = on["rps"]
    result["sync_rps_capture_off"] = off["rps"]
    result["sync_p50_us_capture_on"] = on["p50_us"]
    result["sync_p50_us_capture_off"] = off["p50_us"]
    result["sync_rps_ratio_on_off"] = round(on["rps"] / off["rps"], 3) if off["rps"] else None
    return result
