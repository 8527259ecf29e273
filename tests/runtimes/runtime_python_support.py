"""Starting the Python runtime as the container does (`python3 -m kapal_runtime`), on the host,
and reading its log lines from its log port as the gateway does."""

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from infra.local import tar_gz

RUNTIME_DIR = Path(__file__).resolve().parents[2] / "runtimes" / "python"


@dataclass(frozen=True)
class LogRow:
    """One row of a /_/logs body, its fields unescaped."""

    seq: int
    ts: float
    stream: str
    level: str | None
    request_id: str | None
    text: str


_ESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def _unescape(field: str) -> str:
    def one(match: re.Match[str]) -> str:
        escaped = match.group(1)
        assert escaped in _ESCAPES, f"unexpected escape \\{escaped} in {field!r}"
        return _ESCAPES[escaped]

    assert "\\" not in re.sub(r"\\.", "", field), f"a lone backslash in {field!r}"
    return re.sub(r"\\(.)", one, field)


def parse_copy_rows(body: bytes) -> list[LogRow]:
    """The body as PostgreSQL's COPY text format reads it, checked strictly: rows end with LF,
    six TAB-separated fields, no raw CR, only the escapes the runtime writes."""
    text = body.decode("utf-8")  # must be valid UTF-8 whatever the function wrote
    if not text:
        return []
    assert text.endswith("\n"), text[-200:]
    rows = []
    for line in text[:-1].split("\n"):
        fields = line.split("\t")
        assert len(fields) == 6, line
        assert "\r" not in line and "\x00" not in line, line
        seq, ts, stream, level, request_id, message = fields
        assert re.fullmatch(r"[1-9][0-9]*", seq), line
        assert re.fullmatch(r"[0-9]+\.[0-9]{6}", ts), line
        assert stream in ("stdout", "stderr", "log", "runtime"), line
        assert level == "\\N" or level in ("debug", "info", "warning", "error", "critical")
        rows.append(
            LogRow(
                int(seq),
                float(ts),
                stream,
                None if level == "\\N" else level,
                None if request_id == "\\N" else _unescape(request_id),
                _unescape(message),
            )
        )
    seqs = [row.seq for row in rows]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # no gaps within a body
    return rows


@dataclass
class LogPull:
    status: int
    headers: dict[str, str]
    rows: list[LogRow]

    @property
    def last(self) -> int:
        return int(self.headers["X-Kapal-Log-Last"])

    @property
    def dropped(self) -> int:
        return int(self.headers["X-Kapal-Log-Dropped"])


@dataclass
class RuntimeProcess:
    proc: subprocess.Popen[bytes]
    port: int
    stderr_path: Path
    log_port: int = 0
    stdout_path: Path | None = None
    # Every row pulled so far by `logs_until`, and the seq it has acked.
    pulled: list[LogRow] = field(default_factory=list)
    cursor: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def logs_url(self) -> str:
        return f"http://127.0.0.1:{self.log_port}/_/logs"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        assert self.stdout_path is not None
        return self.stdout_path.read_text(errors="replace")

    async def pull(
        self, http: aiohttp.ClientSession, after: int, wait: float = 0, limit: int | None = None
    ) -> LogPull:
        params = {"after": str(after), "wait": str(wait)}
        if limit is not None:
            params["limit"] = str(limit)
        async with http.get(self.logs_url, params=params) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
            return LogPull(resp.status, dict(resp.headers), parse_copy_rows(await resp.read()))

    async def logs_until(
        self,
        http: aiohttp.ClientSession,
        found: Callable[[list[LogRow]], bool],
        timeout_s: float = 10.0,
    ) -> list[LogRow]:
        """Pull (and ack) as the gateway would until `found(every row pulled)` holds."""
        deadline = time.monotonic() + timeout_s
        while not found(self.pulled):
            if time.monotonic() > deadline:
                texts = "\n".join(repr(row) for row in self.pulled[-50:])
                raise AssertionError(f"not in the runtime's logs; last rows:\n{texts}")
            pull = await self.pull(http, self.cursor, wait=0.5)
            self.pulled += pull.rows
            self.cursor = pull.last
        return self.pulled

    async def ack(self, http: aiohttp.ClientSession) -> LogPull:
        """Tell the runtime every row pulled so far is stored (the gateway's next pull)."""
        pull = await self.pull(http, self.cursor)
        self.pulled += pull.rows
        self.cursor = pull.last
        return pull

    async def rows_of(
        self, http: aiohttp.ClientSession, request_id: str, count: int = 1
    ) -> list[LogRow]:
        """The rows tagged `request_id`, once there are at least `count`."""
        rows = await self.logs_until(
            http, lambda rows: sum(row.request_id == request_id for row in rows) >= count
        )
        return [row for row in rows if row.request_id == request_id]

    async def event(self, http: aiohttp.ClientSession, name: str) -> dict[str, object]:
        """The runtime's first event line named `name`."""
        marker = f'"event":"{name}"'
        rows = await self.logs_until(
            http, lambda rows: any(r.stream == "runtime" and marker in r.text for r in rows)
        )
        line = next(r.text for r in rows if r.stream == "runtime" and marker in r.text)
        record: dict[str, object] = json.loads(line)
        return record

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_runtime(
    workdir: Path,
    env: dict[str, str],
    python: str = sys.executable,
    pythonpath: list[str] | None = None,
) -> RuntimeProcess:
    """Start the runtime with `workdir` as its working directory and wait until it listens."""
    port, log_port = free_port(), free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KAPAL_")}
    full_env.update(
        PYTHONPATH=os.pathsep.join([str(RUNTIME_DIR), *(pythonpath or [])]),
        KAPAL_PORT=str(port),
        KAPAL_LOG_PORT=str(log_port),
        KAPAL_EVENT_LOOP="asyncio",  # the runtime image need not have uvloop
        # Most tests pull no logs: a stopping runtime need not wait 2 s for them.
        KAPAL_LOG_DRAIN_S="0.1",
    )
    full_env.update(env)
    stderr_path = workdir.parent / f"{workdir.name}-stderr-{port}.log"
    stdout_path = workdir.parent / f"{workdir.name}-stdout-{port}.log"
    workdir.mkdir(parents=True, exist_ok=True)
    with stderr_path.open("wb") as stderr, stdout_path.open("wb") as stdout:
        proc = subprocess.Popen(
            [python, "-m", "kapal_runtime"],
            cwd=workdir,
            env=full_env,
            stdout=stdout,
            stderr=stderr,
        )
    port, log_port = int(full_env["KAPAL_PORT"]), int(full_env["KAPAL_LOG_PORT"])
    runtime = RuntimeProcess(proc, port, stderr_path, log_port, stdout_path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"runtime exited with {proc.returncode}:\n{runtime.stderr()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.02)
        else:
            return runtime
    runtime.stop()
    raise RuntimeError(f"runtime did not listen within 20 s:\n{runtime.stderr()}")


def write_files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def tar_gz_b64(files: dict[str, str | bytes]) -> str:
    """A base64 .tar.gz of the given files, as /_/init expects it."""
    return base64.b64encode(tar_gz(files)).decode()
