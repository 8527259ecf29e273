"""Webhook endpoints in Postgres."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from gateway.errors import NotFound
from gateway.sqlfile import load
from gateway.webhooks.verify import Verify

Q = load(Path(__file__).with_name("queries.sql"))


@dataclass(frozen=True)
class Webhook:
    id: str
    function: str
    verify: Verify
    created_at: datetime
    rotated_at: datetime | None
    # Only filled where it is needed: verifying a delivery.
    secret: str = ""

    @classmethod
    def from_row(cls, r: asyncpg.Record) -> Webhook:
        secret = r["secret"] if "secret" in r else ""
        return cls(
            r["id"], r["function"], Verify(r["verify"]), r["created_at"], r["rotated_at"], secret
        )


class WebhookStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(self, id: str, function: str, verify: Verify, secret: str) -> Webhook:
        return Webhook.from_row(await self.pool.fetchrow(Q["insert"], id, function, verify, secret))

    async def get(self, id: str) -> Webhook:
        row = await self.pool.fetchrow(Q["get"], id)
        if row is None:
            raise NotFound(f"webhook {id} not found")
        return Webhook.from_row(row)

    async def all(self) -> list[Webhook]:
        return [Webhook.from_row(r) for r in await self.pool.fetch(Q["list"])]

    async def rotate(self, id: str, secret: str) -> Webhook:
        row = await self.pool.fetchrow(Q["rotate"], id, secret)
        if row is None:
            raise NotFound(f"webhook {id} not found")
        return Webhook.from_row(row)

    async def delete(self, id: str) -> None:
        if await self.pool.fetchval(Q["delete"], id) is None:
            raise NotFound(f"webhook {id} not found")
