"""Pure and in-memory parts of the queue: group commit, named queries, claim choice."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from gateway import sqlfile
from gateway.queue.batcher import GroupCommit
from gateway.queue.models import Candidate, encode_body


async def test_group_commit_batches_concurrent_submits_and_answers_each() -> None:
    batches: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    stop = asyncio.Event()
    gc: GroupCommit[int, int] = GroupCommit("t", flush, max_batch=50, window_s=0.005)
    runner = asyncio.create_task(gc.run(stop))
    results = await asyncio.gather(*(gc.submit(i) for i in range(120)))
    assert results == [i * 10 for i in range(120)]
    assert sum(len(b) for b in batches) == 120
    assert len(batches) < 120 / 10  # grouped, not one write per item
    assert max(len(b) for b in batches) <= 50
    stop.set()
    await runner


async def test_group_commit_failure_reaches_every_caller_of_the_batch() -> None:
    async def flush(items: list[int]) -> list[int]:
        raise OSError("database down")

    stop = asyncio.Event()
    gc: GroupCommit[int, int] = GroupCommit("t", flush, window_s=0.001)
    runner = asyncio.create_task(gc.run(stop))
    outcomes = await asyncio.gather(*(gc.submit(i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(o, OSError) for o in outcomes)
    stop.set()
    await runner


def test_named_queries_load_and_reject_duplicates(tmp_path: Path) -> None:
    good = tmp_path / "q.sql"
    good.write_text("-- header\n-- name: one\n-- why\nSELECT 1\n\n-- name: two\nSELECT 2;\n")
    assert sqlfile.load(good) == {"one": "SELECT 1", "two": "SELECT 2;"}
    bad = tmp_path / "bad.sql"
    bad.write_text("-- name: one\nSELECT 1\n-- name: one\nSELECT 2\n")
    with pytest.raises(RuntimeError, match="one"):
        sqlfile.load(bad)


def test_queue_queries_are_all_there() -> None:
    from gateway.queue.store import Q

    assert {"enqueue", "claim_candidates", "mark_running", "finish", "recover_expired"} <= set(Q)


def test_bodies_are_text_when_utf8_else_base64() -> None:
    assert encode_body("héllo".encode()) == ("héllo", "utf-8")
    assert encode_body(b"\xff") == ("/w==", "base64")


def test_claim_choice_respects_function_and_job_limits() -> None:
    from types import SimpleNamespace
    from typing import Any, cast

    from gateway.queue.worker import QueueWorker

    settings = SimpleNamespace(queue_concurrency=100, queue_retry_base_s=1.0, queue_retry_cap_s=5.0)
    spec = SimpleNamespace(async_=SimpleNamespace(concurrency=2))
    scheduler = SimpleNamespace(pool=lambda name: SimpleNamespace(spec=spec))
    manager = SimpleNamespace(worker_id="w")
    worker = QueueWorker(
        cast(Any, settings),
        cast(Any, None),
        cast(Any, manager),
        cast(Any, None),
        cast(Any, scheduler),
    )
    job = uuid.uuid4()
    cands = [Candidate(uuid.uuid4(), "a", None, None) for _ in range(3)]
    cands += [Candidate(uuid.uuid4(), "b", job, 1) for _ in range(3)]
    picked = worker.choose(cands)
    assert picked == [cands[0].id, cands[1].id, cands[3].id]
    worker.by_function["a"] = 1
    assert worker.choose(cands[:3]) == [cands[0].id]
