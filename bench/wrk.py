"""Running wrk and reading its figures (latency percentiles in microseconds)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nKAPAL {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d,'
    .. ' "p50_us": %d, "p90_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: int
    non2xx: int
    p50_us: float
    p90_us: float
    p99_us: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def wrk(
    url: str, connections: int, seconds: float, threads: int | None = None, timeout_s: int = 10
) -> WrkResult:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: run `make setup` (it installs it)")
    threads = threads or min(2, connections)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "report.lua"
        script.write_text(REPORT)
        out = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                f"{timeout_s}s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
        )
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr.strip() or out.stdout.strip()}")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("KAPAL "))
    d = json.loads(line[6:])
    return WrkResult(
        d["requests"],
        d["duration_us"] / 1e6,
        d["errors"],
        d["non2xx"],
        d["p50_us"],
        d["p90_us"],
        d["p99_us"],
    )
