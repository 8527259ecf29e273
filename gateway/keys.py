"""API keys: `kpl_<id>_<secret>`, stored as a sha256 of the secret, checked from memory.

The invocation path never queries Postgres for a key: `KeyCache` holds every active key
and is refreshed on create/revoke, by any gateway (see `gateway.catalog`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import asyncpg

log = logging.getLogger("kapal.gateway.keys")

PREFIX = "kpl"
KEY_RE = re.compile(r"^kpl_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
# Serializes the first-admin-key check between gateways sharing one database.
BOOTSTRAP_LOCK = 0x6B6170616B


class Scope(StrEnum):
    # Everything, including keys and secrets.
    ADMIN = "admin"
    # Deploy, update, list and delete functions.
    DEPLOY = "deploy"
    # Invoke private functions.
    INVOKE = "invoke"
    # Read GET /metrics (a Prometheus scraper's key).
    METRICS = "metrics"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: frozenset[Scope]
    secret_hash: bytes
    # Requests a second this key may make; None: the gateway's default.
    rps: float | None
    created_at: datetime

    def allows(self, scope: Scope) -> bool:
        return Scope.ADMIN in self.scopes or scope in self.scopes


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_key() -> tuple[str, str, bytes]:
    """A fresh key: (id, the full key to show once, the hash to store)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{PREFIX}_{key_id}_{secret}", _hash(secret)


def parse(token: str) -> tuple[str, str] | None:
    m = KEY_RE.match(token)
    return (m.group(1), m.group(2)) if m else None


def _row(r: asyncpg.Record) -> ApiKey:
    return ApiKey(
        r["id"],
        r["name"],
        frozenset(Scope(s) for s in r["scopes"]),
        bytes(r["secret_hash"]),
        r["rps"],
        r["created_at"],
    )


class KeyStore:
    """API keys in Postgres."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(
        self,
        name: str,
        scopes: frozenset[Scope],
        rps: float | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key; the full key string is returned here and never again."""
        key_id, token, digest = new_key()
        row = await (conn or self.pool).fetchrow(
            "INSERT INTO api_keys (id, name, scopes, secret_hash, rps) VALUES ($1, $2, $3, $4, $5)"
            " RETURNING *",
            key_id,
            name,
            sorted(scopes),
            digest,
            rps,
        )
        return _row(row), token

    async def active(self) -> list[ApiKey]:
        rows = await self.pool.fetch(
            "SELECT * FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at, id"
        )
        return [_row(r) for r in rows]

    async def revoke(self, key_id: str) -> bool:
        done = await self.pool.fetchval(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL"
            " RETURNING id",
            key_id,
        )
        return done is not None

    async def bootstrap(self, path: Path) -> str | None:
        """Create the first admin key when no active one exists; write it to `path` (0600).

        Returns the new key, or None when an admin key already exists.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", BOOTSTRAP_LOCK)
            exists = await conn.fetchval(
                "SELECT 1 FROM api_keys WHERE revoked_at IS NULL AND 'admin' = ANY (scopes)"
            )
            if exists:
                return None
            _, token = await self.create("bootstrap-admin", frozenset({Scope.ADMIN}), conn=conn)
            write_private(path, token + "\n")
        return token


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, replacing any older one atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


class KeyCache:
    """Every active key by id, in memory; `verify` is the hot-path check. Kept current by
    the catalog (reloaded when any gateway changes a key)."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.keys: dict[str, ApiKey] = {}

    def verify(self, token: str) -> ApiKey | None:
        parsed = parse(token)
        if parsed is None:
            return None
        key = self.keys.get(parsed[0])
        if key is None:
            return None
        return key if hmac.compare_digest(_hash(parsed[1]), key.secret_hash) else None

    async def refresh(self) -> None:
        self.keys = {k.id: k for k in await self.store.active()}
