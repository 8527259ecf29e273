"""Talking to a container's zygote: fork a worker, stop one, list them.

A container of Kapal's Python runtime runs a zygote (runtimes/python/kapal_runtime/
zygote.py) that has imported the runtime and forks workers on demand: each worker is an
instance of its own (its own slots, its own log port) that answers in milliseconds, where
a new container takes hundreds. Under a burst a pool forks workers in the containers it
has while the engine starts more (pool.py).

The protocol is one line each way over a fresh connection to ZYGOTE_PORT:
`fork` -> {"worker", "port", "log_port", "pid"}, `stop K` -> {"stopped"}, `list` ->
{"workers": [...]}; {"error": why} when refused.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from scheduler.errors import StartFailed
from scheduler.models import FunctionSpec

# The zygote's port in every Python runtime container (KAPAL_ZYGOTE_PORT).
ZYGOTE_PORT = 8079
# Workers a zygote forks at most besides its first (KAPAL_WORKERS_MAX).
WORKERS_MAX = 15
# A command's answer comes at once (a fork is a few ms); a slow one is a broken zygote.
COMMAND_TIMEOUT_S = 2.0
MAX_ANSWER = 64 * 1024


@dataclass(frozen=True)
class ForkedWorker:
    slot: int
    # host:port of its runtime server.
    address: str
    # Its container runs a generic runtime: the worker awaits /_/init like its first did.
    generic: bool = False


class Forks(Protocol):
    """What a pool needs to grow instances inside the containers it has."""

    async def fork(self, address: str) -> ForkedWorker:
        """A new worker in the container whose worker listens at `address` (StartFailed)."""
        ...

    async def stop(self, address: str, slot: int) -> None:
        """Worker `slot` of that container drains and exits."""
        ...

    async def workers(self, address: str) -> list[ForkedWorker]:
        """The forked workers alive in that container."""
        ...

    async def resize(self, container_id: str, spec: FunctionSpec, workers: int) -> None:
        """Set the container's limits to `workers` instances' worth."""
        ...


# (container id, spec, workers): the engine call that sets a container's limits.
Resize = Callable[[str, FunctionSpec, int], Awaitable[None]]


def forkable(spec: FunctionSpec) -> bool:
    """Whether instances of `spec` run in a container with a zygote."""
    return spec.runtime == "python" and not spec.from_image


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0]


async def _command(address: str, line: str) -> dict[str, Any]:
    """Send one command to the zygote of the container at `address` (any of its workers'
    host:port); its answer. OSError, TimeoutError or ValueError when it cannot answer."""

    async def talk() -> bytes:
        reader, writer = await asyncio.open_connection(_host(address), ZYGOTE_PORT)
        try:
            writer.write(line.encode() + b"\n")
            return await reader.readuntil(b"\n")
        finally:
            writer.close()

    raw = await asyncio.wait_for(talk(), COMMAND_TIMEOUT_S)
    answer = json.loads(raw[:MAX_ANSWER])
    if not isinstance(answer, dict):
        raise ValueError(f"the zygote answered {raw[:80]!r}")
    return answer


def _worker(host: str, w: dict[str, Any]) -> ForkedWorker:
    return ForkedWorker(int(w["worker"]), f"{host}:{int(w['port'])}", bool(w.get("prewarm")))


class Zygotes:
    """Forks through each container's zygote; limits through the engine."""

    def __init__(self, resize: Resize) -> None:
        self._resize = resize

    async def fork(self, address: str) -> ForkedWorker:
        try:
            answer = await _command(address, "fork")
            if "error" in answer:
                raise StartFailed(f"no worker forked: {answer['error']}")
            return _worker(_host(address), answer)
        except (OSError, TimeoutError, ValueError, KeyError, TypeError) as e:
            raise StartFailed(f"no worker forked: {type(e).__name__}: {e}") from e

    async def stop(self, address: str, slot: int) -> None:
        answer = await _command(address, f"stop {slot}")
        if "error" in answer:
            raise ValueError(str(answer["error"]))

    async def workers(self, address: str) -> list[ForkedWorker]:
        answer = await _command(address, "list")
        host = _host(address)
        return [_worker(host, w) for w in answer.get("workers", []) if int(w["worker"]) > 0]

    async def resize(self, container_id: str, spec: FunctionSpec, workers: int) -> None:
        await self._resize(container_id, spec, workers)
