"""Freezing a container's processes through its cgroup, without the engine.

The engine's pause is only a write to the container's cgroup freezer, reached through
dockerd, containerd and runc (about 12 ms here); the write itself takes well under a
millisecond. A gateway on the engine's host, as root, with the cgroup filesystem
writable, can do it itself. Anything else (a gateway in a container, another
namespace's view of the tree, a read-only mount) is reported as no cgroup found, and
the caller falls back to the engine.

Both freezers are handled: cgroup v1's `freezer.state` (also what runc uses on a hybrid
host) and cgroup v2's `cgroup.freeze` with its `frozen` flag in `cgroup.events`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

# How long freezing may take before it is undone (a task stuck in the kernel can hold it).
FREEZE_TIMEOUT_S = 1.0


class FreezeError(Exception):
    """A cgroup could not be frozen or thawed (it was left thawed where possible)."""


@dataclass(frozen=True)
class Cgroup:
    """One container's cgroup directory, and which freezer interface it has."""

    path: Path
    v1: bool

    @property
    def control(self) -> Path:
        return self.path / ("freezer.state" if self.v1 else "cgroup.freeze")


@dataclass(frozen=True)
class Mounts:
    """Where the freezer hierarchies are mounted, as this process sees them."""

    freezer_v1: Path | None = None
    unified: Path | None = None


def read_mounts(mountinfo: Path) -> Mounts:
    """The v1 freezer and the v2 (unified) mounts whose root is the hierarchy's root.

    A mount of a sub-tree (inside a container's cgroup namespace) is skipped: paths in
    /proc/<pid>/cgroup would not resolve under it.
    """
    freezer_v1: Path | None = None
    unified: Path | None = None
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return Mounts()
    for line in lines:
        before, sep, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or fields[3] != "/":
            continue
        point = Path(fields[4])
        if tail[0] == "cgroup" and "freezer" in tail[2].split(",") and freezer_v1 is None:
            freezer_v1 = point
        elif tail[0] == "cgroup2" and unified is None:
            unified = point
    return Mounts(freezer_v1, unified)


def _memberships(text: str) -> tuple[str | None, str | None]:
    """(v1 freezer path, v2 path) from the text of a /proc/<pid>/cgroup file."""
    v1 = v2 = None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "freezer" in controllers.split(","):
            v1 = path
    return v1, v2


class Freezer:
    """Finds, freezes and thaws containers' cgroups on this host."""

    def __init__(
        self,
        proc: Path = Path("/proc"),
        mounts: Mounts | None = None,
        timeout_s: float = FREEZE_TIMEOUT_S,
    ):
        self.proc = proc
        self.mounts = mounts if mounts is not None else read_mounts(proc / "self" / "mountinfo")
        self.timeout_s = timeout_s

    def locate(self, pid: int) -> Cgroup | None:
        """The cgroup of process `pid` (a container's init), when this process may freeze
        it; None when it cannot be found, is not writable, or is our own or the root."""
        if pid <= 0:
            return None
        try:
            theirs = _memberships((self.proc / str(pid) / "cgroup").read_text())
            ours = _memberships((self.proc / "self" / "cgroup").read_text())
        except OSError:
            return None
        # The hierarchy runc uses: v1's freezer when there is one (a hybrid host too).
        if self.mounts.freezer_v1 is not None and theirs[0] is not None:
            found, own, mount, v1 = theirs[0], ours[0], self.mounts.freezer_v1, True
        elif self.mounts.unified is not None and theirs[1] is not None:
            found, own, mount, v1 = theirs[1], ours[1], self.mounts.unified, False
        else:
            return None
        # Never the root, nor the cgroup this gateway runs in (it would freeze itself).
        if found.strip("/") in ("", (own or "/").strip("/")):
            return None
        cgroup = Cgroup(mount / found.lstrip("/"), v1)
        if not os.access(cgroup.control, os.W_OK):
            return None
        return cgroup

    def frozen(self, cgroup: Cgroup) -> bool:
        """Whether the cgroup is frozen (or freezing: its tasks do not run)."""
        if cgroup.v1:
            return (cgroup.path / "freezer.state").read_text().strip() != "THAWED"
        return self._events_frozen(cgroup) or cgroup.control.read_text().strip() == "1"

    def freeze(self, cgroup: Cgroup) -> None:
        """Freeze, and return once every task is frozen (undone, and raises, if that
        takes longer than the timeout)."""
        self._write(cgroup, frozen=True)
        if self._settled(cgroup, frozen=True, wait=True):
            return
        self.thaw(cgroup)
        raise FreezeError(f"{cgroup.path} not frozen within {self.timeout_s} s")

    def thaw(self, cgroup: Cgroup, wait: bool = True) -> bool:
        """Thaw; returns whether it is thawed already (without `wait`, after one look)."""
        self._write(cgroup, frozen=False)
        done = self._settled(cgroup, frozen=False, wait=wait)
        if wait and not done:
            raise FreezeError(f"{cgroup.path} not thawed within {self.timeout_s} s")
        return done

    def _write(self, cgroup: Cgroup, frozen: bool) -> None:
        if cgroup.v1:
            value = "FROZEN" if frozen else "THAWED"
        else:
            value = "1" if frozen else "0"
        try:
            cgroup.control.write_text(value)
        except OSError as e:
            raise FreezeError(f"{cgroup.control}: {e}") from e

    def _settled(self, cgroup: Cgroup, frozen: bool, wait: bool) -> bool:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                if cgroup.v1:
                    state = (cgroup.path / "freezer.state").read_text().strip()
                    done = state == ("FROZEN" if frozen else "THAWED")
                else:
                    done = self._events_frozen(cgroup) == frozen
            except OSError as e:
                raise FreezeError(f"{cgroup.path}: {e}") from e
            if done or not wait or time.monotonic() > deadline:
                return done
            time.sleep(0.001)

    @staticmethod
    def _events_frozen(cgroup: Cgroup) -> bool:
        for line in (cgroup.path / "cgroup.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "frozen":
                return value.strip() == "1"
        return False
