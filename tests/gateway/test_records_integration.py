"""Invocation records written to a real Postgres, whatever the request target holds."""

from __future__ import annotations

import time
import uuid

import pytest

from gateway import db
from gateway.invoke import new_request_id
from gateway.records import InvocationRecord, Recorder
from tests.conftest import PostgresServer

pytestmark = pytest.mark.integration

TARGETS = {
    b"/fn/f/plain?secret=1": "/fn/f/plain",
    b"/fn/f/back\\slash": "/fn/f/back\\slash",
    b"/fn/f/tab\there\nand\rthere": "/fn/f/tab\there\nand\rthere",
    "/fn/f/caf\u00e9".encode(): "/fn/f/caf\u00c3\u00a9",  # one character per byte
    b"/fn/f/" + b"x" * 600: "/fn/f/" + "x" * 506,
}


async def test_a_batch_lands_with_every_field(postgres: PostgresServer) -> None:
    pool = await db.connect(postgres.new_database())
    try:
        await pool.execute("INSERT INTO functions (name, current_version) VALUES ('f', 2)")
        recorder = Recorder(pool, 3600.0, 7)
        now = time.time()
        parent_id = uuid.uuid4().hex.encode()
        ids = []
        for i, target in enumerate(TARGETS):
            ids.append(new_request_id())
            tier, trigger, parent = ("prewarm", "job", parent_id) if i == 0 else ("", "http", b"")
            recorder.add(
                InvocationRecord(
                    ids[-1],
                    "f",
                    2,
                    trigger,
                    b"POST",
                    target,
                    200 + i,
                    tier,
                    "i1",
                    now,
                    1.5,
                    0.75,
                    0.5,
                    parent,
                )
            )
        await recorder.flush()
        assert recorder.pending == []
        rows = await pool.fetch("SELECT * FROM invocation_records ORDER BY status")
        assert [r["path"] for r in rows] == list(TARGETS.values())
        first = rows[0]
        assert first["id"] == uuid.UUID(ids[0].decode())
        assert (first["function"], first["version"], first["method"]) == ("f", 2, "POST")
        assert first["tier"] == "prewarm" and rows[1]["tier"] is None
        assert first["trigger"] == "job" and rows[1]["trigger"] == "http"
        assert first["parent"] == uuid.UUID(parent_id.decode()) and rows[1]["parent"] is None
        assert first["instance"] == "i1" and first["duration_ms"] == 1.5
        assert (first["wait_ms"], first["init_ms"]) == (0.75, 0.5)
        assert abs(first["started_at"].timestamp() - now) < 1e-3
        invocations = await pool.fetchval("SELECT invocations FROM functions WHERE name = 'f'")
        assert invocations == len(TARGETS)
    finally:
        await pool.close()
