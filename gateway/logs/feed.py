"""Following a function's logs as they are stored, by whichever gateway stored them.

Each gateway LISTENs on `kapal_logs` (one connection) and wakes the followers of the
functions a write named; a follower then reads the batches it has not seen. Batches are
numbered when their transaction starts, so two gateways' writes can commit out of
order: a follower remembers the numbers below the highest it saw that it has not seen
(gaps) and asks for those too, for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

from gateway import db
from gateway.logs.writer import CHANNEL

log = logging.getLogger("kapal.gateway.logs")

# How long a gap (a batch number not seen) is asked for: longer than a write takes.
GAP_S = 10.0
# Most gaps remembered below a batch just seen.
MAX_GAPS = 256
# Followers also look every this often (a missed notification, a lost listener).
POLL_S = 2.0


class LogFeed:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._followers: dict[str, set[asyncio.Event]] = {}

    @contextlib.contextmanager
    def follow(self, function: str) -> Iterator[asyncio.Event]:
        """An event set whenever lines of `function` may have been stored."""
        wake = asyncio.Event()
        self._followers.setdefault(function, set()).add(wake)
        try:
            yield wake
        finally:
            followers = self._followers.get(function)
            if followers is not None:
                followers.discard(wake)
                if not followers:
                    del self._followers[function]

    def _notified(self, function: str) -> None:
        for wake in self._followers.get(function, ()):
            wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        await db.listen(self.database_url, CHANNEL, self._notified, self._missed, stop, "log")

    def _missed(self) -> None:
        for function in list(self._followers):  # what came while not listening
            self._notified(function)


class BatchCursor:
    """Which write batches of one function a follower has read."""

    def __init__(self, after: int) -> None:
        self.highest = after
        # Numbers below `highest` not seen yet -> when they became a gap.
        self.gaps: dict[int, float] = {}

    def wanted(self) -> tuple[int, list[int]]:
        """(read batches above this, and these)."""
        now = time.monotonic()
        for b in [b for b, at in self.gaps.items() if now - at > GAP_S]:
            del self.gaps[b]
        return self.highest, sorted(self.gaps)

    def saw(self, batches: set[int]) -> None:
        now = time.monotonic()
        for b in sorted(batches):
            if b > self.highest:
                # Only recent numbers can still commit (a write takes well under GAP_S).
                for missing in range(max(self.highest + 1, b - MAX_GAPS), b):
                    self.gaps[missing] = now
                self.highest = b
            else:
                self.gaps.pop(b, None)
