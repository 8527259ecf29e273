"""Prewarmed generic runtime containers ("stem cells"), specialized on a cold start.

A few containers of each runtime's base image run in prewarm mode, healthy and waiting.
A function's cold start claims one and sends its code in the `/_/init` request itself
(as OpenWhisk does), skipping container create and start. Refilled in the background, to
a count that follows the runtime's recent cold starts (`prewarm_size`). Each function's
`/_/init` body is built ahead (`prefetch`, when its version is deployed), so a cold start
does not wait for the function store.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from typing import Protocol

from scheduler import probe
from scheduler.backend import ContainerBackend, Running
from scheduler.errors import StartFailed
from scheduler.models import PREWARM_NAME, FunctionSpec, Limits, Network
from scheduler.pool import new_instance_id
from scheduler.prewarm_size import WINDOW_S, PrewarmSize, wanted

log = logging.getLogger("kapal.scheduler.prewarm")

# After a failed start, wait this long before trying to refill again.
BACKOFF_S = 30.0
# The /_/init bodies kept ready, the least recently used dropped first; a larger one is
# built on each cold start.
INIT_BODIES_BYTES = 32 * 1024 * 1024
INIT_BODY_MAX_BYTES = 1024 * 1024


class CodeSource(Protocol):
    async def code(self, name: str, version: int) -> bytes:
        """The function version's code folder as a .tar.gz."""
        ...


def can_specialize(spec: FunctionSpec) -> bool:
    """Whether a generic container is what this function's own container would be.

    Prewarmed containers run with default limits, on the outbound network, with no
    dependencies and no secrets mounted: anything else needs a container of its own.
    """
    return (
        not spec.has_dependencies
        and not spec.secrets
        and spec.network == Network()
        and spec.limits.model_dump(exclude={"rps"}) == Limits().model_dump(exclude={"rps"})
    )


class PrewarmPool:
    def __init__(
        self,
        backend: ContainerBackend,
        images: dict[str, str],
        sizes: dict[str, int],
        code: CodeSource,
        start_timeout_s: float = 30.0,
        cap: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        # Base image per runtime, for the runtimes that keep prewarmed containers.
        self.images = {runtime: image for runtime, image in images.items() if sizes.get(runtime)}
        # Containers kept ready per runtime: at least its own count, more after cold starts
        # (up to `cap`).
        self.sizes = {r: PrewarmSize(sizes[r], cap) for r in self.images}
        self.clock = clock
        # When each recent cold start of a function this runtime could serve happened.
        self.cold_starts: dict[str, deque[float]] = {r: deque() for r in self.images}
        self.code = code
        self.start_timeout_s = start_timeout_s
        self.ready: dict[str, deque[Running]] = {r: deque() for r in self.images}
        self.starting: dict[str, int] = dict.fromkeys(self.images, 0)
        self._backoff_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        # /_/init bodies by (function, version), most recently used last.
        self._bodies: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        # Functions deleted (`forget_code`), counted: a deleted function's numbers are
        # used again, and a body fetched before the deletion must not be kept after it.
        self._deletions: dict[str, int] = {}

    def claim(self, spec: FunctionSpec) -> Running | None:
        ready = self.ready.get(spec.runtime)
        if ready is None or not can_specialize(spec):
            return None
        # A cold start this runtime's prewarmed containers serve, whether one is left or
        # not: the next burst finds as many ready.
        starts = self.cold_starts[spec.runtime]
        now = self.clock()
        starts.append(now)
        while starts[0] <= now - WINDOW_S:
            starts.popleft()
        if not ready:
            return None
        # Refilled by the scaling loop once no instance is starting: during a burst the
        # engine's time goes to the instances that requests wait for.
        return ready.popleft()

    def prefetch(self, spec: FunctionSpec) -> None:
        """Build `spec`'s /_/init body in the background, if a prewarmed container could
        serve it (a store query less on its first cold start)."""
        if self.closed or spec.runtime not in self.images or not can_specialize(spec):
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # loaded before the loop runs: the cold start fetches it
            return
        if (spec.name, spec.version) not in self._bodies:
            self._spawn(self._prefetch(spec))

    async def _prefetch(self, spec: FunctionSpec) -> None:
        try:
            await self._init_body(spec)
        except Exception as e:  # the cold start fetches it again, and says why
            log.debug("init body not prefetched", extra={"function": spec.name, "error": str(e)})

    async def _init_body(self, spec: FunctionSpec) -> bytes:
        key = (spec.name, spec.version)
        body = self._bodies.get(key)
        if body is not None:
            self._bodies.move_to_end(key)
            return body
        deletions = self._deletions.get(spec.name, 0)
        code = await self.code.code(spec.name, spec.version)
        body = json.dumps(
            {
                "function": spec.name,
                "version": spec.version,
                "handler": spec.handler,
                "style": spec.style,  # null: the runtime detects it
                "env": spec.env,
                "concurrency": spec.scaling.concurrency,
                "code": base64.b64encode(code).decode(),
            }
        ).encode()
        if len(body) <= INIT_BODY_MAX_BYTES and deletions == self._deletions.get(spec.name, 0):
            self._bodies[key] = body
            while sum(map(len, self._bodies.values())) > INIT_BODIES_BYTES:
                self._bodies.popitem(last=False)
        return body

    def forget_code(self, function: str) -> None:
        """A function was deleted: its version numbers start again at 1, with other code."""
        self._deletions[function] = self._deletions.get(function, 0) + 1
        for key in [k for k in self._bodies if k[0] == function]:
            del self._bodies[key]

    async def specialize(self, running: Running, spec: FunctionSpec) -> None:
        body = await self._init_body(spec)
        try:
            status, answer = await asyncio.wait_for(
                probe.post_json(running.address, "/_/init", body), self.start_timeout_s
            )
        except (OSError, TimeoutError, IndexError, ValueError) as e:
            raise StartFailed(f"specializing a prewarmed container failed: {e}") from e
        if status != 200:
            raise StartFailed(f"handler failed to load: {probe.error_message(answer)}")

    def adopt(self, running: Running, runtime: str) -> None:
        """A healthy generic container another (or an earlier) gateway started."""
        if runtime in self.ready and all(r.id != running.id for r in self.ready[runtime]):
            self.ready[runtime].append(running)

    def forget(self, container_id: str) -> None:
        """A container that is gone, or that another gateway specialized."""
        for q in self.ready.values():
            for r in list(q):
                if r.id == container_id:
                    q.remove(r)

    def wanted(self, runtime: str) -> int:
        """Containers of `runtime` to keep ready now."""
        return wanted(self.clock(), self.cold_starts[runtime], self.sizes[runtime])

    def refill(self) -> None:
        """Start what is missing, and remove what the runtime no longer needs (the
        oldest first)."""
        if self.closed or self.clock() < self._backoff_until:
            return
        for runtime in self.images:
            target = self.wanted(runtime)
            ready = self.ready[runtime]
            while len(ready) > target:
                self._spawn(self.backend.remove(ready.popleft().id))
            while len(ready) + self.starting[runtime] < target:
                self.starting[runtime] += 1
                self._spawn(self._start_one(runtime))

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_one(self, runtime: str) -> None:
        spec = FunctionSpec(
            name=PREWARM_NAME,
            version=0,
            runtime=runtime,
            image=self.images[runtime],
            env={"KAPAL_PREWARM": "1"},
        )
        running: Running | None = None
        try:
            running = await self.backend.start(spec, new_instance_id())
            await probe.wait_ready(running.address, time.monotonic() + self.start_timeout_s)
        except Exception as e:
            log.warning("prewarm start failed", extra={"runtime": runtime, "error": str(e)})
            self._backoff_until = self.clock() + BACKOFF_S
            if running is not None:
                await self.backend.remove(running.id)
            return
        finally:
            self.starting[runtime] -= 1
        if self.closed:
            await self.backend.remove(running.id)
            return
        self.ready[runtime].append(running)

    async def close(self, *, remove: bool = True) -> None:
        """Stop refilling; with `remove`, remove the ready containers (else they are left
        for the gateway that leads next)."""
        self.closed = True
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        leftovers = [r for q in self.ready.values() for r in q]
        for q in self.ready.values():
            q.clear()
        if remove:
            await asyncio.gather(*(self.backend.remove(r.id) for r in leftovers))
