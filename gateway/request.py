"""A request as the front server parses it, and its body as it arrives.

The body is read by the exchange that forwards it while the connection is still feeding
it; past a high water the connection pauses reading until the buffer drains.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

# A body buffered past this pauses reading from the client until it is forwarded.
BODY_HIGH_WATER = 1 << 20

# (status, code, message) of an answer the connection gives on its own.
Failure = tuple[int, str, str]


class BodySource(Protocol):
    """The connection a body arrives on."""

    gone: bool

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class TooLarge(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BodyIncomplete(Exception):
    """The request body will not arrive whole: malformed, stalled, or the client left.

    `failure` is the answer owed to the client (None when it is gone).
    """

    def __init__(self, failure: Failure | None) -> None:
        super().__init__(failure[2] if failure else "the client closed the connection")
        self.failure = failure


class Body:
    """A request body as it arrives from the client."""

    __slots__ = ("chunks", "complete", "conn", "discard", "failure", "kept", "size", "waiter")

    def __init__(self, conn: BodySource | None) -> None:
        self.conn = conn
        self.chunks: deque[bytes] = deque()
        self.kept: list[bytes] = []
        self.size = 0
        self.complete = False
        self.discard = False
        self.failure: Failure | None = None
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

    def fail(self, failure: Failure) -> None:
        self.failure = failure
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def next(self) -> bytes | None:
        """The next chunk, or None at the end; resumes reading when the buffer drains.

        Raises BodyIncomplete when the rest cannot arrive.
        """
        while not self.chunks:
            if self.failure is not None:
                raise BodyIncomplete(self.failure)
            if self.complete or self.conn is None:
                return None
            if self.conn.gone:
                raise BodyIncomplete(None)
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        if self.failure is not None:
            raise BodyIncomplete(self.failure)
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
        "upgrade",
        "url",
    )

    def __init__(self, conn: BodySource | None) -> None:
        self.url = b""
        self.method = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.keep_alive = True
        self.chunked = False
        self.content_length: int | None = None
        self.expect_continue = False
        # The protocol the client switches to once the instance answers 101 (b"websocket");
        # b"" for a plain request.
        self.upgrade = b""
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
