"""Resolved dependency folders kept on the host, by the hash of what they were made from.

A function whose requirements did not change gets the very folder its last deploy used:
no resolver runs, and the image's dependency layer (made from the same files) is found in
Docker's build cache. Several gateways on one host may share the cache folder:

- an entry is made in a staging folder and renamed into place, so it is whole or absent;
- one lock file per key (`flock`; kept for good, a few bytes): shared while an entry is
  read, exclusive while it is made or removed; two gateways wanting the same missing
  entry resolve it once;
- the cache is bounded: past `max_bytes`, the least recently used entries that nobody
  holds are removed.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("kapal.scheduler.depcache")

# Fills an empty folder with an entry's files (raises when it cannot).
Make = Callable[[Path], Awaitable[None]]

LOCK_POLL_S = 0.1
# A staging folder this old belongs to a resolver that died: removed by the next prune.
STALE_STAGING_S = 3600.0


@dataclass(frozen=True)
class Entry:
    """One resolved folder, held (not removable) while the `use` block lasts."""

    key: str
    path: Path
    # Found made (by this or another gateway): nothing was resolved.
    reused: bool
    # Bytes of files in it.
    size: int
    # How long finding or making it took.
    seconds: float


def folder_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


class _Lock:
    """An flock on one file; acquired by polling so that waiting stays cancellable."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    async def acquire(self, mode: int) -> None:
        while True:
            try:
                fcntl.flock(self.fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                await asyncio.sleep(LOCK_POLL_S)

    def try_acquire(self, mode: int) -> bool:
        try:
            fcntl.flock(self.fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def close(self) -> None:
        os.close(self.fd)  # releases the lock too


class DependencyCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.entries = root / "entries"
        self.staging = root / "staging"
        self.locks = root / "locks"

    def _ensure(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in (self.entries, self.staging, self.locks):
            d.mkdir(mode=0o700, exist_ok=True)

    @asynccontextmanager
    async def use(self, key: str, make: Make) -> AsyncIterator[Entry]:
        """The entry of `key`, made by `make` when missing; not removed while the block
        runs (by this gateway or another). Errors of `make` leave nothing behind."""
        started = time.monotonic()
        await asyncio.to_thread(self._ensure)
        path = self.entries / key
        lock = _Lock(self.locks / f"{key}.lock")
        try:
            await lock.acquire(fcntl.LOCK_SH)
            reused = path.is_dir()
            if not reused:
                # Made under the exclusive lock: another gateway making it meanwhile
                # finishes first, and is then reused here. (Let go first: two holders
                # converting shared to exclusive at once would wait on each other.)
                fcntl.flock(lock.fd, fcntl.LOCK_UN)
                await lock.acquire(fcntl.LOCK_EX)
                reused = path.is_dir()
                if not reused:
                    await self._make(path, make)
                # Held shared from here on: others may read it at once.
                await lock.acquire(fcntl.LOCK_SH)
            # Its age decides which entries a full cache drops first.
            os.utime(path)
            size = await asyncio.to_thread(folder_size, path)
            yield Entry(key, path, reused, size, time.monotonic() - started)
        finally:
            lock.close()
        await asyncio.to_thread(self.prune)

    async def _make(self, path: Path, make: Make) -> None:
        staging = self.staging / f"{path.name}-{os.getpid()}-{secrets.token_hex(4)}"
        staging.mkdir(mode=0o755)
        try:
            await make(staging)
            # Atomic: readers see the whole folder or none.
            os.rename(staging, path)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)

    def prune(self) -> list[str]:
        """Remove the least recently used entries nobody holds until the cache fits in
        `max_bytes` (the newest stays, however big); returns the keys removed."""
        removed: list[str] = []
        now = time.time()
        for stale in self._list(self.staging):
            with suppress(OSError):
                if now - stale.stat().st_mtime > STALE_STAGING_S:
                    shutil.rmtree(stale, ignore_errors=True)
        entries = []
        for path in self._list(self.entries):
            with suppress(OSError):
                entries.append((path.stat().st_mtime, path, folder_size(path)))
        entries.sort()
        total = sum(size for _, _, size in entries)
        for _, path, size in entries[:-1]:
            if total <= self.max_bytes:
                break
            lock = _Lock(self.locks / f"{path.name}.lock")
            try:
                if not lock.try_acquire(fcntl.LOCK_EX):
                    continue  # in use: a build is copying it
                # Out of sight first (atomic), so a crash mid-removal leaves no half
                # entry. The lock file stays: one made anew could be held by a gateway
                # that opened this one meanwhile, and the key would have two locks.
                trash = self.staging / f"{path.name}-removed-{secrets.token_hex(4)}"
                os.rename(path, trash)
                shutil.rmtree(trash, ignore_errors=True)
            finally:
                lock.close()
            total -= size
            removed.append(path.name)
        if removed:
            log.info("dependency cache pruned", extra={"removed": removed, "bytes": total})
        return removed

    @staticmethod
    def _list(folder: Path) -> list[Path]:
        try:
            return list(folder.iterdir())
        except FileNotFoundError:
            return []


def trim_files(folder: Path, max_bytes: int) -> int:
    """Remove the oldest files of a cache folder (pip's) until it fits in `max_bytes`;
    returns the bytes removed. A file removed under a reader is a cache miss to it."""
    files = []
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            with suppress(OSError):
                st = os.lstat(path)
                files.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in files)
    removed = 0
    for _, size, path in sorted(files):
        if total - removed <= max_bytes:
            break
        with suppress(OSError):
            os.unlink(path)
            removed += size
    return removed
