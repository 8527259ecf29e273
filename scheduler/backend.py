"""The narrow interface between pools and whatever runs containers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from scheduler.models import FunctionSpec


@dataclass(frozen=True)
class Running:
    """A container the backend started or found, as pools see it."""

    id: str
    # host:port the instance's runtime server listens on ("" when it does not run).
    address: str
    function: str
    version: int
    labels: dict[str, str] = field(default_factory=dict)
    # Frozen by the engine (a paused standby).
    paused: bool = False


# What `watch` reports: a container was created and started, ended, frozen, thawed,
# renamed (a prewarmed container now serving a function) or removed.
EVENTS = ("start", "die", "oom", "pause", "unpause", "rename", "destroy")


class ContainerBackend(Protocol):
    async def start(self, spec: FunctionSpec, instance_id: str) -> Running:
        """Create and start an instance of `spec`; return once the engine says it runs."""
        ...

    async def remove(self, container_id: str, grace_s: float = 0.0) -> None:
        """Stop (SIGTERM, then SIGKILL after `grace_s`) and remove a container."""
        ...

    async def pause(self, container_id: str) -> None:
        """Freeze a container (cgroup freezer): no CPU, memory kept, resumes in ms."""
        ...

    async def unpause(self, container_id: str) -> None: ...

    async def claim(self, container_id: str, spec: FunctionSpec, instance_id: str) -> None:
        """Mark a prewarmed container as serving `spec` (so any gateway can find it)."""
        ...

    def watch(self, on_event: Callable[[str, str], None]) -> Callable[[], None]:
        """Report container events (`on_event(id, action)`, action in EVENTS); returns a
        stop function."""
        ...

    async def inspect(self, container_id: str) -> Running | None:
        """One container of this namespace as it is now; None when it is gone."""
        ...

    async def list_managed(self) -> list[Running]:
        """Every running or stopped container this Kapal namespace owns."""
        ...


class ReplicaBackend(Protocol):
    """A backend that runs instances as a replicated service per function version (Docker
    Swarm): a pool sets how many replicas run, the backend starts and stops them (and
    replaces the ones that die), and pools find them through `watch`/`list_managed`."""

    async def set_replicas(self, spec: FunctionSpec, replicas: int) -> None:
        """Run `replicas` instances of `spec` (its service made on first use)."""
        ...

    async def remove_version(self, function: str, version: int) -> None:
        """Stop every instance of one version (SIGTERM: in-flight work drains)."""
        ...
