"""The public port's connection, driven through a fake transport (no sockets, no Docker)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.connections import ConnectionLimits, ConnectionTable
from gateway.http1 import ClientConnection
from gateway.request import Request

FAST = ConnectionLimits(
    header_timeout_s=0.05, body_timeout_s=0.05, keepalive_timeout_s=0.05, send_timeout_s=0.05
)
# Long enough never to fire within a test.
SLOW = ConnectionLimits()


class FakeTransport:
    def __init__(self, protocol: ClientConnection, peer: str = "10.0.0.1") -> None:
        self.protocol = protocol
        self.peer = peer
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def _lose(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self.aborted = True
        self._lose()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Upstream:
    """Stands in for the instance's connection: only its read pausing matters here."""

    def __init__(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Front:
    """Answers every request 200 with its body echoed, the way an instance's reply comes in."""

    def __init__(self) -> None:
        self.connections: set[ClientConnection] = set()
        self.closing = False
        self.max_header_bytes = 8190
        self.max_headers = 100
        self.handled: list[Request] = []
        self.errors: list[BaseException] = []
        # When set, each exchange waits for it before reading the body.
        self.before_body: asyncio.Event | None = None
        # When set, each exchange waits for it after sending the head.
        self.hold: asyncio.Event | None = None
        self.upstream = Upstream()

    async def handle(self, conn: ClientConnection, req: Request) -> None:
        self.handled.append(req)
        body = b""
        if self.before_body is not None:
            await self.before_body.wait()
        try:
            while (chunk := await req.body.next()) is not None:
                body += chunk
        except BaseException as e:
            self.errors.append(e)
            raise
        conn.prepare(self.upstream, b"X-Kapal-Request-Id: r1\r\n", req.method == b"HEAD")  # type: ignore[arg-type]
        headers = [
            (b"Content-Length", b"%d" % len(body)),
            (b"Server", b"Python/3.11 aiohttp/3.14.5"),
            (b"X-Fn", b"yes"),
        ]
        conn.start(200, b"OK", headers, True)
        conn.flush()
        if self.hold is not None:
            await self.hold.wait()
        conn.body(body)
        conn.end()
        conn.flush()


def connect(
    front: Front,
    limits: ConnectionLimits = SLOW,
    table: ConnectionTable[ClientConnection] | None = None,
    peer: str = "10.0.0.1",
) -> tuple[ClientConnection, FakeTransport]:
    conn = ClientConnection(front, table or ConnectionTable(limits))  # type: ignore[arg-type]
    transport = FakeTransport(conn, peer)
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


async def settle(seconds: float = 0.0) -> None:
    for _ in range(5):
        await asyncio.sleep(seconds / 5)


def responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split what was written into (status, headers, body), by Content-Length."""
    out = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        n = int(headers.get("content-length", "0"))
        out.append((int(lines[0].split()[1]), headers, data[:n]))
        data = data[n:]
    return out


def error_code(body: bytes) -> str:
    return str(json.loads(body)["error"]["code"])


GET = b"GET /fn/echo HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_a_request_is_answered_without_the_runtimes_server_header() -> None:
    front = Front()
    conn, t = connect(front)
    conn.data_received(b"POST /fn/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    await settle()
    [(status, headers, body)] = responses(bytes(t.written))
    assert (status, body) == (200, b"hello")
    assert "server" not in headers
    assert headers["x-fn"] == "yes" and headers["x-kapal-request-id"] == "r1"
    assert not t.closed  # kept alive


async def test_pipelined_requests_are_answered_in_order() -> None:
    front = Front()
    conn, t = connect(front)
    conn.data_received(
        b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\n1"
        b"POST /b HTTP/1.1\r\nContent-Length: 1\r\n\r\n2"
    )
    await settle()
    assert [(s, b) for s, _, b in responses(bytes(t.written))] == [(200, b"1"), (200, b"2")]


async def test_a_connection_that_sends_nothing_is_closed_quietly() -> None:
    front = Front()
    _, t = connect(front, FAST)
    await settle(0.2)
    assert t.closed and t.written == b""


async def test_an_idle_kept_alive_connection_is_closed_quietly() -> None:
    front = Front()
    conn, t = connect(front, FAST)
    conn.data_received(GET)
    await settle()
    answered = len(t.written)
    assert answered and not t.closed
    await settle(0.2)
    assert t.closed and len(t.written) == answered


async def test_a_slow_request_head_is_408_then_closed() -> None:
    front = Front()
    conn, t = connect(front, FAST)
    conn.data_received(b"GET /healthz HTTP/1.1\r\nX-A: 1\r\n")
    await settle(0.03)
    conn.data_received(b"X-B: 2\r\n")  # still within the head's time: not a reset
    await settle(0.2)
    [(status, headers, body)] = responses(bytes(t.written))
    assert status == 408 and error_code(body) == "request_timeout"
    assert headers["connection"] == "close"
    assert t.closed and not front.handled


async def test_a_body_that_stops_arriving_is_408_then_closed() -> None:
    front = Front()
    conn, t = connect(front, FAST)
    conn.data_received(b"POST /fn/echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    await settle(0.2)
    [(status, _, body)] = responses(bytes(t.written))
    assert status == 408 and error_code(body) == "request_timeout"
    assert t.closed
    assert [type(e).__name__ for e in front.errors] == ["BodyIncomplete"]


async def test_a_body_paused_by_back_pressure_is_not_timed_out() -> None:
    front = Front()
    conn, t = connect(front, FAST)
    front.before_body = asyncio.Event()
    conn.data_received(b"POST /fn/echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    conn.pause_reading()  # as a body past its high water does, until it is forwarded
    await settle(0.2)
    assert not t.closed and not t.reading
    front.before_body.set()  # forwarded: reading resumes, and so does the body's clock
    await settle(0.2)
    [(status, _, _)] = responses(bytes(t.written))
    assert status == 408 and t.closed


@pytest.mark.parametrize(
    "head",
    [
        # A chunk size that is not hex, in the same read as the head.
        b"POST /fn/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /fn/echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /fn/echo HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /fn/echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET /fn/echo HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",
        b"GET /fn/echo HTTP/1.1\r\nX-A : 1\r\n\r\n",
        b"GET /fn/echo HTTP/1.1\r\nBad Header\r\n\r\n",
    ],
)
async def test_framing_errors_are_400_json_then_close(head: bytes) -> None:
    front = Front()
    conn, t = connect(front)
    conn.data_received(head)
    await settle()
    [(status, headers, body)] = responses(bytes(t.written))
    assert status == 400 and error_code(body) == "bad_request"
    assert headers["content-type"] == "application/json"
    assert t.closed


async def test_a_bad_chunk_while_the_body_streams_is_400() -> None:
    front = Front()
    conn, t = connect(front)
    conn.data_received(b"POST /fn/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    await settle()
    assert front.handled  # the exchange is reading the body already
    conn.data_received(b"zz\r\n")
    await settle()
    [(status, _, body)] = responses(bytes(t.written))
    assert status == 400 and error_code(body) == "bad_request"
    assert t.closed


async def test_an_error_after_a_pipelined_request_waits_for_its_answer() -> None:
    front = Front()
    conn, t = connect(front)
    conn.data_received(GET + b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
    await settle()
    assert [s for s, _, _ in responses(bytes(t.written))] == [200, 400]
    assert t.closed


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET /fn/echo HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
    ],
)
async def test_an_upgrade_other_than_a_websocket_to_a_function_is_501(head: bytes) -> None:
    front = Front()
    conn, t = connect(front)
    conn.data_received(head)
    await settle()
    [(status, _, body)] = responses(bytes(t.written))
    assert status == 501 and error_code(body) == "not_implemented"
    assert not front.handled


class TunnelUpstream(Upstream):
    """The instance's connection once it answered 101: collects what the client sends."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed.set()


class UpgradingFront(Front):
    """Answers an upgrade the way an instance that accepts it does, then holds the tunnel."""

    def __init__(self, accept: bool = True) -> None:
        super().__init__()
        self.accept = accept
        self.tunnel = TunnelUpstream()

    async def handle(self, conn: ClientConnection, req: Request) -> None:
        self.handled.append(req)
        up = self.tunnel
        conn.prepare(up, b"X-Kapal-Request-Id: r1\r\n", False)  # type: ignore[arg-type]
        if not self.accept:
            conn.start(400, b"Bad Request", [(b"Content-Length", b"2")], True)
            conn.body(b"no")
            conn.end()
            conn.flush()
            return
        upgrade = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Sec-X", b"y")]
        conn.start(101, b"Switching Protocols", upgrade, True)
        conn.flush()
        conn.upgraded(up)  # type: ignore[arg-type]
        await up.closed.wait()
        conn.end()


UPGRADE = (
    b"GET /fn/echo/chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n"
)


async def test_a_websocket_upgrade_is_spliced_both_ways_until_the_client_leaves() -> None:
    front = UpgradingFront()
    conn, t = connect(front)
    conn.data_received(UPGRADE + b"early")  # the client's first frame, before the 101
    await settle()
    [req] = front.handled
    assert req.upgrade == b"websocket"
    head, _, rest = bytes(t.written).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 101 Switching Protocols"
    assert b"Connection: Upgrade" in lines and b"Upgrade: websocket" in lines
    assert b"Sec-X: y" in lines and b"X-Kapal-Request-Id: r1" in lines
    assert not any(line.startswith(b"Transfer-Encoding") for line in lines)
    assert rest == b"" and front.tunnel.written == b"early"
    assert t.reading  # reading resumed once spliced
    conn.data_received(b"\x81\x02hi")  # not parsed as HTTP: passed on
    assert front.tunnel.written == b"early\x81\x02hi"
    conn.body(b"\x81\x03bye")  # the instance's bytes, as its connection passes them
    conn.flush()
    assert bytes(t.written).endswith(b"\r\n\r\n\x81\x03bye")
    t.close()
    await settle()
    assert front.tunnel.closed.is_set()


async def test_a_refused_upgrade_is_answered_then_the_connection_closed() -> None:
    front = UpgradingFront(accept=False)
    conn, t = connect(front)
    conn.data_received(UPGRADE)
    await settle()
    [(status, headers, body)] = responses(bytes(t.written))
    assert (status, body) == (400, b"no")
    assert headers["connection"] == "close"
    assert t.closed


async def test_a_client_gone_mid_body_ends_the_exchange_without_an_answer() -> None:
    front = Front()
    conn, t = connect(front)
    conn.data_received(b"POST /fn/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    await settle()
    t.close()
    await settle()
    assert [type(e).__name__ for e in front.errors] == ["BodyIncomplete"]
    assert t.written == b""


async def test_a_client_that_stops_reading_is_dropped_and_the_instance_read_on() -> None:
    front = Front()
    conn, t = connect(front, FAST)
    front.hold = asyncio.Event()
    conn.data_received(GET)
    await settle()
    conn.pause_writing()  # the transport's buffer is full: the client reads nothing
    assert not front.upstream.reading  # back-pressure reaches the instance
    await settle(0.2)
    assert t.aborted and t.closed
    assert front.upstream.reading  # the rest of the answer is read and dropped


async def test_the_next_answer_waits_until_the_client_reads_the_last() -> None:
    front = Front()
    conn, _ = connect(front)
    conn.data_received(GET)
    await settle()
    conn.pause_writing()
    conn.data_received(GET)
    await settle()
    assert len(front.handled) == 1
    conn.resume_writing()
    await settle()
    assert len(front.handled) == 2


async def test_over_the_cap_the_longest_idle_connection_is_closed() -> None:
    front = Front()
    table: ConnectionTable[ClientConnection] = ConnectionTable(
        ConnectionLimits(max_connections=16, max_per_address=0)
    )
    first = [connect(front, table=table) for _ in range(16)]
    newest, t = connect(front, table=table)
    assert first[0][1].closed and not any(tr.closed for _, tr in first[1:])
    newest.data_received(GET)
    await settle()
    assert responses(bytes(t.written))[0][0] == 200


async def test_over_the_cap_with_nothing_idle_only_management_is_served() -> None:
    front = Front()
    front.hold = asyncio.Event()  # every exchange hangs: all connections busy
    table: ConnectionTable[ClientConnection] = ConnectionTable(
        ConnectionLimits(max_connections=16, max_per_address=0)
    )
    for _ in range(16):
        conn, _ = connect(front, table=table)
        conn.data_received(GET)
    await settle()
    extra, t = connect(front, table=table)
    extra.data_received(GET)
    await settle()
    [(status, headers, body)] = responses(bytes(t.written))
    assert status == 503 and headers["retry-after"] == "1"
    assert error_code(body) == "unavailable"
    assert t.closed
    health, t = connect(front, table=table)
    health.data_received(b"GET /healthz HTTP/1.1\r\n\r\n")
    front.hold.set()
    await settle()
    assert responses(bytes(t.written))[0][0] == 200


async def test_past_the_per_address_cap_new_connections_get_429() -> None:
    front = Front()
    front.hold = asyncio.Event()
    table: ConnectionTable[ClientConnection] = ConnectionTable(
        ConnectionLimits(max_connections=100, max_per_address=2)
    )
    for _ in range(2):
        conn, _ = connect(front, table=table, peer="10.0.0.9")
        conn.data_received(GET)
    await settle()
    _, t = connect(front, table=table, peer="10.0.0.9")
    [(status, _, body)] = responses(bytes(t.written))
    assert status == 429 and error_code(body) == "too_many_connections"
    assert t.closed
    _, other = connect(front, table=table, peer="10.0.0.10")
    assert not other.closed
    front.hold.set()
