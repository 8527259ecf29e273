"""Invoking a function: a slot on a warm instance, one exchange with it, a record.

Used by the front server for `/fn/...` (the response written through to the client) and
from inside Kapal (`Invoker.call`: queue workers, jobs, schedules; the response buffered).
Never touches the database: pools are in memory and records are batched.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.errors import (
    FunctionNotFound,
    OutOfMemory,
    PayloadTooLarge,
    UpstreamFailed,
    UpstreamTimeout,
)
from gateway.http1 import Request
from gateway.proxy import BufferedResponse, ExchangeSink, exchange, request_head
from gateway.records import InvocationRecord, Recorder
from gateway.settings import Settings
from gateway.upstream import UpstreamLost, Upstreams
from scheduler.pool import Instance, Pool
from scheduler.scheduler import Scheduler

log = logging.getLogger("kapal.gateway.invoke")


@dataclass(frozen=True)
class CallResult:
    status: int
    headers: dict[str, str]
    body: bytes
    request_id: str
    # The cold-start tier that served it ("" when warm).
    cold: str


class Invoker:
    def __init__(
        self,
        settings: Settings,
        scheduler: Scheduler,
        recorder: Recorder,
        upstreams: Upstreams,
        oom_killed: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
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
    ) -> str:
        """Run `req` on an instance of `name`; returns the cold-start tier ("" when warm).

        Raises FunctionNotFound, PayloadTooLarge, scheduler errors (no capacity, start
        failed), UpstreamTimeout (instance replaced) and UpstreamFailed (instance replaced;
        OutOfMemory when it was killed for its memory).
        """
        pool = self.scheduler.pool(name)
        if pool is None:
            raise FunctionNotFound(f"function {name} not found")
        limit = self.settings.max_body_bytes
        if req.content_length is not None and req.content_length > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        wall_start, t0 = time.time(), time.monotonic()
        acquired = await pool.acquire(t0 + self.settings.queue_timeout_s)
        inst = acquired.instance
        timeout = inst.spec.limits.timeout_s
        extra = b"X-Kapal-Request-Id: " + request_id + b"\r\n"
        if acquired.cold:
            extra += b"X-Kapal-Cold-Start: " + acquired.tier.encode() + b"\r\n"
        # The time limit counts from dispatch, not arrival (a cold start may have waited).
        deadline = b"%.3f" % (time.time() + timeout)
        ours = b"x-kapal-request-id: " + request_id + b"\r\nx-kapal-deadline: " + deadline + b"\r\n"
        head = request_head(req, target, peer, ours, strip_key)
        status = 502
        try:
            await exchange(self.upstreams, sink, req, inst.address, head, extra, timeout, limit)
            status = sink.status
            if sink.runtime_timeout:
                # The handler is still running inside (a thread cannot be killed).
                pool.discard(inst, "timeout reported by the runtime")
        except TimeoutError:
            status = 504
            pool.discard(inst, "timeout")
            raise UpstreamTimeout(f"function {name} did not answer within {timeout:g}s") from None
        except PayloadTooLarge:
            status = 413
            raise
        except (UpstreamLost, OSError) as e:
            status = 502
            raise await self._lost(pool, inst, e) from None
        finally:
            pool.release(inst)
            self.recorder.add(
                InvocationRecord(
                    uuid.UUID(request_id.decode()),
                    name,
                    inst.version,
                    req.method.decode(),
                    target.split(b"?", 1)[0][:512].decode("latin-1"),
                    status,
                    acquired.cold,
                    inst.id,
                    datetime.fromtimestamp(wall_start, UTC),
                    (time.monotonic() - t0) * 1000,
                )
            )
        return acquired.tier

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
        request_id: str | None = None,
    ) -> CallResult:
        """Invoke a function from inside Kapal, the response buffered in memory.

        Raises what `invoke` raises.
        """
        if not path_qs.startswith("/"):
            path_qs = "/" + path_qs
        rid = (request_id or os.urandom(16).hex()).encode()
        target = path_qs.encode()
        req = Request.buffered(
            method.upper().encode(),
            target,
            [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
            body,
        )
        sink = BufferedResponse()
        tier = await self.invoke(sink, req, name, target, b"kapal", rid)
        out = {k.decode("latin-1"): v.decode("latin-1") for k, v in sink.headers}
        out["X-Kapal-Request-Id"] = rid.decode()
        return CallResult(sink.status, out, sink.data, rid.decode(), tier)
