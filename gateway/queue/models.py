"""The queue's records (plain data between store, manager and worker) and wire models."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel

Headers = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class NewInvocation:
    """An accepted request, before it is stored."""

    id: uuid.UUID
    function: str
    method: str
    # Path and query string, as the function sees them.
    path: str
    headers: Headers
    body: bytes
    max_retries: int
    idempotency_key: str | None = None
    callback_url: str | None = None
    # What made it: async (the API), webhook or schedule (job items are written apart).
    trigger: str = "async"


@dataclass(frozen=True, slots=True)
class Claimed:
    """A row this worker now runs, with what the function needs."""

    id: uuid.UUID
    function: str
    method: str
    path: str
    headers: Headers
    body: bytes
    attempt: int
    max_retries: int
    job_id: uuid.UUID | None
    trigger: str = "async"

    @classmethod
    def from_row(cls, r: asyncpg.Record) -> Claimed:
        return cls(
            r["id"],
            r["function"],
            r["method"],
            r["path"],
            [(k, v) for k, v in json.loads(r["headers"])],
            r["body"],
            r["attempts"],
            r["max_retries"],
            r["job_id"],
            r["trigger"],
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended, as written back to its row."""

    id: uuid.UUID
    attempt: int
    status: str
    run_at: datetime | None
    result_status: int | None
    result_headers: dict[str, str] | None
    result_body: bytes | None
    error: str | None


class ResponseOut(BaseModel):
    # HTTP status the function answered.
    status: int
    # Its response headers.
    headers: dict[str, str]
    # Its response body: text when UTF-8, else base64.
    body: str
    # "utf-8" or "base64": how `body` is encoded.
    body_encoding: str


class InvocationOut(BaseModel):
    # The invocation's id.
    id: uuid.UUID
    # Function it runs.
    function: str
    # queued | running | succeeded | failed | dead | cancelled.
    status: str
    # Attempts so far.
    attempts: int
    # Retries allowed after the first attempt.
    max_retries: int
    method: str
    path: str
    # When it was accepted.
    created_at: datetime
    # When its first attempt started.
    started_at: datetime | None
    # When its latest attempt started.
    last_attempt_at: datetime | None
    # When it reached a final state.
    finished_at: datetime | None
    # When it runs next (queued only).
    next_attempt_at: datetime | None
    # Why the latest attempt failed without an answer, if it did.
    error: str | None
    # The function's response to the latest attempt that got one.
    response: ResponseOut | None
    # The batch job it belongs to, and its index there.
    job_id: uuid.UUID | None
    item_index: int | None
    # pending | delivered | failed, when an X-Callback-Url was given.
    callback: str | None


def storable(value: str) -> str:
    """Header text Postgres can store: bytes that were not UTF-8 are kept as Latin-1."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("latin-1")
    return value


def encode_body(body: bytes) -> tuple[str, str]:
    """A body as JSON-safe text: itself when UTF-8, else base64."""
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"


def response_out(r: asyncpg.Record | dict[str, Any]) -> ResponseOut | None:
    if r["result_status"] is None:
        return None
    text, encoding = encode_body(r["result_body"] or b"")
    return ResponseOut(
        status=r["result_status"],
        headers=json.loads(r["result_headers"] or "{}"),
        body=text,
        body_encoding=encoding,
    )


def invocation_out(r: asyncpg.Record) -> InvocationOut:
    return InvocationOut(
        id=r["id"],
        function=r["function"],
        status=r["status"],
        attempts=r["attempts"],
        max_retries=r["max_retries"],
        method=r["method"],
        path=r["path"],
        created_at=r["created_at"],
        started_at=r["started_at"],
        last_attempt_at=r["last_attempt_at"],
        finished_at=r["finished_at"],
        next_attempt_at=r["run_at"] if r["status"] == "queued" else None,
        error=r["error"],
        response=response_out(r),
        job_id=r["job_id"],
        item_index=r["item_index"],
        callback=r["callback_state"],
    )
