"""Server side of HTTP/1.1 on raw asyncio (parsed by httptools): the public port.

A `ClientConnection` owns the socket and the parser: it admits itself through the
`ConnectionTable`, holds the read timeouts (request head, body progress, keep-alive
idle), queues parsed requests and answers them in order, one at a time, through a
`RequestHandler`. Back-pressure both ways is its `FlowControl`. It is also the sink an
upstream response is written through to, from the upstream parser's callbacks.

`Upgrade: websocket` on a function's path is its last request: parsing stops, reading
waits for the instance's answer, and after a 101 the bytes pass both ways unparsed until
either side closes (any other answer is passed on, then the connection is closed).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from http import HTTPStatus
from typing import Protocol, cast

import httptools

from gateway.connections import ConnectionTable, Verdict
from gateway.flow import BODY_BUFFERED, PIPELINED, STOPPED, UPGRADING, FlowControl
from gateway.request import BodyIncomplete, Failure, Request, TooLarge
from gateway.upstream import HOP_BY_HOP, UpstreamConnection

log = logging.getLogger("kapal.gateway.http1")

MAX_URL = 8 * 1024
# All header fields together, whatever the per-field limit.
MAX_HEADER_TOTAL = 64 * 1024
# Requests parsed ahead of the one being answered before reading pauses.
PIPELINE_DEPTH = 8
NO_BODY_STATUS = frozenset((204, 304))
REQUEST_ID = b"x-kapal-request-id"
# Response headers of the instance that are not passed on: framing is ours, so is the
# request id (in extra_head), and the runtime's `Server` says what it runs on.
NOT_PASSED = frozenset((*HOP_BY_HOP, REQUEST_ID, b"server")) - {b"content-length"}
FUNCTION_PATH = b"/fn/"

# What the read timer waits for.
HEAD, BODY, IDLE = 1, 2, 3


class RequestHandler(Protocol):
    connections: set[ClientConnection]
    closing: bool
    # Longest header field (name and value) accepted, in bytes.
    max_header_bytes: int
    # Most header fields accepted.
    max_headers: int

    async def handle(self, conn: ClientConnection, req: Request) -> None: ...


class Splice:
    """An upgrade of a client connection: asked (waiting for the instance's answer),
    then spliced (the client's bytes go to the instance unparsed)."""

    __slots__ = ("early", "spliced")

    def __init__(self, early: bytes) -> None:
        # What the client sent after its upgrade request, before the tunnel opened.
        self.early = early
        self.spliced = False


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order, one at a time."""

    # Set on the instance only when it upgrades. Not in __init__: CPython 3.11 keeps the
    # attributes of instances compact and fast (shared keys) up to 30 of them, and a
    # plain connection already has 29.
    _splice: Splice | None = None

    def __init__(self, front: RequestHandler, table: ConnectionTable[ClientConnection]) -> None:
        self.front = front
        self.table = table
        self.limits = table.limits
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b""
        self.queue: deque[Request] = deque()
        self.current: Request | None = None
        self.gone = False
        # Over the connection cap with nothing idle to close: no function calls here.
        self.functions_allowed = True
        # An answer owed once the queued requests are answered (the parser gave up).
        self.refusal: Failure | None = None
        self._parsing = True
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The read timer: what it waits for (0: nothing), until when; one handle, moved
        # lazily (it fires, sees a later deadline, and sleeps again).
        self._read_phase = 0
        self._read_deadline = 0.0
        self._read_timer: asyncio.TimerHandle | None = None
        # The phase suspended while reading is paused (not the client's delay).
        self._held_phase = 0
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
        # Kept: each asyncio.get_running_loop() is a getpid() system call on Python 3.11.
        self._loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if isinstance(peer, tuple) else b""
        admission = self.table.admit(self, self.peer)
        if admission.evict is not None:
            admission.evict.close()  # the longest-idle one makes room
        verdict = admission.verdict
        if verdict is Verdict.TOO_MANY_FROM_ADDRESS or verdict is Verdict.FULL:
            self._keep_alive = False
            if verdict is Verdict.FULL:
                self.error(503, "unavailable", "too many open connections", {"Retry-After": "1"})
            else:
                self.error(
                    429,
                    "too_many_connections",
                    f"more than {self.limits.max_per_address} open connections from this address",
                )
            self.close()
            return
        self.functions_allowed = verdict is Verdict.SERVE
        self.flow = FlowControl(self.transport, self.limits.send_timeout_s, self._send_stalled)
        self.front.connections.add(self)
        self._set_read_timer(HEAD, self.limits.header_timeout_s)
        self._task = self._loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        if not self._parsing:
            splice = self._splice
            if splice is not None:
                if not splice.spliced:
                    splice.early += data  # read before the pause took effect: for the tunnel
                elif self.upstream is not None:
                    self.upstream.write(data)
            return  # the parser gave up: the rest is not read
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._upgrade_requested(data[e.args[0] :])
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, TooLarge):
                code = {431: "headers_too_large", 414: "uri_too_long"}.get(
                    cause.status, "too_large"
                )
                self._stop((cause.status, code, str(cause)))
            else:
                self._stop((400, "bad_request", "malformed HTTP request"))
        except httptools.HttpParserError as e:
            self._stop((400, "bad_request", f"malformed HTTP request: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        splice = self._splice
        if splice is not None and splice.spliced and self.upstream is not None:
            self.upstream.close()  # the tunnel ends with either side
        self.table.remove(self)
        self.front.connections.discard(self)
        self._read_phase = 0
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        if self.flow is not None:
            if self.flow.write_paused and self.upstream is not None:
                # The answer goes nowhere now: read the instance's rest and drop it, so
                # its connection stays usable and a gone client is not its timeout.
                self.upstream.resume_reading()
            self.flow.close()
        self._wake()
        if self.current is not None:
            self.current.body._wake()
        for req in self.queue:
            req.body._wake()

    def pause_writing(self) -> None:
        if self.flow is not None:
            self.flow.pause_writing()
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.flow is not None:
            self.flow.resume_writing()
        if self.upstream is not None:
            self.upstream.resume_reading()

    def pause_reading(self) -> None:
        """A body is buffered past its high water: wait until it is forwarded."""
        self._hold(BODY_BUFFERED)

    def resume_reading(self) -> None:
        self._release(BODY_BUFFERED)

    def _hold(self, reason: int) -> None:
        if self.flow is not None and not self.gone and self.flow.hold(reason):
            # The client is not the one slow now: its read timer waits too.
            self._held_phase, self._read_phase = self._read_phase, 0

    def _release(self, reason: int) -> None:
        if self.flow is not None and not self.gone and self.flow.release(reason):
            phase, self._held_phase = self._held_phase, 0
            if phase:
                self._set_read_timer(phase, self._timeout_of(phase))

    def _upgrade_requested(self, rest: bytes) -> None:
        """The parser stopped at an upgrade request: a websocket to a function is passed
        on (the bytes after it wait for the tunnel); anything else is 501."""
        req = self.queue[-1] if self.queue and self.current is None else None
        upgrade = b""
        if req is not None and req.url.startswith(FUNCTION_PATH):
            upgrade = next((v for n, v in req.headers if n.lower() == b"upgrade"), b"")
        if upgrade.lower() != b"websocket":
            if req is not None:
                self.queue.pop()  # the upgrade request itself: answered 501 instead
            self._stop((501, "not_implemented", "only websocket upgrades to functions"))
            return
        assert req is not None
        req.upgrade = upgrade
        req.keep_alive = False  # no HTTP after it, whatever the answer
        self._parsing = False
        self._splice = Splice(rest)
        self._hold(UPGRADING)

    def upgraded(self, up: UpstreamConnection) -> None:
        """The instance answered 101 (written through already): splice the two."""
        splice = self._splice
        assert splice is not None
        splice.spliced = True
        if self.gone:  # left while the instance was answering: end the tunnel at once
            up.close()
            return
        early, splice.early = splice.early, b""
        if early:
            up.write(early)
        self._release(UPGRADING)

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.current = Request(self)
        self._set_read_timer(HEAD, self.limits.header_timeout_s)

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
        self.table.busy(self)
        self.queue.append(req)
        if req.has_body:
            self._set_read_timer(BODY, self.limits.body_timeout_s)
        else:
            self._read_phase = 0
        if len(self.queue) > PIPELINE_DEPTH:  # pipelining far ahead: wait for answers first
            self._hold(PIPELINED)
        self._wake()

    def on_body(self, body: bytes) -> None:
        req = self.current
        if req is not None:
            if self._read_phase == BODY:
                assert self._loop is not None
                self._read_deadline = self._loop.time() + self.limits.body_timeout_s
            req.body.feed(body)

    def on_message_complete(self) -> None:
        if self.current is not None:
            self.current.body.finish()
            self.current = None
        # Served next (or now): the handler's own deadlines apply meanwhile.
        self._read_phase = self._held_phase = 0

    # -- timeouts ----------------------------------------------------------------------

    def _timeout_of(self, phase: int) -> float:
        limits = self.limits
        if phase == HEAD:
            return limits.header_timeout_s
        if phase == BODY:
            return limits.body_timeout_s
        return limits.keepalive_timeout_s

    def _set_read_timer(self, phase: int, timeout_s: float) -> None:
        loop = self._loop
        assert loop is not None
        if self.flow is not None and self.flow.reading_paused:
            self._held_phase, self._read_phase = phase, 0  # armed again on resume
            return
        deadline = loop.time() + timeout_s
        self._read_phase, self._read_deadline = phase, deadline
        timer = self._read_timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._read_timer = loop.call_at(deadline, self._read_timed_out)

    def _read_timed_out(self) -> None:
        self._read_timer = None
        phase, loop = self._read_phase, self._loop
        if not phase or self.gone or loop is None:
            return
        if loop.time() < self._read_deadline:
            self._read_timer = loop.call_at(self._read_deadline, self._read_timed_out)
            return
        self._read_phase = 0
        if phase == IDLE or (phase == HEAD and self.current is None):
            self.close()  # nothing asked: nothing to answer
        elif phase == HEAD:
            seconds = self.limits.header_timeout_s
            self._stop((408, "request_timeout", f"the request head took longer than {seconds:g}s"))
        else:
            seconds = self.limits.body_timeout_s
            self._stop(
                (408, "request_timeout", f"the request body stopped arriving for {seconds:g}s")
            )

    def _send_stalled(self) -> None:
        """The client read nothing of the answer for send_timeout_s: drop it."""
        log.info("client stopped reading", extra={"peer": self.peer.decode()})
        if self.transport is not None and not self.gone:
            self.transport.abort()  # close() would wait for the buffer to drain

    def _stop(self, failure: Failure) -> None:
        """Parse no more: answer `failure` (after what is queued) and close."""
        req, self.current = self.current, None
        self._parsing = False
        self._read_phase = 0
        self._hold(STOPPED)
        if req is not None and req.method:
            req.body.fail(failure)  # mid-body: the request in the queue owes the answer
        else:
            self.refusal = failure
        self._wake()

    # -- answering ---------------------------------------------------------------------

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _serve(self) -> None:
        assert self.flow is not None and self._loop is not None
        flow, loop = self.flow, self._loop
        try:
            while not self.gone:
                if not self.queue:
                    if self.refusal is not None:
                        self._answer(self.refusal)
                        return
                    self._waiter = loop.create_future()
                    await self._waiter
                    continue
                if flow.write_paused:
                    await flow.drain()  # no next answer on top of one not read yet
                    continue
                req = self.queue.popleft()
                if len(self.queue) <= PIPELINE_DEPTH:
                    self._release(PIPELINED)
                self.response_started = False
                self._keep_alive = req.keep_alive and not self.front.closing
                if req.body.failure is not None:
                    self._answer(req.body.failure)  # broken before it was handled
                    return
                if not self.functions_allowed and req.url.startswith(FUNCTION_PATH):
                    self._keep_alive = False
                    self.error(
                        503, "unavailable", "too many open connections", {"Retry-After": "1"}
                    )
                    self.close()
                    return
                if req.expect_continue and not req.body.complete:
                    self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                try:
                    await self.front.handle(self, req)
                except BodyIncomplete as e:
                    if e.failure is not None and not self.response_started:
                        self._answer(e.failure)
                    self.close()
                    return
                if not req.body.complete:
                    # Answered before the body was read (an error): the rest is unread.
                    self._keep_alive = False
                if not self._keep_alive:
                    self.close()
                    return
                if not self.queue and self.current is None and not self.gone:
                    self.table.idle(self)
                    self._set_read_timer(IDLE, self.limits.keepalive_timeout_s)
        except Exception:
            log.exception("connection failed")
            self.close()

    def _answer(self, failure: Failure) -> None:
        self._keep_alive = False
        self.error(*failure)
        self.close()

    def write(self, data: bytes) -> None:
        if not self.gone and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.gone:
            self.transport.close()
        self.gone = True

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
        if status == 101:  # hop-by-hop, but the protocol switched to is the answer itself
            upgrade = next((v for n, v in headers if n.lower() == b"upgrade"), b"websocket")
            out.append(b"Connection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n")
        for name, value in headers:
            lname = name.lower()
            if lname in NOT_PASSED:
                continue
            if lname == b"x-kapal-error" and status == 504 and value == b"timeout":
                self.runtime_timeout = True
            out.append(name + b": " + value + b"\r\n")
        out.append(self._extra_head)
        self._chunked_out = not has_length and not self._head_only and status not in NO_BODY_STATUS
        if self._chunked_out:
            out.append(b"Transfer-Encoding: chunked\r\n")
        if not self._keep_alive and status != 101:
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
