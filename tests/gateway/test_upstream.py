"""The instance's side of an exchange, driven through a fake transport (no sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.upstream import UpstreamConnection, UpstreamLost


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Sink:
    """Collects what the exchange writes through."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.data = b""
        self.ended = False
        self.upgraded_to: UpstreamConnection | None = None
        self.reading = True

    def start(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], has_length: bool
    ) -> None:
        self.status, self.headers = status, headers

    def body(self, data: bytes) -> None:
        self.data += data

    def end(self) -> None:
        self.ended = True

    def flush(self) -> None:
        pass

    def upgraded(self, up: UpstreamConnection) -> None:
        self.upgraded_to = up

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def connected() -> tuple[UpstreamConnection, FakeTransport]:
    up = UpstreamConnection("10.0.0.2:8080")
    transport = FakeTransport()
    up.connection_made(transport)  # type: ignore[arg-type]
    return up, transport


async def test_a_head_response_announcing_a_body_keeps_the_connection() -> None:
    up, transport = connected()
    head = Sink()
    done = up.begin(head, head_only=True)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: 1\r\n\r\n")
    await asyncio.wait_for(done, 1)
    assert (head.status, head.data, head.ended) == (200, b"", True)
    assert up.reusable and not transport.closed
    # The next exchange on it is parsed from its own start, not as the HEAD's body.
    get = Sink()
    done = up.begin(get, head_only=False)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world")
    await asyncio.wait_for(done, 1)
    assert (get.status, get.data, get.ended) == (200, b"hello world", True)
    assert up.reusable


async def test_a_head_response_with_no_length_or_an_empty_one_keeps_the_connection() -> None:
    up, _ = connected()
    for response in (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    ):
        done = up.begin(Sink(), head_only=True)
        up.data_received(response)
        await asyncio.wait_for(done, 1)
        assert up.reusable
    get = Sink()
    done = up.begin(get, head_only=False)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await asyncio.wait_for(done, 1)
    assert get.data == b"ok"


async def test_a_head_response_saying_close_is_not_reused() -> None:
    up, _ = connected()
    done = up.begin(Sink(), head_only=True)
    up.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\n")
    await asyncio.wait_for(done, 1)
    assert not up.reusable


SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


async def test_an_upgrade_answered_101_passes_bytes_until_the_connection_closes() -> None:
    up, _ = connected()
    sink = Sink()
    done = up.begin(sink, head_only=False, upgrade=True)
    up.data_received(SWITCHING + b"\x81\x02hi")  # the first frame in the same read
    assert sink.status == 101 and sink.upgraded_to is up
    assert sink.data == b"\x81\x02hi" and not done.done()
    up.data_received(b"\x81\x03bye")
    assert sink.data == b"\x81\x02hi\x81\x03bye"
    up.pause_writing()  # the instance reads the client's bytes too slowly
    assert not sink.reading
    up.resume_writing()
    assert sink.reading
    up.connection_lost(None)
    await asyncio.wait_for(done, 1)  # a tunnel closing is its normal end
    assert sink.ended and not up.reusable


async def test_a_refused_upgrade_is_an_answer_and_its_connection_is_not_reused() -> None:
    up, _ = connected()
    sink = Sink()
    done = up.begin(sink, head_only=False, upgrade=True)
    up.data_received(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno")
    await asyncio.wait_for(done, 1)
    assert (sink.status, sink.data, sink.upgraded_to) == (400, b"no", None)
    assert not up.reusable


async def test_a_101_to_a_request_that_asked_for_no_upgrade_is_a_lost_instance() -> None:
    up, transport = connected()
    sink = Sink()
    done = up.begin(sink, head_only=False)
    up.data_received(SWITCHING)
    with pytest.raises(UpstreamLost):
        await asyncio.wait_for(done, 1)
    assert sink.status == 0 and transport.closed and not up.reusable
