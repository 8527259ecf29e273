"""The front door: a raw HTTP/1.1 server (asyncio + httptools) on the public port.

`/fn/...` invocations are proxied here, straight to a warm instance's kept-alive
connection, with the response written through from parser callbacks. Everything else
(the management API) is forwarded to the aiohttp application on a unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from http import HTTPStatus
from typing import cast

import httptools

from gateway.errors import from_scheduler
from gateway.records import InvocationRecord, Recorder
from gateway.settings import Settings
from gateway.upstream import UpstreamConnection, UpstreamLost, Upstreams
from scheduler.errors import SchedulerError
from scheduler.pool import Pool
from scheduler.scheduler import Scheduler

log = logging.getLogger("kapal.gateway.front")

MAX_URL = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 200
# A body buffered past this pauses reading from the client until it is forwarded.
BODY_HIGH_WATER = 1 << 20
MANAGEMENT_TIMEOUT_S = 3600.0
HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"content-length",
    )
)
OURS = frozenset((b"x-kapal-request-id", b"x-kapal-deadline", b"x-forwarded-for"))
NO_BODY_STATUS = frozenset((204, 304))


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


class TooLarge(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Body:
    """A request body as it arrives from the client."""

    __slots__ = ("chunks", "complete", "conn", "discard", "kept", "size", "waiter")

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.chunks: deque[bytes] = deque()
        self.kept: list[bytes] = []
        self.size = 0
        self.complete = False
        self.discard = False
        self.waiter: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> None:
        if self.discard:
            return
        self.chunks.append(data)
        self.size += len(data)
        if self.size > BODY_HIGH_WATER:
            self.conn.pause_reading()
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def next(self) -> bytes | None:
        """The next chunk, or None at the end; resumes reading when the buffer drains."""
        while not self.chunks:
            if self.complete or self.conn.gone:
                return None
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        chunk = self.chunks.popleft()
        self.size -= len(chunk)
        if self.size <= BODY_HIGH_WATER:
            self.conn.resume_reading()
        return chunk


class Request:
    __slots__ = (
        "body",
        "chunked",
        "content_length",
        "expect_continue",
        "header_bytes",
        "headers",
        "keep_alive",
        "method",
        "url",
    )

    def __init__(self, conn: ClientConnection) -> None:
        self.url = b""
        self.method = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.keep_alive = True
        self.chunked = False
        self.content_length: int | None = None
        self.expect_continue = False
        self.body = Body(conn)

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order, one at a time."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b""
        self.queue: deque[Request] = deque()
        self.current: Request | None = None
        self.gone = False
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._task: asyncio.Task[None] | None = None
        # The exchange in flight (one at a time).
        self.upstream: UpstreamConnection | None = None
        self.response_started = False
        self._chunked_out = False
        self._extra_head = b""
        self._out: list[bytes] = []
        self._keep_alive = True
        self._head_only = False
        self.status = 0

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if isinstance(peer, tuple) else b""
        self.front.connections.add(self)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(501, "not_implemented", "protocol upgrades are not supported")
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, TooLarge):
                code = {431: "headers_too_large", 414: "url_too_long"}.get(
                    cause.status, "too_large"
                )
                self._refuse(cause.status, code, str(cause))
            else:
                self._refuse(400, "bad_request", "malformed HTTP request")
        except httptools.HttpParserError as e:
            self._refuse(400, "bad_request", f"malformed HTTP request: {e}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self.front.connections.discard(self)
        self._wake()
        if self.current is not None:
            self.current.body._wake()
        for req in self.queue:
            req.body._wake()

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.gone:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.gone:
            self._reading_paused = False
            self.transport.resume_reading()

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.current = Request(self)

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.url += url
        if len(self.current.url) > MAX_URL:
            raise TooLarge(414, f"request URL is longer than {MAX_URL} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.current
        assert req is not None
        req.header_bytes += len(name) + len(value)
        if req.header_bytes > MAX_HEADER_BYTES or len(req.headers) >= MAX_HEADERS:
            raise TooLarge(
                431, f"request headers exceed {MAX_HEADER_BYTES} bytes or {MAX_HEADERS} fields"
            )
        req.headers.append((name, value))

    def on_headers_complete(self) -> None:
        req = self.current
        assert req is not None
        req.method = self.parser.get_method()
        req.keep_alive = self.parser.should_keep_alive()
        for name, value in req.headers:
            lname = name.lower()
            if lname == b"content-length":
                req.content_length = int(value)
            elif lname == b"transfer-encoding":
                req.chunked = b"chunked" in value.lower()
            elif lname == b"expect":
                req.expect_continue = value.lower() == b"100-continue"
        self.queue.append(req)
        if len(self.queue) > 8:  # pipelining far ahead: wait for answers first
            self.pause_reading()
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.current is not None:
            self.current.body.feed(body)

    def on_message_complete(self) -> None:
        if self.current is not None:
            self.current.body.finish()
            self.current = None

    # -- answering ---------------------------------------------------------------------

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _serve(self) -> None:
        try:
            while not self.gone:
                if not self.queue:
                    self._waiter = asyncio.get_running_loop().create_future()
                    await self._waiter
                    continue
                req = self.queue.popleft()
                if len(self.queue) <= 8:
                    self.resume_reading()
                self.response_started = False
                self._keep_alive = req.keep_alive and not self.front.closing
                if req.expect_continue and not req.body.complete:
                    self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await self.front.handle(self, req)
                if not req.body.complete:
                    # Answered before the body was read (an error): the rest is unread.
                    self._keep_alive = False
                if not self._keep_alive:
                    self.close()
                    return
        except Exception:
            log.exception("connection failed")
            self.close()

    def write(self, data: bytes) -> None:
        if not self.gone and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.gone:
            self.transport.close()
        self.gone = True

    def _refuse(self, status: int, code: str, message: str) -> None:
        """A request that cannot even be parsed: answer (if nothing is in flight) and close."""
        if not self.response_started and self.upstream is None and not self.queue:
            self._keep_alive = False
            self.error(status, code, message)
        self.close()

    def error(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        request_id: bytes = b"",
    ) -> None:
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        head = [
            b"HTTP/1.1 %d %s\r\n" % (status, _reason(status)),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
        ]
        if request_id:
            head.append(b"x-kapal-request-id: " + request_id + b"\r\n")
        for k, v in (headers or {}).items():
            head.append(f"{k}: {v}\r\n".encode())
        if not self._keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        self.status = status
        self.response_started = True
        self.write(b"".join(head) + body)

    # -- Sink: the upstream's response, written through --------------------------------

    def prepare(self, upstream: UpstreamConnection, extra_head: bytes, head_only: bool) -> None:
        self.upstream = upstream
        self._extra_head = extra_head
        self._head_only = head_only

    def start(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], has_length: bool
    ) -> None:
        out = [b"HTTP/1.1 %d %s\r\n" % (status, reason or _reason(status))]
        for name, value in headers:
            lname = name.lower()
            if lname in HOP_BY_HOP and lname != b"content-length":
                continue
            out.append(name + b": " + value + b"\r\n")
        out.append(self._extra_head)
        self._chunked_out = not has_length and not self._head_only and status not in NO_BODY_STATUS
        if self._chunked_out:
            out.append(b"transfer-encoding: chunked\r\n")
        if not self._keep_alive:
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        self.status = status
        self.response_started = True
        self._out.append(b"".join(out))

    def body(self, data: bytes) -> None:
        if self._chunked_out:
            self._out.append(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._out.append(data)

    def end(self) -> None:
        if self._chunked_out:
            self._out.append(b"0\r\n\r\n")
        self.upstream = None

    def flush(self) -> None:
        if self._out:
            self.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
            self._out.clear()


def _expire(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_exception(TimeoutError())


def _split_fn_url(url: bytes) -> tuple[str, bytes]:
    """b"/fn/name/rest?q" -> ("name", b"/rest?q"); the rest is "/" when empty."""
    rest = url[4:]
    cut = len(rest)
    for sep in (b"/", b"?"):
        i = rest.find(sep)
        if i != -1 and i < cut:
            cut = i
    name, sub = rest[:cut], rest[cut:]
    if not sub or sub[:1] == b"?":
        sub = b"/" + sub
    return name.decode("latin-1"), sub


class Front:
    def __init__(
        self,
        settings: Settings,
        scheduler: Scheduler,
        recorder: Recorder,
        management_address: str,
    ) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.recorder = recorder
        self.management_address = management_address
        self.upstreams = Upstreams()
        self.connections: set[ClientConnection] = set()
        self.closing = False
        self.in_flight = 0
        self._idle: asyncio.Event | None = None

    async def handle(self, conn: ClientConnection, req: Request) -> None:
        self.in_flight += 1
        try:
            if req.url.startswith(b"/fn/"):
                await self.invoke(conn, req)
            else:
                await self.forward(conn, req)
        finally:
            self.in_flight -= 1
            if not self.in_flight and self._idle is not None:
                self._idle.set()

    # -- requests to the management app ---------------------------------------------------

    async def forward(self, conn: ClientConnection, req: Request) -> None:
        head = self._request_head(req, req.url, conn.peer, b"")
        try:
            await self._exchange(
                conn, req, self.management_address, head, b"", MANAGEMENT_TIMEOUT_S
            )
        except (UpstreamLost, OSError, TimeoutError) as e:
            log.warning("management request failed", extra={"error": str(e)})
            if conn.response_started:
                conn.close()
            else:
                conn.error(502, "internal", "management API unavailable")

    # -- invocations -------------------------------------------------------------------

    async def invoke(self, conn: ClientConnection, req: Request) -> None:
        name, sub = _split_fn_url(req.url)
        request_id = os.urandom(16).hex().encode()
        pool = self.scheduler.pool(name)
        if pool is None:
            req.body.discard = True
            conn.error(
                404, "function_not_found", f"function {name} not found", request_id=request_id
            )
            return
        limit = self.settings.max_body_bytes
        if req.content_length is not None and req.content_length > limit:
            req.body.discard = True
            conn.error(
                413,
                "payload_too_large",
                f"request body is larger than {limit} bytes",
                request_id=request_id,
            )
            return
        wall_start, t0 = time.time(), time.monotonic()
        try:
            acquired = await pool.acquire(t0 + self.settings.queue_timeout_s)
        except SchedulerError as e:
            req.body.discard = True
            err = from_scheduler(e)
            conn.error(err.status, err.code, err.message, err.headers, request_id)
            return
        inst = acquired.instance
        timeout = inst.spec.limits.timeout_s
        extra = b"x-kapal-request-id: " + request_id + b"\r\n"
        if acquired.cold:
            extra += b"x-kapal-cold-start: " + acquired.tier.encode() + b"\r\n"
        ours = (
            b"x-kapal-request-id: "
            + request_id
            + b"\r\nx-kapal-deadline: "
            + b"%.3f" % (wall_start + timeout)
            + b"\r\n"
        )
        head = self._request_head(req, sub, conn.peer, ours)
        status = 502
        try:
            await self._exchange(conn, req, inst.address, head, extra, timeout)
            status = conn.status
        except TimeoutError:
            status = 504
            self._fail(
                conn,
                pool,
                inst.id,
                504,
                "timeout",
                f"function {name} did not answer within {timeout:g}s",
                request_id,
            )
            pool.discard(inst, "timeout")
        except (UpstreamLost, OSError) as e:
            status = 502
            self._fail(
                conn,
                pool,
                inst.id,
                502,
                "instance_failed",
                f"instance of {name} failed during the request ({e}); it has been replaced",
                request_id,
            )
            pool.discard(inst, f"request failed: {e}")
        finally:
            pool.release(inst)
            self.recorder.add(
                InvocationRecord(
                    uuid.UUID(bytes=bytes.fromhex(request_id.decode())),
                    name,
                    inst.version,
                    req.method.decode(),
                    sub.split(b"?", 1)[0][:512].decode("latin-1"),
                    status,
                    acquired.cold,
                    inst.id,
                    datetime.fromtimestamp(wall_start, UTC),
                    (time.monotonic() - t0) * 1000,
                )
            )

    def _fail(
        self,
        conn: ClientConnection,
        pool: Pool,
        instance: str,
        status: int,
        code: str,
        message: str,
        request_id: bytes,
    ) -> None:
        conn.upstream = None
        if conn.response_started:
            conn.close()  # part of a response went out: the client sees it cut short
        else:
            conn.error(status, code, message, request_id=request_id)

    def _request_head(self, req: Request, target: bytes, peer: bytes, ours: bytes) -> bytes:
        out = [req.method, b" ", target, b" HTTP/1.1\r\n"]
        forwarded = b""
        for name, value in req.headers:
            lname = name.lower()
            if lname in HOP_BY_HOP or lname in OURS:
                if lname == b"x-forwarded-for":
                    forwarded = value + b", "
                continue
            out.append(name + b": " + value + b"\r\n")
        out.append(b"x-forwarded-for: " + forwarded + peer + b"\r\n")
        out.append(ours)
        if req.chunked:
            out.append(b"transfer-encoding: chunked\r\n")
        elif req.content_length is not None:
            out.append(b"content-length: %d\r\n" % req.content_length)
        out.append(b"\r\n")
        return b"".join(out)

    async def _exchange(
        self,
        conn: ClientConnection,
        req: Request,
        address: str,
        head: bytes,
        extra: bytes,
        timeout_s: float,
    ) -> None:
        """Send `req` to `address` and write the answer through to `conn`.

        Raises TimeoutError past `timeout_s`, UpstreamLost or OSError when the instance fails.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        head_only = req.method == b"HEAD"
        # A small body that has fully arrived goes out with the head in one write, and the
        # exchange may be retried on a fresh connection when a kept-alive one was stale.
        whole = req.body.complete and not req.chunked and req.body.size <= BODY_HIGH_WATER
        payload = head + b"".join(req.body.chunks) if whole else head
        up = self.upstreams.take(address)
        reused = up is not None
        try:
            while True:
                if up is None:
                    async with asyncio.timeout_at(deadline):
                        up = await self.upstreams.connect(address)
                conn.prepare(up, extra, head_only)
                done = up.begin(conn, head_only)
                # One timer per exchange; cheaper than a timeout context on the hot path.
                timer = loop.call_at(deadline, _expire, done)
                try:
                    up.write(payload)
                    if not whole:
                        async with asyncio.timeout_at(deadline):
                            await self._send_body(req, up)
                    await done
                    break
                except UpstreamLost as e:
                    if not (reused and whole and not e.response_started):
                        raise
                    up, reused = None, False
                finally:
                    timer.cancel()
        except BaseException:
            if conn.upstream is not None:
                conn.upstream.abort()
            conn.upstream = None
            raise
        self.upstreams.put(up)

    async def _send_body(self, req: Request, up: UpstreamConnection) -> None:
        if not req.has_body:
            return
        limit = self.settings.max_body_bytes
        sent = 0
        while (chunk := await req.body.next()) is not None:
            sent += len(chunk)
            if sent > limit:
                raise UpstreamLost(
                    f"request body is larger than {limit} bytes", response_started=False
                )
            up.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if req.chunked else chunk)
            await up.drain()
        if req.chunked:
            up.write(b"0\r\n\r\n")

    async def drain(self, grace_s: float) -> None:
        """Stop taking new requests on kept-alive connections; wait for in-flight ones."""
        self.closing = True
        if self.in_flight:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        for conn in list(self.connections):
            conn.close()
        self.upstreams.close()
