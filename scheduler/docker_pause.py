"""Pausing Docker containers: through their cgroup freezer when this host allows it (see
scheduler.freezer), else by the engine.

The engine does not see a freeze it did not make: its state stays "running" and no event
is sent. So what each container's state is, as Kapal reports it, comes from here, and
what the engine paused (by this gateway's fallback, or an earlier gateway) is unpaused by
the engine alone. Blocking methods run on the backend's threads; `thaw_now` runs on the
loop.
"""

from __future__ import annotations

import logging

import docker.errors
from docker import APIClient

from scheduler.errors import BackendError
from scheduler.freezer import Cgroup, FreezeError, Freezer

log = logging.getLogger("kapal.scheduler.docker")


class ContainerPauses:
    """Pause, unpause and paused state of one engine's containers."""

    def __init__(self, api: APIClient, freezer: Freezer | None):
        self.api = api
        self.freezer = freezer
        # Each container's cgroup, found once from its init's pid (None: the engine pauses).
        self._cgroups: dict[str, Cgroup | None] = {}
        # Paused by the engine (here or by an earlier gateway): only the engine unpauses it.
        self._engine_paused: set[str] = set()

    def started(self, cid: str, pid: int) -> None:
        """A container now runs as `pid` (what `inspect` said after its start)."""
        self._cgroups[cid] = self.freezer.locate(pid) if self.freezer is not None and pid else None

    def cgroup(self, cid: str) -> Cgroup | None:
        """The container's cgroup when Kapal may freeze it itself (the first time, the
        engine is asked for its init's pid)."""
        if cid in self._cgroups or self.freezer is None:
            return self._cgroups.get(cid)
        try:
            state = self.api.inspect_container(cid)["State"]
        except docker.errors.NotFound:
            return None
        self.status(cid, state)
        return self._cgroups.get(cid)

    def status(self, cid: str, state: dict[str, object]) -> str:
        """The container's status from the engine's `State`, "paused" also when frozen
        through its cgroup."""
        status = "paused" if state.get("Paused") else str(state.get("Status", ""))
        if status == "paused":
            self._engine_paused.add(cid)
        elif status == "running":
            if cid not in self._cgroups:
                pid = state.get("Pid")
                self.started(cid, pid if isinstance(pid, int) else 0)
            if self._frozen(cid):
                return "paused"
        return status

    def listed(self, cid: str, state: str) -> str:
        """As `status`, for a container of a listing (its state word, no pid)."""
        if state == "paused":
            self._engine_paused.add(cid)
        elif state == "running" and self._frozen(cid):
            return "paused"
        return state

    def keep_only(self, ids: set[str]) -> None:
        """Forget containers no longer listed (removed by someone else)."""
        for gone in [cid for cid in self._cgroups if cid not in ids]:
            del self._cgroups[gone]
        self._engine_paused &= ids

    def removed(self, cid: str) -> None:
        self._cgroups.pop(cid, None)
        self._engine_paused.discard(cid)

    def pause(self, cid: str) -> None:
        found = self.cgroup(cid)
        if found is None or self.freezer is None or cid in self._engine_paused:
            self.api.pause(cid)
            self._engine_paused.add(cid)
            return
        try:
            self.freezer.freeze(found)
        except FreezeError as e:
            raise BackendError(str(e)) from e

    def thaw_now(self, cid: str) -> bool:
        """Thaw a container Kapal froze, without waiting; whether that is done (else
        `unpause` on a thread finishes the job)."""
        found = self._cgroups.get(cid)
        if found is None or self.freezer is None or cid in self._engine_paused:
            return False
        try:
            return self.freezer.thaw(found, wait=False)
        except FreezeError as e:
            raise BackendError(str(e)) from e

    def unpause(self, cid: str) -> None:
        found = self.cgroup(cid)
        if found is None or self.freezer is None or cid in self._engine_paused:
            self.api.unpause(cid)
            self._engine_paused.discard(cid)
            return
        try:
            self.freezer.thaw(found)
        except FreezeError as e:
            raise BackendError(str(e)) from e

    def thaw_quietly(self, cid: str, look: bool) -> None:
        """Before a stop: a frozen container never handles the SIGTERM of a graceful one
        (`look`: ask the engine for a container not seen yet)."""
        found = self.cgroup(cid) if look else self._cgroups.get(cid)
        if found is None or self.freezer is None or cid in self._engine_paused:
            return
        try:
            if self.freezer.frozen(found):
                self.freezer.thaw(found)
        except (OSError, FreezeError) as e:
            log.debug("not thawed", extra={"container": cid, "error": str(e)})

    def _frozen(self, cid: str) -> bool:
        found = self.cgroup(cid)
        if found is None or self.freezer is None:
            return False
        try:
            return self.freezer.frozen(found)
        except OSError:  # gone meanwhile
            return False
