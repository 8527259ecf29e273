"""Client connections on the public port: their timeouts, and who may open one more.

`ConnectionTable` knows every open connection, which are idle (no request being served)
and since when, and how many each address holds. `admit` decides what a new connection
gets: served; served but kept off the function path (over the cap, nothing idle to close
for it, so the management API and `/healthz` stay reachable); or refused. When it names a
connection to evict, the caller closes that one.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.settings import Settings

C = TypeVar("C", bound=Hashable)

# Connections past the cap that may still reach the management API and /healthz.
RESERVE = 64


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    # Seconds to send a whole request head, from the first byte (or from connecting).
    header_timeout_s: float = 30.0
    # Longest pause while a request body is arriving, in seconds.
    body_timeout_s: float = 60.0
    # Seconds a connection may sit idle between requests.
    keepalive_timeout_s: float = 75.0
    # Seconds a response may wait on a client that reads nothing.
    send_timeout_s: float = 60.0
    # Open connections before the longest-idle one is closed for a new one.
    max_connections: int = 10_000
    # Open connections from one address (0: no limit).
    max_per_address: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            keepalive_timeout_s=settings.keepalive_timeout_s,
            send_timeout_s=settings.send_timeout_s,
            max_connections=settings.max_connections,
            max_per_address=settings.max_connections_per_address,
        )


class Verdict(enum.Enum):
    SERVE = "serve"
    # Only the management API and /healthz: /fn/ answers 503.
    NO_FUNCTIONS = "no_functions"
    # Over the per-address cap: answered 429 and closed.
    TOO_MANY_FROM_ADDRESS = "too_many_from_address"
    # Over the cap and its reserve: answered 503 and closed.
    FULL = "full"


@dataclass(frozen=True, slots=True)
class Admission(Generic[C]):
    verdict: Verdict
    # An idle connection to close to make room, if any.
    evict: C | None = None


class ConnectionTable(Generic[C]):
    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.count = 0
        self._address: dict[C, bytes] = {}
        self._per_address: dict[bytes, int] = {}
        # Idle connections, longest-idle first (dicts keep insertion order).
        self._idle: dict[C, None] = {}
        self._idle_at: dict[bytes, dict[C, None]] = {}

    def admit(self, conn: C, address: bytes) -> Admission[C]:
        """Decide for a new connection; admitted ones count (and start idle)."""
        limits = self.limits
        evict: C | None = None
        if limits.max_per_address and self._per_address.get(address, 0) >= limits.max_per_address:
            evict = next(iter(self._idle_at.get(address, ())), None)
            if evict is None:
                return Admission(Verdict.TOO_MANY_FROM_ADDRESS)
        verdict = Verdict.SERVE
        if evict is None and self.count >= limits.max_connections:
            evict = next(iter(self._idle), None)
            if evict is None:
                if self.count >= limits.max_connections + RESERVE:
                    return Admission(Verdict.FULL)
                verdict = Verdict.NO_FUNCTIONS
        if evict is not None:
            self.remove(evict)  # counted out now: the caller's close lands later
        self.count += 1
        self._address[conn] = address
        self._per_address[address] = self._per_address.get(address, 0) + 1
        self.idle(conn)
        return Admission(verdict, evict)

    def idle(self, conn: C) -> None:
        """`conn` serves nothing now (and may be closed for a newcomer)."""
        address = self._address.get(conn)
        if address is None:
            return
        self._idle.pop(conn, None)
        self._idle[conn] = None
        at = self._idle_at.get(address)
        if at is None:
            at = self._idle_at[address] = {}
        at.pop(conn, None)
        at[conn] = None

    def busy(self, conn: C) -> None:
        """`conn` has a request to serve."""
        if self._idle.pop(conn, 0) is None:
            address = self._address[conn]
            at = self._idle_at[address]
            del at[conn]
            if not at:
                del self._idle_at[address]

    def remove(self, conn: C) -> None:
        address = self._address.pop(conn, None)
        if address is None:
            return
        self.count -= 1
        left = self._per_address[address] - 1
        if left:
            self._per_address[address] = left
        else:
            del self._per_address[address]
        if self._idle.pop(conn, 0) is None:
            at = self._idle_at[address]
            del at[conn]
            if not at:
                del self._idle_at[address]

    def is_idle(self, conn: C) -> bool:
        return conn in self._idle
