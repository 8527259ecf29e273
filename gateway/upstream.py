"""Raw HTTP/1.1 client connections to instances (and to the management app), pooled.

The invocation hot path: asyncio protocols parsed by httptools, with the response
written straight through to a sink (the caller's connection) from parser callbacks.
An exchange that asked for an upgrade and got 101 becomes a tunnel: the instance's bytes
go to the sink as they come until the connection closes, which ends the exchange.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import defaultdict
from typing import Protocol, cast

import httptools

# Kernel keepalive on upstream connections: an instance whose host vanished (a swarm node
# killed) sends no reset, and a request waiting on it would wait out its whole deadline;
# these probes find it gone in about KEEPIDLE + KEEPINTVL * KEEPCNT seconds. A live
# instance's kernel answers them even while its handler is busy or its cgroup frozen.
KEEPALIVE = (
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 2),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
)

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
# Idle connections older than this are not reused (the runtime closes its side at 75 s).
IDLE_TTL_S = 30.0
MAX_IDLE_PER_ADDRESS = 256
# How long a connection opened ahead (`preconnect`) may take before it is given up.
PRECONNECT_TIMEOUT_S = 1.0
# How often exchanges past their deadline are looked for: deadlines are whole seconds,
# and one sweep for all exchanges is cheaper than a timer armed and cancelled for each.
SWEEP_S = 0.05


class UpstreamLost(Exception):
    """The connection closed or broke before the response was complete."""

    def __init__(self, message: str, *, response_started: bool) -> None:
        super().__init__(message)
        self.response_started = response_started


class InstanceBusy(Exception):
    """The instance turned the request away before running it: all its slots are taken
    (by other gateways). Nothing reached the sink; the request may go elsewhere."""


BUSY = b"busy"


class Sink(Protocol):
    def start(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], has_length: bool
    ) -> None: ...

    def body(self, data: bytes) -> None: ...

    def end(self) -> None: ...

    def flush(self) -> None: ...

    # Only sinks of requests that ask for an upgrade get these three calls.
    def upgraded(self, up: UpstreamConnection) -> None:
        """The instance answered 101: the client's bytes now go to `up`."""

    def pause_reading(self) -> None:
        """A tunnel's instance reads too slowly: stop reading the client."""

    def resume_reading(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, address: str) -> None:
        self.address = address
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop  # set when connected
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0
        self.used = 0
        self._sink: Sink | None = None
        self._done: asyncio.Future[None] | None = None
        self._head_only = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._started = False
        self._busy = False
        self._write_paused: asyncio.Future[None] | None = None
        # The exchange asks to switch protocols; once answered 101, bytes pass through.
        self._upgrade = False
        self.tunnel = False

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()  # once, not per exchange (a getpid() each)

    def data_received(self, data: bytes) -> None:
        sink = self._sink
        if self.tunnel:
            if sink is not None:
                sink.body(data)
                sink.flush()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if sink is not None and self.tunnel:
                sink.upgraded(self)
                rest = data[e.args[0] :]
                if rest:  # the instance's first frames, in the same read as its 101
                    sink.body(rest)
        except httptools.HttpParserError as e:
            self._fail(f"bad response from instance: {e}")
            self.close()
        if sink is not None:
            sink.flush()  # one write per chunk received, head and body together

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.tunnel:
            self._finish()  # either side closing is how a tunnel ends
        else:
            self._fail("instance closed the connection")
        if self._write_paused is not None and not self._write_paused.done():
            self._write_paused.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = asyncio.get_running_loop().create_future()
        if self.tunnel and self._sink is not None:
            self._sink.pause_reading()

    def resume_writing(self) -> None:
        if self._write_paused is not None and not self._write_paused.done():
            self._write_paused.set_result(None)
        self._write_paused = None
        if self.tunnel and self._sink is not None:
            self._sink.resume_reading()

    # -- httptools callbacks -----------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:
                if not self._upgrade:
                    self._fail("bad response from instance: 101 to a request asking no upgrade")
                    self.close()
                    return
                # Switching protocols: httptools stops at the end of this head.
                self._started = self.tunnel = True
                if self._sink is not None:
                    self._sink.start(status, self._reason, self._headers, True)
                return
            # An interim response (100 Continue): not the answer.
            self._headers, self._reason = [], b""
            return
        if status == 503 and any(
            n.lower() == b"x-kapal-error" and v == BUSY for n, v in self._headers
        ):
            self._busy = True  # answered to us, not to the client
            if self._head_only:
                self._end_head()
            return
        has_length = any(n.lower() == b"content-length" for n, _ in self._headers)
        self._started = True
        if self._sink is not None:
            self._sink.start(status, self._reason, self._headers, has_length)
        if self._head_only:
            self._end_head()

    def on_body(self, body: bytes) -> None:
        if self._sink is not None and not self._busy:
            self._sink.body(body)

    def on_message_complete(self) -> None:
        if self.tunnel:
            return  # a 101's head: the exchange goes on until the connection closes
        if self._done is None:
            return  # a HEAD response announcing no body: already finished
        if not self.parser.should_keep_alive():
            self.reusable = False
        self._finish()

    def _end_head(self) -> None:
        """A HEAD response is complete with its head, whatever length it announces.

        httptools cannot be told the request was HEAD and would wait for the announced
        body, so the next exchange gets a parser of its own and the connection is kept.
        """
        if not self.parser.should_keep_alive():
            self.reusable = False
        self.parser = httptools.HttpResponseParser(self)
        self._finish()

    # -- exchanges ---------------------------------------------------------------------

    def _finish(self) -> None:
        sink, done, busy = self._sink, self._done, self._busy
        self._reset()
        if busy:
            if done is not None and not done.done():
                done.set_exception(InstanceBusy())
            return
        if sink is not None:
            sink.end()
        if done is not None and not done.done():
            done.set_result(None)

    def _reset(self) -> None:
        self._busy = False
        self._sink = None
        self._done = None
        self._headers = []
        self._reason = b""

    def _fail(self, message: str) -> None:
        done, started = self._done, self._started
        self._reset()
        self.reusable = False
        if done is not None and not done.done():
            done.set_exception(UpstreamLost(message, response_started=started))

    def begin(self, sink: Sink, head_only: bool, upgrade: bool = False) -> asyncio.Future[None]:
        """Start an exchange; the caller then writes the request and awaits the future."""
        self._sink = sink
        self._head_only = head_only
        self._upgrade = upgrade
        if upgrade:
            # Refused or not, the instance may take what follows for the new protocol.
            self.reusable = False
        self._started = False
        self.used += 1
        self._done = self._loop.create_future()
        return self._done

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        if self._write_paused is not None:
            await self._write_paused

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        self.reusable = False
        self._reset()
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Upstreams:
    """Kept-alive connections per address ("host:port" or "unix:/path")."""

    def __init__(self) -> None:
        self.idle: defaultdict[str, list[UpstreamConnection]] = defaultdict(list)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Exchanges in flight and the loop time each must be done by.
        self._deadlines: dict[asyncio.Future[None], float] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._preconnects: set[asyncio.Task[None]] = set()

    def watch(self, done: asyncio.Future[None], deadline: float) -> None:
        """Fail `done` with TimeoutError if it is not done by `deadline` (loop time)."""
        self._deadlines[done] = deadline
        if self._sweeper is None:
            self._sweeper = self.loop.create_task(self._sweep(), name="kapal-deadlines")

    def unwatch(self, done: asyncio.Future[None]) -> None:
        self._deadlines.pop(done, None)

    async def _sweep(self) -> None:
        while self._deadlines:  # an idle gateway is not woken 20 times a second
            await asyncio.sleep(SWEEP_S)
            now = self.loop.time()
            late = [d for d, at in self._deadlines.items() if at <= now]
            for done in late:
                del self._deadlines[done]
                if not done.done():
                    done.set_exception(TimeoutError())
        self._sweeper = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the exchanges run on (looked up once: a getpid() per lookup)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def take(self, address: str) -> UpstreamConnection | None:
        """A kept-alive idle connection to `address` (it may turn out stale), if any."""
        idle = self.idle.get(address)
        if idle:
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                if not conn.closed and now - conn.idle_since < IDLE_TTL_S:
                    return conn
                conn.close()
        return None

    async def connect(self, address: str) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        if address.startswith("unix:"):
            _, conn = await loop.create_unix_connection(
                lambda: UpstreamConnection(address), address[5:]
            )
        else:
            host, _, port = address.rpartition(":")
            transport, conn = await loop.create_connection(
                lambda: UpstreamConnection(address), host, int(port)
            )
            sock = transport.get_extra_info("socket")
            if sock is not None:
                for level, option, value in KEEPALIVE:
                    sock.setsockopt(level, option, value)
        return conn

    def preconnect(self, address: str) -> None:
        """Open a connection to an instance about to serve (a prewarmed container while
        its code loads), so its first exchange does not wait for one."""
        task = self.loop.create_task(self._preconnect(address), name="kapal-preconnect")
        self._preconnects.add(task)
        task.add_done_callback(self._preconnects.discard)

    async def _preconnect(self, address: str) -> None:
        try:
            async with asyncio.timeout(PRECONNECT_TIMEOUT_S):
                conn = await self.connect(address)
        except (OSError, TimeoutError):
            return  # the exchange connects itself, and says why if it cannot
        self.put(conn)

    def put(self, conn: UpstreamConnection) -> None:
        if conn.closed or not conn.reusable:
            conn.close()
            return
        idle = self.idle[conn.address]
        if len(idle) >= MAX_IDLE_PER_ADDRESS:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def forget(self, address: str) -> None:
        for conn in self.idle.pop(address, []):
            conn.close()

    def close(self) -> None:
        for address in list(self.idle):
            self.forget(address)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for task in self._preconnects:
            task.cancel()
