"""This gateway among the others on one database: who leads, and what each observes.

- Leadership: the gateway holding a session advisory lock (per namespace) scales the
  pools; when its connection ends (it died, or lost the database) another takes over
  within `elect_s`.
- A broadcast channel on Postgres NOTIFY (`kapal_peers`): the scheduler's load reports
  and park announcements, and the demand behind each rate limit, so every gateway takes
  its share of a limit that holds across all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections import deque
from typing import Any

import asyncpg

from gateway.ratelimit import RateLimiter
from scheduler.scheduler import Scheduler

log = logging.getLogger("kapal.gateway.cluster")

CHANNEL = "kapal_peers"
# A gateway not heard from for this long is gone.
PEER_TTL_S = 2.0
# NOTIFY payloads must stay under 8000 bytes.
MAX_PAYLOAD = 7900


def new_gateway_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Cluster:
    def __init__(
        self,
        database_url: str,
        namespace: str,
        limiter: RateLimiter,
        gateway_id: str | None = None,
        *,
        elect_s: float = 1.0,
        report_s: float = 0.25,
    ) -> None:
        self.database_url = database_url
        self.namespace = namespace
        self.lock_name = f"kapal-leader:{namespace}"
        self.limiter = limiter
        self.id = gateway_id or new_gateway_id()
        self.elect_s = elect_s
        self.report_s = report_s
        self.scheduler: Scheduler | None = None
        self.leading = False
        self._seen: dict[str, float] = {}
        self._gone: set[str] = set()
        self._demand: dict[str, tuple[float, dict[str, int]]] = {}
        self._outbox: deque[str] = deque()
        self._send = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        # Set once the first election was tried (a lone gateway leads before it serves).
        self.tried = asyncio.Event()

    # -- the scheduler's Peers ---------------------------------------------------------

    def publish(self, message: dict[str, Any]) -> None:
        payload = json.dumps({**message, "g": self.id, "n": self.namespace}, separators=(",", ":"))
        if len(payload) > MAX_PAYLOAD:
            log.warning("peer message too large; dropped", extra={"bytes": len(payload)})
            return
        self._outbox.append(payload)
        self._send.set()

    def others(self) -> int:
        return len(self.peers())

    async def others_staying(self) -> bool:
        """Whether another gateway is still running, asked as this one stops.

        A gateway killed a moment ago still looks alive for PEER_TTL_S; only one heard
        from after the question counts (live ones report every `report_s`).
        """
        if not self.peers():
            return False
        since = time.monotonic()
        while time.monotonic() - since < PEER_TTL_S:
            if any(at > since for at in self._seen.values()):
                return True
            await asyncio.sleep(self.report_s / 2)
        return False

    def peers(self) -> list[str]:
        """The other gateways of this namespace heard from lately."""
        now = time.monotonic()
        return sorted(g for g, at in self._seen.items() if now - at <= PEER_TTL_S)

    async def leave(self, pool: asyncpg.Pool) -> None:
        """Tell the others this gateway is gone (after `run` has stopped)."""
        payload = json.dumps({"t": "bye", "g": self.id, "n": self.namespace})
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            await pool.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)

    # -- receiving ---------------------------------------------------------------------

    def _received(self, payload: str) -> None:
        try:
            message = json.loads(payload)
            sender = str(message["g"])
        except (ValueError, KeyError, TypeError):
            return
        # Gateways of other namespaces may share the database: not our peers.
        if sender == self.id or sender in self._gone or message.get("n") != self.namespace:
            return
        if message.get("t") == "bye":  # it stopped cleanly: not counted as staying
            # Its earlier messages went out on another connection and may come later.
            self._gone.add(sender)
            self._seen.pop(sender, None)
            self._demand.pop(sender, None)
            return
        now = time.monotonic()
        self._seen[sender] = now
        if message.get("t") == "rate":
            self._demand[sender] = (now, {str(k): int(v) for k, v in message["r"].items()})
        elif self.scheduler is not None:
            self.scheduler.receive(sender, message)

    def _update_shares(self, mine: dict[str, int]) -> None:
        """Each gateway's share of a limit follows its share of the demand."""
        now = time.monotonic()
        remote: dict[str, list[int]] = {}
        for at, demand in self._demand.values():
            if now - at <= PEER_TTL_S:
                for bucket, n in demand.items():
                    remote.setdefault(bucket, []).append(n)
        shares = {}
        for bucket, others in remote.items():
            own = mine.get(bucket, 0)
            # Smoothed so that a gateway with no demand yet still gets a little.
            shares[bucket] = (own + 1) / (own + sum(others) + len(others) + 1)
        self.limiter.shares = shares

    # -- the loops ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        sender = asyncio.create_task(self._sender(stop), name="kapal-peers-send")
        try:
            while not stop.is_set():
                try:
                    await self._session(stop)
                except (OSError, asyncpg.PostgresError) as e:
                    log.warning("cluster connection lost", extra={"error": str(e)})
                self.tried.set()
                self._step_down()
                if not stop.is_set():
                    await asyncio.sleep(self.elect_s)
        finally:
            self._step_down()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _session(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(self.database_url)
        self._conn = conn
        try:
            await conn.add_listener(CHANNEL, lambda *args: self._received(str(args[-1])))
            next_report = 0.0
            while not stop.is_set():
                if not self.leading:
                    got = await conn.fetchval(
                        "SELECT pg_try_advisory_lock(hashtext($1))", self.lock_name
                    )
                    if got:
                        self.leading = True
                        if self.scheduler is not None:
                            await self.scheduler.lead()
                    self.tried.set()
                else:
                    await conn.fetchval("SELECT 1")  # still connected, so still holding it
                now = time.monotonic()
                if now >= next_report:
                    next_report = now + self.report_s
                    mine = self.limiter.take_demand()
                    self._update_shares(mine)
                    self.publish({"t": "rate", "r": mine} if mine else {"t": "hello"})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(self.elect_s, self.report_s))
        finally:
            self._conn = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)

    def _step_down(self) -> None:
        if self.leading:
            self.leading = False
            if self.scheduler is not None:
                self.scheduler.follow()

    async def _sender(self, stop: asyncio.Event) -> None:
        conn: asyncpg.Connection | None = None
        try:
            while not stop.is_set():
                await self._send.wait()
                self._send.clear()
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(self.database_url)
                    while self._outbox:
                        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, self._outbox[0])
                        self._outbox.popleft()
                except (OSError, asyncpg.PostgresError) as e:
                    log.warning("peer message not sent", extra={"error": str(e)})
                    self._outbox.clear()
                    conn = None
                    await asyncio.sleep(0.5)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2.0)
