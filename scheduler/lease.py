"""Whether any gateway of a namespace is alive on this host: a lock file it holds.

Every live gateway holds a shared `flock` on its namespace's lock file for as long as it
runs; the kernel drops it when the process dies, however it dies (`kill -9` too). So a
lock that can be taken exclusively means no gateway of that namespace is left here, and
what it made on this host (networks, firewall rules) may be cleaned up by another.
Holding the exclusive lock while cleaning keeps a gateway that starts meanwhile waiting.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Shared by every process on the host; its path is also written on what a gateway makes.
ROOT = Path(tempfile.gettempdir()) / "kapal-namespaces"


def lock_path(namespace: str, root: Path = ROOT) -> Path:
    return root / f"{namespace}.lock"


class NamespaceLease:
    """This gateway's shared hold on its namespace, from `hold` until `release`."""

    def __init__(self, namespace: str, root: Path = ROOT) -> None:
        self.path = lock_path(namespace, root)
        self._fd: int | None = None

    def hold(self) -> None:
        """Take the shared lock (waiting while another gateway cleans this namespace up)."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        self._fd = fd

    def last(self) -> bool:
        """True when no other gateway of the namespace holds it (the lock is now ours alone)."""
        if self._fd is None:
            return False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def abandoned(path: Path) -> Iterator[bool]:
    """True inside when no live gateway holds the lock at `path`; held meanwhile."""
    # A live gateway made its file before anything that names it: a missing one is free.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
