"""Background processes this package starts and stops, seen through /proc."""

import os
import signal
import subprocess
import time
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def process_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def descendants(pid: int) -> list[int]:
    """Every living process below `pid` in the process tree."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found.extend(children)
        todo.extend(children)
    return found


def read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def stop_process(pid: int, grace: float, popen: "subprocess.Popen[bytes] | None" = None) -> bool:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. True when it needed the kill."""
    if not _signal(pid, signal.SIGTERM):
        _wait_gone(pid, 0, popen)
        return False
    if _wait_gone(pid, grace, popen):
        return False
    _signal(pid, signal.SIGKILL)
    _wait_gone(pid, 5.0, popen)
    return True


def _signal(pid: int, sig: signal.Signals) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, timeout: float, popen: "subprocess.Popen[bytes] | None") -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if popen is not None:
            gone = popen.poll() is not None
        else:
            gone = not pid_alive(pid)
        if gone or time.monotonic() >= deadline:
            return gone
        time.sleep(0.1)
