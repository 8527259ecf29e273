"""One request/response exchange with an upstream (an instance, or the management app).

The request goes out on a pooled kept-alive connection; the response is written through
to a sink: the client's connection (`http1.ClientConnection`) or a `BufferedResponse`.
An upgrade (a websocket) is one exchange too: after the instance's 101 it lasts until
either side closes, within the function's time limit plus a grace.
"""

from __future__ import annotations

import asyncio
import re
from typing import Protocol

from gateway.errors import PayloadTooLarge
from gateway.request import Request
from gateway.upstream import (
    HOP_BY_HOP,
    InstanceBusy,
    Sink,
    UpstreamConnection,
    UpstreamLost,
    Upstreams,
)

KEY_RE = re.compile(rb"^kpl_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$")
OURS = frozenset((b"x-kapal-request-id", b"x-kapal-deadline", b"x-forwarded-for"))
# A tunnel outlives the runtime's own deadline by this much: the runtime closes it first
# (1001), and the instance is not taken for one that stopped answering.
UPGRADE_GRACE_S = 5.0
# An instance that does not take a connection within this is taken as gone: the kernel of
# a live one accepts at once, a task on a node that died answers nothing at all.
CONNECT_TIMEOUT_S = 2.0


class Unreachable(Exception):
    """No connection to the instance could be made: nothing of the request was sent."""


class ExchangeSink(Sink, Protocol):
    upstream: UpstreamConnection | None
    response_started: bool
    status: int
    runtime_timeout: bool

    def prepare(self, upstream: UpstreamConnection, extra_head: bytes, head_only: bool) -> None: ...


class BufferedResponse:
    """A whole response in memory (invocations made inside Kapal)."""

    def __init__(self) -> None:
        self.upstream: UpstreamConnection | None = None
        self.response_started = False
        self.status = 0
        self.runtime_timeout = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []

    def prepare(self, upstream: UpstreamConnection, extra_head: bytes, head_only: bool) -> None:
        self.upstream = upstream
        self.chunks.clear()

    def start(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], has_length: bool
    ) -> None:
        self.status, self.response_started = status, True
        self.headers = [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP]
        self.runtime_timeout = status == 504 and any(
            n.lower() == b"x-kapal-error" and v == b"timeout" for n, v in headers
        )

    def body(self, data: bytes) -> None:
        self.chunks.append(data)

    def end(self) -> None:
        self.upstream = None

    def flush(self) -> None:
        pass

    # Requests made inside Kapal never ask for an upgrade.
    def upgraded(self, up: UpstreamConnection) -> None:
        raise AssertionError("a buffered response is never upgraded")

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def _is_kapal_key(value: bytes) -> bool:
    scheme, _, token = value.partition(b" ")
    return scheme.lower() == b"bearer" and KEY_RE.match(token.strip()) is not None


def request_head(
    req: Request, target: bytes, peer: bytes, ours: bytes, strip_key: bool = False
) -> bytes:
    """The request line and headers to send upstream: hop-by-hop dropped, ours added.

    With `strip_key`, the caller's Kapal API key is dropped: it is for Kapal, and a
    function's code never sees it (other Authorization values pass through).
    """
    out = [req.method, b" ", target, b" HTTP/1.1\r\n"]
    forwarded = b""
    host = False
    for name, value in req.headers:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in OURS:
            if lname == b"x-forwarded-for":
                forwarded = value + b", "
            continue
        host = host or lname == b"host"
        if strip_key and lname == b"authorization" and _is_kapal_key(value):
            continue
        out.append(name + b": " + value + b"\r\n")
    if not host:  # HTTP/1.0 clients and calls made inside Kapal; 1.1 requires one
        out.append(b"host: kapal\r\n")
    out.append(b"x-forwarded-for: " + forwarded + peer + b"\r\n")
    out.append(ours)
    if req.upgrade:
        out.append(b"connection: upgrade\r\nupgrade: " + req.upgrade + b"\r\n")
    if req.chunked:
        out.append(b"transfer-encoding: chunked\r\n")
    elif req.content_length is not None:
        out.append(b"content-length: %d\r\n" % req.content_length)
    out.append(b"\r\n")
    return b"".join(out)


async def exchange(
    upstreams: Upstreams,
    sink: ExchangeSink,
    req: Request,
    address: str,
    head: bytes,
    extra: bytes,
    timeout_s: float,
    max_body: int,
) -> None:
    """Send `req` to `address` and write the answer through to `sink`.

    Raises TimeoutError past `timeout_s`, UpstreamLost or OSError when the upstream fails.
    """
    loop = upstreams.loop
    upgrade = bool(req.upgrade)
    deadline = loop.time() + timeout_s + (UPGRADE_GRACE_S if upgrade else 0.0)
    head_only = req.method == b"HEAD"
    # A small body that has fully arrived goes out with the head in one write, and the
    # exchange may be retried on a fresh connection when a kept-alive one was stale.
    whole = req.replayable
    payload = head + b"".join(req.body.chunks) if whole else head
    up = upstreams.take(address)
    reused = up is not None
    try:
        while True:
            if up is None:
                up = await _connect(upstreams, address, deadline)
            sink.prepare(up, extra, head_only)
            done = up.begin(sink, head_only, upgrade)
            upstreams.watch(done, deadline)
            try:
                up.write(payload)
                if not whole:
                    async with asyncio.timeout_at(deadline):
                        await _send_body(req, up, max_body)
                await done
                break
            except UpstreamLost as e:
                if not (reused and whole and not e.response_started):
                    raise
                up, reused = None, False
            finally:
                upstreams.unwatch(done)
    except InstanceBusy:
        # The answer was complete: the connection is good for the next exchange.
        sink.upstream = None
        if up is not None:
            upstreams.put(up)
        raise
    except BaseException:
        if sink.upstream is not None:
            sink.upstream.abort()
        sink.upstream = None
        raise
    upstreams.put(up)


async def _connect(upstreams: Upstreams, address: str, deadline: float) -> UpstreamConnection:
    loop = upstreams.loop
    try:
        async with asyncio.timeout_at(min(deadline, loop.time() + CONNECT_TIMEOUT_S)):
            return await upstreams.connect(address)
    except (OSError, TimeoutError) as e:
        if loop.time() >= deadline:
            raise TimeoutError() from e
        raise Unreachable(f"{address}: {e or 'no answer'}") from e


async def _send_body(req: Request, up: UpstreamConnection, limit: int) -> None:
    if not req.has_body:
        return
    sent = 0
    while (chunk := await req.body.next()) is not None:
        sent += len(chunk)
        if sent > limit:  # the caller's fault, not the instance's
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        up.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if req.chunked else chunk)
        await up.drain()
    if req.chunked:
        up.write(b"0\r\n\r\n")
