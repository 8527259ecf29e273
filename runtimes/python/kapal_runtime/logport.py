"""The log port: where the gateway pulls the function's lines, `GET /_/logs`.

A listener of its own (aiohttp's low-level server), apart from the invocation app, so it
stays open while the main server drains and after it closed.

`GET /_/logs?after=SEQ&wait=SECONDS&limit=BYTES`
- `after` (int >= 0, default 0): the caller stored every line up to SEQ; they are freed.
- `wait` (0..30 s, default 0): with no line past `after`, hold the request until one is
  added (then a few ms more, or until 64 KiB are ready, to answer with a batch) or `wait`
  passes. Lines added by other threads wake the loop once per batch, not once per line.
- `limit` (int >= 1, default 1 MiB): about that many bytes at most, but at least one line.
200 `text/plain; charset=utf-8`, one row per line in PostgreSQL COPY text format:
`seq TAB ts TAB stream TAB level TAB request_id TAB text LF` (ts `%.6f` epoch seconds;
level and request_id `\\N` when null; backslash, TAB, LF and CR in a field escaped).
Headers: `X-Kapal-Log-Last` (seq of the last row; the last acked seq when there are none),
`X-Kapal-Log-Dropped` (lines dropped by the caps since start), `X-Kapal-Log-Function` and
`X-Kapal-Log-Version` (what the runtime serves now). A bad parameter is a 400
`invalid_parameter` naming it; another path 404; another method 405.

At shutdown, after the main server drained and `stopped` was logged, the port stays open
until every line is acked or the drain time passes.
"""

import asyncio
import math
import os
from collections.abc import AsyncIterator, Callable, Mapping

from aiohttp import web

from kapal_runtime.errors import REQUEST_ID, error, not_allowed
from kapal_runtime.logbuffer import LogBuffer

PATH = "/_/logs"
MAX_WAIT_S = 30.0
DEFAULT_LIMIT = 1 << 20
# Once a line arrives for a held pull: answer this much later, or once this much is ready.
BATCH_S = 0.01
BATCH_BYTES = 64 * 1024
_BATCH_STEP_S = 0.002

TEXT_TYPE = "text/plain; charset=utf-8"


class BadParameter(ValueError):
    pass


class LogPort:
    def __init__(
        self,
        buffer: LogBuffer,
        port: int,
        serving: Callable[[], tuple[str, int]],
        drain_s: float,
        host: str = "0.0.0.0",
    ) -> None:
        self.buffer = buffer
        self.port = port
        self.host = host
        self.drain_s = drain_s
        # (function, version) the runtime serves now.
        self._serving = serving
        self._server: web.Server | None = None
        self._listener: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Pulls held until a line is added, and whether the buffer will wake them.
        self._waiting: set[asyncio.Future[None]] = set()
        self._armed = False
        self._acked = asyncio.Event()
        self._closing = False
        # Whether a gateway ever pulled: a container nobody collects from (a prewarmed
        # one never specialized) does not wait at exit for acks that will not come.
        self._pulled = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = web.Server(self._handle, access_log=None)
        self._listener = await self._loop.create_server(
            self._server, self.host, self.port, reuse_address=True
        )

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        """Open before the main server listens; closed after it stopped and lines drained."""
        await self.start()
        yield
        await self.drain()
        await self.close()

    async def drain(self) -> None:
        """Until every line is acked, or `drain_s` passes (not at all if nobody pulls)."""
        if not self._pulled:
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + self.drain_s
        while self.buffer.acked < self.buffer.last_seq:
            left = until - loop.time()
            if left <= 0:
                return
            self._acked.clear()
            try:
                await asyncio.wait_for(self._acked.wait(), left)
            except TimeoutError:
                return

    async def close(self) -> None:
        self._closing = True
        self._wake()  # held pulls answer now, with what there is
        if self._listener is not None:
            self._listener.close()
        if self._server is not None:
            await self._server.shutdown(1.0)
        if self._listener is not None:
            await self._listener.wait_closed()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        request_id = request.headers.get(REQUEST_ID) or os.urandom(16).hex()
        if request.path != PATH:
            return error("not_found", f"no log endpoint {request.path}", request_id)
        if request.method != "GET":
            return not_allowed("GET", request_id)
        try:
            after, wait, limit = parse_query(request.query)
        except BadParameter as exc:
            return error("invalid_parameter", str(exc), request_id)
        self._pulled = True
        buffer = self.buffer
        buffer.ack(after)
        if buffer.acked >= buffer.last_seq:
            self._acked.set()
        if wait > 0 and buffer.last_seq <= after and not self._closing:
            if await self._wait_for_line(after, wait):
                await self._gather()
        body, last = buffer.read(after, limit)
        function, version = self._serving()
        headers = {
            "Content-Type": TEXT_TYPE,
            "X-Kapal-Log-Last": str(last),
            "X-Kapal-Log-Dropped": str(buffer.dropped),
            "X-Kapal-Log-Function": function,
            "X-Kapal-Log-Version": str(version),
            REQUEST_ID: request_id,
        }
        return web.Response(body=body, headers=headers)

    async def _wait_for_line(self, after: int, wait: float) -> bool:
        """True once a line past `after` is there, False if `wait` passed first."""
        assert self._loop is not None
        held = self._loop.create_future()
        self._waiting.add(held)
        try:
            if not self._armed:
                if not self.buffer.wake_on_next(after, self._wake_from_any_thread):
                    return True  # one was added since we looked
                self._armed = True
            await asyncio.wait_for(held, wait)
        except TimeoutError:
            return False
        finally:
            self._waiting.discard(held)
        return self.buffer.last_seq > after

    async def _gather(self) -> None:
        """A line came: let a batch follow it before answering (the loop polls, threads
        adding lines do not wake it again)."""
        assert self._loop is not None
        until = self._loop.time() + BATCH_S
        while not self._closing and self.buffer.pending_bytes < BATCH_BYTES:
            if self._loop.time() >= until:
                return
            await asyncio.sleep(_BATCH_STEP_S)

    def _wake_from_any_thread(self) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: the process is exiting
            pass

    def _wake(self) -> None:
        self._armed = False
        for held in self._waiting:
            if not held.done():
                held.set_result(None)


def parse_query(query: Mapping[str, str]) -> tuple[int, float, int]:
    """(after, wait, limit) of a pull; BadParameter names the one that is wrong."""
    after = _integer(query.get("after"), "after", 0, 0)
    wait = _seconds(query.get("wait"))
    limit = _integer(query.get("limit"), "limit", DEFAULT_LIMIT, 1)
    return after, wait, limit


def _integer(raw: str | None, name: str, default: int, least: int) -> int:
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < least:
        raise BadParameter(f"{name} must be an integer >= {least}, not {raw!r}")
    return int(raw)


def _seconds(raw: str | None) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_WAIT_S:  # also refuses nan
        raise BadParameter(f"wait must be seconds from 0 to {MAX_WAIT_S:g}, not {raw!r}")
    return value
