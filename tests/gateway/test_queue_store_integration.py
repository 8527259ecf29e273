"""The queue's store on a real Postgres, without a gateway: leases, results, retention."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway import db
from gateway.queue.lanes import Lane
from gateway.queue.models import NewInvocation, Outcome
from gateway.queue.store import QueueStore
from tests.conftest import PostgresServer

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(postgres: PostgresServer) -> AsyncIterator[QueueStore]:
    pool = await db.connect(postgres.new_database())
    yield QueueStore(pool)
    await pool.close()


def item(function: str = "f", key: str | None = None) -> NewInvocation:
    return NewInvocation(uuid.uuid4(), function, "POST", "/", [("A", "b")], b"x", 1, key)


async def test_claims_are_exclusive_and_only_the_current_claim_records(store: QueueStore) -> None:
    await store.enqueue([item() for _ in range(5)])
    first = await store.claim(Lane("f"), 3, "w1", 30, 100)
    second = await store.claim(Lane("f"), 10, "w2", 30, 100)
    assert len(first) == 3 and len(second) == 2
    assert not {c.id for c in first} & {c.id for c in second}
    assert await store.claim(Lane("f"), 10, "w3", 30, 100) == []
    row = first[0]
    outcome = Outcome(row.id, row.attempt, "succeeded", None, 200, {}, b"ok", None)
    assert await store.finish("w2", [outcome]) == set()  # not w2's claim
    assert await store.finish("w1", [outcome]) == {row.id}
    assert await store.finish("w1", [outcome]) == set()  # recorded once


async def test_claims_racing_on_many_connections_stay_within_the_function_concurrency(
    postgres: PostgresServer,
) -> None:
    url = postgres.new_database()
    pool = await db.connect(url)
    await QueueStore(pool).enqueue([item() for _ in range(50)])
    # Gateways each with a store of their own, claiming at the same moment.
    stores = [QueueStore(await asyncpg.create_pool(url, min_size=1, max_size=1)) for _ in range(8)]
    try:
        for _ in range(3):
            claims = await asyncio.gather(
                *(s.claim(Lane("f"), 5, f"w{i}", 30, 2) for i, s in enumerate(stores))
            )
            running = await pool.fetchval(
                "SELECT count(*) FROM invocations WHERE status = 'running'"
            )
            assert sum(len(c) for c in claims) <= 2 and running == 2
    finally:
        for s in stores:
            await s.pool.close()
        await pool.close()


async def test_expired_leases_are_run_again_or_dead(store: QueueStore) -> None:
    await store.enqueue([item()])
    (claimed,) = await store.claim(Lane("f"), 1, "lost", 30, 100)
    await store.pool.execute("UPDATE invocations SET lease_until = now() - interval '1 s'")
    assert await store.recover_expired() == [("f", "queued")]
    (again,) = await store.claim(Lane("f"), 1, "w2", 30, 100)
    assert again.id == claimed.id and again.attempt == 2
    await store.pool.execute("UPDATE invocations SET lease_until = now() - interval '1 s'")
    assert await store.recover_expired() == [("f", "dead")]
    row = await store.get(claimed.id)
    assert row is not None and row["status"] == "dead"  # max_retries=1: two attempts


async def test_idempotency_within_and_across_batches(store: QueueStore) -> None:
    a, b = item(key="k"), item(key="k")
    ids = await store.enqueue([a, b, item(function="g", key="k")])
    assert ids[0] == ids[1] == a.id and ids[2] != a.id
    assert await store.enqueue([item(key="k")]) == [a.id]


async def test_retention_keeps_dead_letters_and_recent_rows(store: QueueStore) -> None:
    old_done, old_dead, recent = item(), item(), item()
    await store.enqueue([old_done, old_dead, recent])
    await store.pool.execute(
        "UPDATE invocations SET status = CASE WHEN id = $1 THEN 'dead' ELSE 'succeeded' END,"
        " finished_at = CASE WHEN id = $2 THEN now() ELSE now() - interval '30 days' END",
        old_dead.id,
        recent.id,
    )
    assert await store.retain(7) == 1
    left = {r["id"] for r in await store.pool.fetch("SELECT id FROM invocations")}
    assert left == {old_dead.id, recent.id}


async def test_schema_matches_the_queue_queries(store: QueueStore) -> None:
    # Every named query prepares against the migrated schema (catches drift early).
    from gateway.jobs import store as jobs
    from gateway.queue import store as queue
    from gateway.schedules import store as schedules
    from gateway.webhooks import store as webhooks

    async with store.pool.acquire() as conn:
        for module in (queue, jobs, schedules, webhooks):
            for name, sql in module.Q.items():
                try:
                    await conn.prepare(sql)
                except asyncpg.PostgresError as e:
                    raise AssertionError(f"{module.__name__} {name}: {e}") from e


async def test_an_item_the_database_refuses_fails_alone(store: QueueStore) -> None:
    good1, good2 = item(), item()
    bad = NewInvocation(uuid.uuid4(), "f", "POST", "/", [("X", "\udcff")], b"", 1)
    out = await store.enqueue([good1, bad, good2])
    assert out[0] == good1.id and out[2] == good2.id
    assert isinstance(out[1], asyncpg.DataError)
    ids = {r["id"] for r in await store.pool.fetch("SELECT id FROM invocations")}
    assert ids == {good1.id, good2.id}


async def test_concurrency_limits_hold_across_workers(store: QueueStore) -> None:
    job = uuid.uuid4()
    await store.pool.execute(
        "INSERT INTO jobs (id, function, total, max_concurrency, max_retries)"
        " VALUES ($1, 'f', 4, 2, 0)",
        job,
    )
    await store.enqueue([item() for _ in range(6)])
    await store.pool.execute(
        "UPDATE invocations SET job_id = $1"
        " WHERE id IN (SELECT id FROM invocations ORDER BY seq LIMIT 4)",
        job,
    )
    # Function limit 3: two workers asking for 5 each get 3 between them.
    a = await store.claim(Lane("f", job), 5, "w1", 30, 3, 2)
    assert len(a) == 2  # the job's own limit
    b = await store.claim(Lane("f"), 5, "w2", 30, 3)
    assert len(b) == 1
    assert await store.claim(Lane("f"), 5, "w3", 30, 3) == []
    assert await store.claim(Lane("f", job), 5, "w3", 30, 10, 2) == []  # job still full
    outcome = Outcome(a[0].id, a[0].attempt, "succeeded", None, 200, {}, b"", None)
    await store.finish("w1", [outcome])
    assert len(await store.claim(Lane("f", job), 5, "w3", 30, 10, 2)) == 1
