"""Back-pressure on one client connection, both ways (after Uvicorn's `FlowControl`).

Reading from the client pauses while any reason holds (a request body buffered past its
high water, requests pipelined far ahead, a parser that gave up, an upgrade not yet
answered, an instance not reading a tunnel's bytes) and resumes when none
does. Writing to it pauses when the transport's buffer passes its high water; the writer
waits in `drain`, and a client that reads nothing for `send_timeout_s` is dropped, so a
stalled reader never costs more than one write buffer for long.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# Why reading is paused (bits: several may hold at once).
BODY_BUFFERED = 1
PIPELINED = 2
STOPPED = 4
# An upgrade waits for the instance's 101: what the client sends next is for the tunnel.
UPGRADING = 8


class FlowControl:
    __slots__ = ("_holds", "_on_stall", "_send_timeout_s", "_stall", "_transport", "_writable")

    def __init__(
        self, transport: asyncio.Transport, send_timeout_s: float, on_stall: Callable[[], None]
    ) -> None:
        self._transport = transport
        self._send_timeout_s = send_timeout_s
        self._on_stall = on_stall
        self._holds = 0
        # Set while writing is paused; done when it may go on.
        self._writable: asyncio.Future[None] | None = None
        self._stall: asyncio.TimerHandle | None = None

    # -- reading -----------------------------------------------------------------------

    @property
    def reading_paused(self) -> bool:
        return self._holds != 0

    def hold(self, reason: int) -> bool:
        """Pause reading for `reason`; True when this call is what paused it."""
        was = self._holds
        self._holds = was | reason
        if not was:
            self._transport.pause_reading()
            return True
        return False

    def release(self, reason: int) -> bool:
        """Drop `reason`; True when this call is what resumed reading."""
        was = self._holds
        if not was & reason:
            return False
        self._holds = was & ~reason
        if not self._holds:
            self._transport.resume_reading()
            return True
        return False

    # -- writing -----------------------------------------------------------------------

    @property
    def write_paused(self) -> bool:
        return self._writable is not None

    def pause_writing(self) -> None:
        if self._writable is None:
            loop = asyncio.get_running_loop()
            self._writable = loop.create_future()
            self._stall = loop.call_later(self._send_timeout_s, self._stalled)

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if writable is not None and not writable.done():
            writable.set_result(None)

    async def drain(self) -> None:
        """Wait until the client has read enough for writing to go on (or is gone)."""
        if self._writable is not None:
            await self._writable

    def _stalled(self) -> None:
        self._stall = None
        self._on_stall()

    def close(self) -> None:
        """The connection is gone: nothing waits on it any more."""
        self.resume_writing()
