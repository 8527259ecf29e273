"""Server side of HTTP/1.1 on raw asyncio (parsed by httptools): the public port.

A `ClientConnection` parses requests, queues them, and answers them in order, one at a
time, through a `RequestHandler`; it is also the sink an upstream response is written
through to, from the upstream parser's callbacks.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from http import HTTPStatus
from typing import Protocol, cast

import httptools

from gateway.upstream import HOP_BY_HOP, UpstreamConnection

log = logging.getLogger("kapal.gateway.http1")

MAX_URL = 8 * 1024
# All header fields together, whatever the per-field limit.
MAX_HEADER_TOTAL = 64 * 1024
# A body buffered past this pauses reading from the client until it is forwarded.
BODY_HIGH_WATER = 1 << 20
NO_BODY_STATUS = frozenset((204, 304))
REQUEST_ID = b"x-kapal-request-id"


class RequestHandler(Protocol):
    connections: set[ClientConnection]
    closing: bool
    # Longest header field (name and value) accepted, in bytes.
    max_header_bytes: int
    # Most header fields accepted.
    max_headers: int

    async def handle(self, conn: ClientConnection, req: Request) -> None: ...


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

    def __init__(self, conn: ClientConnection | None) -> None:
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
        if self.size > BODY_HIGH_WATER and self.conn is not None:
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
            if self.complete or self.conn is None or self.conn.gone:
                return None
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        chunk = self.chunks.popleft()
        self.size -= len(chunk)
        if self.size <= BODY_HIGH_WATER and self.conn is not None:
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

    def __init__(self, conn: ClientConnection | None) -> None:
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

    @property
    def replayable(self) -> bool:
        """Its whole body is here and small: it can be sent again (another instance, or a
        fresh connection) without the client sending it again."""
        return self.body.complete and not self.chunked and self.body.size <= BODY_HIGH_WATER

    @classmethod
    def buffered(
        cls, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], data: bytes
    ) -> Request:
        """A request made inside Kapal, its body already complete."""
        req = cls(None)
        req.method, req.url, req.headers = method, url, headers
        req.content_length = len(data)
        if data:
            req.body.chunks.append(data)
            req.body.size = len(data)
        req.body.complete = True
        return req


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order, one at a time."""

    def __init__(self, front: RequestHandler) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop  # set when connected
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
        # The runtime said the handler ran past its deadline (X-Kapal-Error: timeout).
        self.runtime_timeout = False

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if isinstance(peer, tuple) else b""
        self.front.connections.add(self)
        # Kept: each asyncio.get_running_loop() is a getpid() system call on Python 3.11.
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(501, "not_implemented", "protocol upgrades are not supported")
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, TooLarge):
                code = {431: "headers_too_large", 414: "uri_too_long"}.get(
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
        size = len(name) + len(value)
        req.header_bytes += size
        front = self.front
        if size > front.max_header_bytes:
            raise TooLarge(431, f"a request header is longer than {front.max_header_bytes} bytes")
        if len(req.headers) >= front.max_headers or req.header_bytes > MAX_HEADER_TOTAL:
            raise TooLarge(
                431,
                f"the request has more than {front.max_headers} header fields"
                f" or {MAX_HEADER_TOTAL} bytes of them",
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
                    self._waiter = self._loop.create_future()
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
            b"Content-Type: application/json\r\n",
            b"Content-Length: %d\r\n" % len(body),
        ]
        if request_id:
            head.append(b"X-Kapal-Request-Id: " + request_id + b"\r\n")
        for k, v in (headers or {}).items():
            head.append(f"{k}: {v}\r\n".encode())
        if not self._keep_alive:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        self.status = status
        self.response_started = True
        self.write(b"".join(head) + body)

    # -- Sink: the upstream's response, written through --------------------------------

    def prepare(self, upstream: UpstreamConnection, extra_head: bytes, head_only: bool) -> None:
        self.upstream = upstream
        self.runtime_timeout = False
        self._extra_head = extra_head
        self._head_only = head_only

    def start(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], has_length: bool
    ) -> None:
        out = [b"HTTP/1.1 %d %s\r\n" % (status, reason or _reason(status))]
        for name, value in headers:
            lname = name.lower()
            if (lname in HOP_BY_HOP and lname != b"content-length") or lname == REQUEST_ID:
                continue  # framing is ours; so is the request id (in extra_head)
            if lname == b"x-kapal-error" and status == 504 and value == b"timeout":
                self.runtime_timeout = True
            out.append(name + b": " + value + b"\r\n")
        out.append(self._extra_head)
        self._chunked_out = not has_length and not self._head_only and status not in NO_BODY_STATUS
        if self._chunked_out:
            out.append(b"Transfer-Encoding: chunked\r\n")
        if not self._keep_alive:
            out.append(b"Connection: close\r\n")
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
