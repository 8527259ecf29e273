"""Pure and in-memory parts of the queue: group commit, named queries, claim choice."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from gateway import sqlfile
from gateway.queue import lanes
from gateway.queue.batcher import GroupCommit
from gateway.queue.lanes import Lane
from gateway.queue.models import encode_body


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

    assert {"enqueue", "claim", "finish", "heartbeat", "recover_expired", "depth"} <= set(Q)


def test_bodies_are_text_when_utf8_else_base64() -> None:
    assert encode_body("héllo".encode()) == ("héllo", "utf-8")
    assert encode_body(b"\xff") == ("/w==", "base64")


def test_claim_plan_respects_gateway_function_and_job_limits() -> None:
    job = uuid.uuid4()
    a, b, j = Lane("a"), Lane("b"), Lane("b", job)
    limits = {"a": 2, "b": 10}

    def plan(free: int, by_function: dict[str, int], by_job: dict[uuid.UUID, int]) -> object:
        return lanes.plan(
            [a, j, b],
            free=free,
            batch=100,
            function_limits=limits,
            job_limits={job: 3},
            by_function=by_function,
            by_job=by_job,
        )

    assert plan(100, {}, {}) == [(a, 2), (j, 3), (b, 7)]
    assert plan(100, {"a": 2, "b": 9}, {}) == [(j, 1)]
    assert plan(100, {"b": 1}, {job: 1}) == [(a, 2), (j, 2), (b, 7)]
    assert plan(4, {}, {}) == [(a, 2), (j, 2)]  # the gateway's own limit
    assert plan(0, {}, {}) == []


def test_notify_payload_round_trip() -> None:
    job = uuid.uuid4()
    named = {Lane("a"), Lane("b", job)}
    assert lanes.parse_payload(lanes.payload(named)) == named
    assert lanes.payload(Lane(f"f{n:04d}-" + "x" * 50) for n in range(500)) == "*"
    assert lanes.parse_payload("*") is None
    assert lanes.parse_payload("a/not-a-uuid") is None


async def test_group_commit_item_failure_reaches_only_its_caller() -> None:
    async def flush(items: list[int]) -> list[int | BaseException]:
        return [ValueError(i) if i == 3 else i for i in items]

    stop = asyncio.Event()
    gc: GroupCommit[int, int] = GroupCommit("t", flush)
    runner = asyncio.create_task(gc.run(stop))
    out = await asyncio.gather(*(gc.submit(i) for i in range(5)), return_exceptions=True)
    assert out[:3] == [0, 1, 2] and out[4] == 4
    assert isinstance(out[3], ValueError)
    stop.set()
    await runner


def test_header_values_that_were_not_utf8_become_latin1() -> None:
    from gateway.queue.models import storable

    assert storable("plain") == "plain"
    assert storable(b"\xff\xfe".decode("utf-8", "surrogateescape")) == "\xff\xfe"


async def test_upkeep_feeds_queue_depth_to_the_scheduler_and_readies_lanes() -> None:
    from types import SimpleNamespace
    from typing import Any, cast

    from gateway.queue.store import LaneDepth
    from gateway.queue.worker import QueueWorker

    job = uuid.uuid4()
    stop = asyncio.Event()
    backlog: dict[str, int] = {}

    class FakeStore:
        async def heartbeat(self, worker: str, lease_s: float) -> None: ...

        async def recover_expired(self) -> list[tuple[str, str]]:
            return [("a", "queued"), ("a", "dead")]

        async def retain(self, days: int) -> int:
            return 0

        async def depth(self) -> list[LaneDepth]:
            stop.set()  # one round is enough
            return [LaneDepth(Lane("a"), None, 5), LaneDepth(Lane("a", job), 2, 7)]

    scheduler = SimpleNamespace(
        pools={"a": object(), "b": object()},
        set_backlog=lambda name, depth: backlog.__setitem__(name, depth),
    )
    settings = SimpleNamespace(
        queue_poll_s=0.01,
        queue_lease_s=3.0,
        queue_retry_base_s=1.0,
        queue_retry_cap_s=5.0,
        queue_retention_days=7,
    )
    worker = QueueWorker(
        cast(Any, settings),
        cast(Any, FakeStore()),
        cast(Any, SimpleNamespace(worker_id="w")),
        cast(Any, None),
        cast(Any, scheduler),
        cast(Any, None),
    )
    await worker.run_upkeep(stop)
    assert backlog == {"a": 12, "b": 0}
    # Rows of a lost worker, run again or dead: counted by the gateway that decided it.
    assert worker.metrics.async_retries == {"a": 1}
    assert worker.metrics.dead_letters == {"a": 1}
    assert worker.ready == {Lane("a"), Lane("a", job)}
    assert worker.job_limits == {job: 2}
    assert worker.wake.is_set()
