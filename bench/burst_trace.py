"""Where a burst's time goes, read after the fact: the gateway's own log lines (instances
ready by tier, start times, the autoscaler's decisions) and the engine's memory figures.
"""

from __future__ import annotations

import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import docker


def _seconds(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _records(log_path: Path, began: float, until: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        at = _seconds(rec.get("ts", "1970-01-01T00:00:00.000Z")) - began
        if 0 <= at <= until - began:
            rec["at"] = round(at, 2)
            out.append(rec)
    return out


def step_trace(log_path: Path, began: float, until: float) -> dict[str, Any]:
    """Instances that came up between `began` and `until` (wall-clock seconds), by tier;
    start times of new containers; when the autoscaler asked for how many."""
    records = _records(log_path, began, until)
    ready = [r for r in records if r.get("msg") == "instance ready"]
    by_tier: dict[str, int] = {}
    for r in ready:
        by_tier[r["tier"]] = by_tier.get(r["tier"], 0) + 1
    new_ms = sorted(float(r["start_ms"]) for r in ready if r["tier"] == "new")
    new_at = [float(r["at"]) for r in ready if r["tier"] == "new"]
    span = (max(new_at) - min(new_at)) if len(new_at) > 1 else 0.0
    decisions = [[r["at"], r["desired"], r["active"]] for r in records if r.get("msg") == "scaling"]
    return {
        "ready_by_tier": by_tier,
        # Seconds after the step began at which each instance was ready.
        "ready_at_s": [r["at"] for r in ready],
        "new_start_ms_p50": round(statistics.median(new_ms), 1) if new_ms else None,
        "new_start_ms_max": round(new_ms[-1], 1) if new_ms else None,
        # New containers made ready per second while they came (the engine's pace here).
        "new_per_s": round((len(new_at) - 1) / span, 2) if span else None,
        # [seconds after the step began, desired, active] per logged decision (first 12).
        "decisions": decisions[:12],
    }


def _usage_bytes(api: Any, cid: str) -> int:
    try:
        stats = api.stats(cid, stream=False, one_shot=True)
    except docker.errors.NotFound:  # removed since it was listed
        return 0
    mem = stats.get("memory_stats") or {}
    usage = int(mem.get("usage") or 0)
    # What `docker stats` shows: the page cache that can be dropped is not counted.
    inactive = int((mem.get("stats") or {}).get("inactive_file") or 0)
    return max(0, usage - inactive)


def running(namespace: str) -> list[str]:
    """Ids of the running containers of a Kapal namespace."""
    client = docker.from_env()
    try:
        labels = ["kapal.managed=true", f"kapal.namespace={namespace}"]
        # The low-level list: the model's inspects each one, and one removed meanwhile
        # (a scale-down, a prewarm shrinking) fails the whole call.
        return [str(c["Id"]) for c in client.api.containers(filters={"label": labels})]
    finally:
        client.close()


def idle_memory_mib(namespace: str) -> tuple[float, int]:
    """Memory of every running container of a Kapal namespace (MiB), and their count."""
    ids = running(namespace)
    client = docker.from_env()
    try:
        with ThreadPoolExecutor(8) as pool:
            used = list(pool.map(lambda cid: _usage_bytes(client.api, cid), ids))
        return round(sum(used) / 2**20, 1), len(ids)
    finally:
        client.close()
