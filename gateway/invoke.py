"""Invoking a function: a slot on a warm instance, one exchange with it, a record.

Used by the front server for `/fn/...` (the response written through to the client) and
from inside Kapal (`Invoker.call`: queue workers, jobs, schedules; the response buffered).
Never touches the database: pools are in memory and records are batched.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from gateway.errors import (
    FunctionNotFound,
    OutOfMemory,
    PayloadTooLarge,
    UpstreamFailed,
    UpstreamTimeout,
)
from gateway.metrics import Metrics
from gateway.proxy import BufferedResponse, ExchangeSink, Unreachable, exchange, request_head
from gateway.records import InvocationRecord, Recorder
from gateway.request import Request
from gateway.settings import Settings
from gateway.upstream import InstanceBusy, UpstreamLost, Upstreams
from scheduler.errors import NoCapacity, Rerouted
from scheduler.pool import Acquired, Instance, Pool
from scheduler.scheduler import Scheduler

log = logging.getLogger("kapal.gateway.invoke")

# Request ids: 64 random bits drawn once per process, then a counter (32 hex digits, a
# valid uuid). Unique across gateways without a getrandom() call per request.
_ID_PREFIX = os.urandom(8).hex().encode()
_ID_COUNTER = itertools.count()


def new_request_id() -> bytes:
    return b"%s%016x" % (_ID_PREFIX, next(_ID_COUNTER))


@dataclass(frozen=True)
class CallResult:
    status: int
    headers: dict[str, str]
    body: bytes
    request_id: str
    # The cold-start tier that served it ("" when warm).
    cold: str
    # The version that served it (also in the X-Kapal-Version header).
    version: int


class Invoker:
    def __init__(
        self,
        settings: Settings,
        scheduler: Scheduler,
        recorder: Recorder,
        upstreams: Upstreams,
        oom_killed: Callable[[str], Awaitable[bool]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        # Where rejections are counted (`GET /metrics`).
        self.metrics = metrics or Metrics()
        # Asks the backend whether a container was killed for using too much memory.
        self.oom_killed = oom_killed
        self.settings = settings
        self.scheduler = scheduler
        self.recorder = recorder
        self.upstreams = upstreams

    async def invoke(
        self,
        sink: ExchangeSink,
        req: Request,
        name: str,
        target: bytes,
        peer: bytes,
        request_id: bytes,
        strip_key: bool = False,
        trigger: str = "http",
        parent: bytes = b"",
    ) -> Acquired:
        """Run `req` on an instance of `name`, of the version the traffic split draws;
        returns the slot it had (its instance, whether and how it started cold).

        Raises FunctionNotFound, PayloadTooLarge, scheduler errors (no capacity, start
        failed), UpstreamTimeout (instance replaced) and UpstreamFailed (instance replaced;
        OutOfMemory when it was killed for its memory).
        """
        pool = self.scheduler.pick(name)
        if pool is None:
            raise FunctionNotFound(f"function {name} not found")
        limit = self.settings.max_body_bytes
        if req.content_length is not None and req.content_length > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        wall_start, t0 = time.time(), time.monotonic()
        wait_until = t0 + self.settings.queue_timeout_s
        while True:
            try:
                acquired = await pool.acquire(wait_until)
            except NoCapacity as e:
                self.metrics.rejections[(name, e.reason)] += 1
                raise
            except Rerouted:
                # Its version left the split while this request waited: draw again.
                rerouted = self.scheduler.pick(name)
                if rerouted is None:
                    raise FunctionNotFound(f"function {name} not found") from None
                pool = rerouted
                continue
            inst = acquired.instance
            try:
                status = await self._exchange(
                    sink, req, name, target, peer, request_id, strip_key, pool, acquired
                )
            except InstanceBusy:
                # Its slots are taken by other gateways: another instance, or a wait.
                pool.release(inst)
                pool.busy(inst)
                if not req.replayable or time.monotonic() >= wait_until:
                    self.metrics.rejections[(name, "busy")] += 1
                    raise NoCapacity(
                        f"every instance of {name} is busy", retry_after_s=1.0, reason="busy"
                    ) from None
                continue
            except Unreachable as e:
                # Dropped from routing already; nothing was sent, so another may take it.
                pool.release(inst)
                if req.replayable and time.monotonic() < wait_until:
                    continue
                failed = UpstreamFailed(f"instance of {name} could not be reached ({e})")
                self._record(
                    req, target, request_id, inst, 502, acquired, wall_start, t0, trigger, parent
                )
                raise failed from None
            except BaseException as e:
                status = getattr(e, "status", 502)
                pool.release(inst)
                if not isinstance(status, int):
                    status = 502
                self._record(
                    req, target, request_id, inst, status, acquired, wall_start, t0, trigger, parent
                )
                raise
            pool.release(inst)
            self._record(
                req, target, request_id, inst, status, acquired, wall_start, t0, trigger, parent
            )
            return acquired

    async def _exchange(
        self,
        sink: ExchangeSink,
        req: Request,
        name: str,
        target: bytes,
        peer: bytes,
        request_id: bytes,
        strip_key: bool,
        pool: Pool,
        acquired: Acquired,
    ) -> int:
        """One exchange with the acquired instance; its status. Raises as `invoke`."""
        inst = acquired.instance
        limit = self.settings.max_body_bytes
        timeout = inst.spec.limits.timeout_s
        extra = b"X-Kapal-Request-Id: %b\r\nX-Kapal-Version: %d\r\n" % (request_id, inst.version)
        if acquired.cold:
            extra += b"X-Kapal-Cold-Start: " + acquired.tier.encode() + b"\r\n"
        # The time limit counts from dispatch, not arrival (a cold start may have waited).
        deadline = b"%.3f" % (time.time() + timeout)
        ours = b"x-kapal-request-id: " + request_id + b"\r\nx-kapal-deadline: " + deadline + b"\r\n"
        head = request_head(req, target, peer, ours, strip_key)
        try:
            await exchange(self.upstreams, sink, req, inst.address, head, extra, timeout, limit)
        except Unreachable as e:
            pool.discard(inst, f"unreachable: {e}")
            raise
        except TimeoutError:
            pool.discard(inst, "timeout")
            raise UpstreamTimeout(f"function {name} did not answer within {timeout:g}s") from None
        except (UpstreamLost, OSError) as e:
            raise await self._lost(pool, inst, e) from None
        if sink.runtime_timeout:
            # The handler is still running inside (a thread cannot be killed).
            pool.discard(inst, "timeout reported by the runtime")
        return sink.status

    def _record(
        self,
        req: Request,
        target: bytes,
        request_id: bytes,
        inst: Instance,
        status: int,
        acquired: Acquired,
        wall_start: float,
        t0: float,
        trigger: str,
        parent: bytes,
    ) -> None:
        self.recorder.add(
            InvocationRecord(
                request_id,
                inst.spec.name,
                inst.version,
                trigger,
                req.method,
                target,
                status,
                acquired.tier,
                inst.id,
                wall_start,
                (time.monotonic() - t0) * 1000,
                acquired.waited_s * 1000,
                acquired.init_s * 1000,
                parent,
            )
        )

    async def _lost(self, pool: Pool, inst: Instance, e: Exception) -> UpstreamFailed:
        """The error for an instance that failed mid-request; it is replaced."""
        name = inst.spec.name
        oom = inst.exit_reason == "out of memory"
        if not oom and self.oom_killed is not None and inst.container_id:
            try:  # before the discard removes the container and its state with it
                oom = await self.oom_killed(inst.container_id)
            except Exception as why:
                log.warning("instance not inspected", extra={"function": name, "error": str(why)})
        pool.discard(inst, "out of memory" if oom else f"request failed: {e}")
        if oom:
            return OutOfMemory(
                f"function {name} ran out of memory (limit {inst.spec.limits.memory_mb} MiB)"
                " and was killed; the instance has been replaced"
            )
        return UpstreamFailed(
            f"instance of {name} failed during the request ({inst.exit_reason or e});"
            " it has been replaced"
        )

    async def call(
        self,
        name: str,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        trigger: str = "async",
        parent: bytes = b"",
    ) -> CallResult:
        """Invoke a function from inside Kapal, the response buffered in memory.

        Raises what `invoke` raises.
        """
        if not path_qs.startswith("/"):
            path_qs = "/" + path_qs
        rid = new_request_id()
        target = path_qs.encode()
        req = Request.buffered(
            method.upper().encode(),
            target,
            [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
            body,
        )
        sink = BufferedResponse()
        acquired = await self.invoke(
            sink, req, name, target, b"kapal", rid, trigger=trigger, parent=parent
        )
        version = acquired.instance.version
        out = {k.decode("latin-1"): v.decode("latin-1") for k, v in sink.headers}
        out["X-Kapal-Request-Id"] = rid.decode()
        out["X-Kapal-Version"] = str(version)
        return CallResult(sink.status, out, sink.data, rid.decode(), acquired.tier, version)
