"""Webhook secrets at rest, on a real Postgres: sealed, never in clear, old rows sealed."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway import db
from gateway.vault import SecretCipher, SecretKeyError
from gateway.webhooks.store import WebhookStore, seal_plaintext
from gateway.webhooks.verify import Verify
from tests.conftest import PostgresServer

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(postgres: PostgresServer) -> AsyncIterator[WebhookStore]:
    pool = await db.connect(postgres.new_database())
    yield WebhookStore(pool, SecretCipher(os.urandom(32)))
    await pool.close()


async def row(store: WebhookStore, id: str) -> asyncpg.Record:
    found = await store.pool.fetchrow("SELECT * FROM webhooks WHERE id = $1", id)
    assert found is not None
    return found


async def test_a_webhooks_row_holds_no_plaintext_secret(store: WebhookStore) -> None:
    hook = await store.create("wh_1", "f", Verify.GITHUB, "gh-secret-in-clear")
    assert hook.secret == ""  # not handed around beyond the answer that shows it once
    stored = await row(store, "wh_1")
    assert stored["secret"] is None
    assert b"gh-secret-in-clear" not in bytes(stored["sealed"])
    assert all("gh-secret-in-clear" not in str(v) for v in stored.values())
    assert (await store.get("wh_1")).secret == "gh-secret-in-clear"
    assert all(h.secret == "" for h in await store.all())


async def test_rotation_seals_the_new_secret(store: WebhookStore) -> None:
    await store.create("wh_1", "f", Verify.HMAC_SHA256, "first-secret")
    before = bytes((await row(store, "wh_1"))["sealed"])
    rotated = await store.rotate("wh_1", "second-secret")
    assert rotated.rotated_at is not None
    stored = await row(store, "wh_1")
    assert stored["secret"] is None and bytes(stored["sealed"]) != before
    assert b"second-secret" not in bytes(stored["sealed"])
    assert (await store.get("wh_1")).secret == "second-secret"


async def test_a_sealed_secret_belongs_to_its_webhook(store: WebhookStore) -> None:
    await store.create("wh_a", "f", Verify.GITHUB, "secret-of-a")
    await store.create("wh_b", "f", Verify.GITHUB, "secret-of-b")
    await store.pool.execute(
        "UPDATE webhooks SET sealed = (SELECT sealed FROM webhooks WHERE id = 'wh_a')"
        " WHERE id = 'wh_b'"
    )
    with pytest.raises(SecretKeyError):
        await store.get("wh_b")


async def test_rows_written_in_clear_are_sealed_once(store: WebhookStore) -> None:
    # What a gateway of before migration 0006 left (or wrote beside a newer one).
    await store.pool.execute(
        "INSERT INTO webhooks (id, function, verify, secret) VALUES"
        " ('wh_old', 'f', 'github', 'old-secret'), ('wh_none', 'f', 'none', '')"
    )
    assert (await store.get("wh_old")).secret == "old-secret"  # served meanwhile
    assert await seal_plaintext(store.pool, store.cipher) == 2
    for id, secret in (("wh_old", "old-secret"), ("wh_none", "")):
        stored = await row(store, id)
        assert stored["secret"] is None and stored["sealed"] is not None
        assert (await store.get(id)).secret == secret
    assert await seal_plaintext(store.pool, store.cipher) == 0


async def test_a_row_never_holds_both(store: WebhookStore) -> None:
    await store.create("wh_1", "f", Verify.GITHUB, "a-secret-1")
    with pytest.raises(asyncpg.CheckViolationError):
        await store.pool.execute("UPDATE webhooks SET secret = 'again' WHERE id = 'wh_1'")
