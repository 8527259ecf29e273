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
    # host:port the instance's runtime server listens on.
    address: str
    function: str
    version: int
    labels: dict[str, str] = field(default_factory=dict)


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

    def watch(self, on_exit: Callable[[str, str], None]) -> Callable[[], None]:
        """Report containers that die (`on_exit(id, "die" | "oom")`); returns a stop function."""
        ...

    async def list_managed(self) -> list[Running]:
        """Every running or stopped container this Kapal namespace owns."""
        ...
