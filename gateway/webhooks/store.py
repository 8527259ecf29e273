"""Webhook endpoints in Postgres, their signing secrets sealed with the secrets' cipher."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from gateway.errors import NotFound
from gateway.sqlfile import load
from gateway.vault import SecretCipher
from gateway.webhooks.verify import Verify

Q = load(Path(__file__).with_name("queries.sql"))

log = logging.getLogger("kapal.gateway.webhooks")


def sealed_as(id: str) -> str:
    """What a webhook's sealed secret is bound to: that webhook, and no secret (their names
    have no '/')."""
    return f"webhook/{id}"


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
        return cls(r["id"], r["function"], Verify(r["verify"]), r["created_at"], r["rotated_at"])


class WebhookStore:
    def __init__(self, pool: asyncpg.Pool, cipher: SecretCipher) -> None:
        self.pool = pool
        self.cipher = cipher

    async def create(self, id: str, function: str, verify: Verify, secret: str) -> Webhook:
        sealed = self.cipher.seal(sealed_as(id), secret)
        return Webhook.from_row(await self.pool.fetchrow(Q["insert"], id, function, verify, sealed))

    async def get(self, id: str) -> Webhook:
        """The webhook with its secret in clear (for verifying a delivery)."""
        row = await self.pool.fetchrow(Q["get"], id)
        if row is None:
            raise NotFound(f"webhook {id} not found")
        sealed = row["sealed"]
        if sealed is not None:
            secret = self.cipher.open(sealed_as(id), bytes(sealed))
        else:
            secret = row["secret"] or ""
        return dataclasses.replace(Webhook.from_row(row), secret=secret)

    async def all(self) -> list[Webhook]:
        return [Webhook.from_row(r) for r in await self.pool.fetch(Q["list"])]

    async def rotate(self, id: str, secret: str) -> Webhook:
        row = await self.pool.fetchrow(Q["rotate"], id, self.cipher.seal(sealed_as(id), secret))
        if row is None:
            raise NotFound(f"webhook {id} not found")
        return Webhook.from_row(row)

    async def delete(self, id: str) -> None:
        if await self.pool.fetchval(Q["delete"], id) is None:
            raise NotFound(f"webhook {id} not found")


async def seal_plaintext(pool: asyncpg.Pool, cipher: SecretCipher) -> int:
    """Seal the secrets of rows still in clear (written before migration 0006); how many
    were found.

    The key never reaches the database, so this is the migration's second half, run by
    every gateway as it starts; rows another gateway sealed meanwhile are left as they are.
    """
    rows = await pool.fetch(Q["in_clear"])
    if not rows:
        return 0
    sealed = [(r["id"], r["secret"], cipher.seal(sealed_as(r["id"]), r["secret"])) for r in rows]
    await pool.executemany(Q["seal"], sealed)
    log.info("webhook secrets sealed", extra={"webhooks": len(rows)})
    return len(rows)
