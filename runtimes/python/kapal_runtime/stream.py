"""Response bodies a handler produces as it goes: sent chunked, each piece as it is made.

A handler streams by returning a generator, an async generator (any iterator or async
iterator) as its value or as the `body` of a `statusCode` dict. Each item is a `str`
(UTF-8) or `bytes`, written at once: server-sent events are a `text/event-stream` body
of `"data: ...\\n\\n"` items. Sync iterators advance on the handler threads (an item may
block), async ones on the loop. Once the head is sent a failure cannot become an error
answer: the connection is cut, so the caller sees a truncated body, never a whole one.
"""

import contextvars
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeGuard

from aiohttp import web
from multidict import CIMultiDict

from kapal_runtime.threads import HandlerThreads

CONTENT_TYPE = "Content-Type"
TEXT_TYPE = "text/plain; charset=utf-8"
BINARY_TYPE = "application/octet-stream"
# Returned by a sync iterator's step instead of raising StopIteration across threads.
_END = object()


class InvalidChunk(TypeError):
    """A streamed item is neither str nor bytes."""


class Stream:
    """A body made as it is sent (what `to_reply` wraps a returned iterator in)."""

    __slots__ = ("source",)

    def __init__(self, source: Iterator[Any] | AsyncIterator[Any]) -> None:
        self.source = source


# What handlers return most, and never a stream: one set lookup instead of two ABC checks
# (≈ 0.3 µs) on the common path.
_NOT_STREAMS = frozenset((dict, list, tuple, str, bytes, int, float, bool, type(None)))


def is_stream(value: object) -> TypeGuard[Iterator[Any] | AsyncIterator[Any]]:
    # str, bytes, lists and dicts are iterable but not iterators: never streams.
    return type(value) not in _NOT_STREAMS and isinstance(value, Iterator | AsyncIterator)


def _step(source: Iterator[Any]) -> Any:
    return next(source, _END)


def _chunk(item: object) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    raise InvalidChunk(f"a streamed body yields str or bytes, not {type(item).__name__}")


class StreamSender:
    """Sends one streamed reply; `started` once its head is out (no error answer after)."""

    def __init__(
        self,
        request: web.Request,
        status: int,
        headers: CIMultiDict[str],
        body: Stream,
        threads: HandlerThreads,
    ) -> None:
        self.request = request
        self.status = status
        self.headers = headers
        self.source = body.source
        self.threads = threads
        self.response: web.StreamResponse | None = None
        # Each step of a sync iterator runs in this context: its output keeps the tag.
        self._run_in_context = contextvars.copy_context().run

    @property
    def started(self) -> bool:
        return self.response is not None

    async def _next(self) -> object:
        """The next item, or _END."""
        source = self.source
        if isinstance(source, AsyncIterator):
            try:
                return await anext(source)
            except StopAsyncIteration:
                return _END
        return await self.threads.run(self._run_in_context, _step, source)

    async def send(self) -> web.StreamResponse:
        """Write the head once the first item is made (so a failure before it is still an
        error answer), then each item as it comes."""
        if self.request.method == "HEAD":
            await self.aclose()
            item: object = _END
        else:
            item = await self._next()
        if CONTENT_TYPE not in self.headers:
            self.headers[CONTENT_TYPE] = TEXT_TYPE if isinstance(item, str) else BINARY_TYPE
        # Checked before the head: a first item of the wrong type is still an error answer.
        chunk = b"" if item is _END else _chunk(item)
        response = web.StreamResponse(status=self.status, headers=self.headers)
        response.enable_chunked_encoding()
        self.response = response
        await response.prepare(self.request)
        while item is not _END:
            if chunk:  # an empty chunk would end a chunked body early
                try:
                    await response.write(chunk)
                except ConnectionError:  # the caller left: nothing more to make
                    await self.aclose()
                    return response
            item = await self._next()
            if item is not _END:
                chunk = _chunk(item)
        await response.write_eof()
        return response

    def cut(self) -> web.StreamResponse:
        """Failed after the head: drop the connection so the body ends incomplete."""
        assert self.response is not None
        transport = self.request.transport
        if transport is not None:
            transport.abort()
        return self.response

    async def aclose(self) -> None:
        """Finish the handler's generator (its `finally` runs) when it will not be read."""
        source = self.source
        if isinstance(source, AsyncIterator):
            close = getattr(source, "aclose", None)
            if close is not None:
                await close()
        else:
            close = getattr(source, "close", None)
            if close is not None:
                await self.threads.run(self._run_in_context, close)
