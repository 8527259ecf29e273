"""What a function did: its log lines (NDJSON, followed live) and its invocation records."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import asyncpg
from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from gateway.errors import FunctionNotFound, InvalidRequest, NotFound
from gateway.keys import Scope
from gateway.logs.feed import POLL_S, BatchCursor
from gateway.routing import Content, Route
from gateway.services import Services
from gateway.validation import parse_query
from scheduler.models import NAME_RE

_AGO = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
# Lines read per follow round; the next round reads the rest.
FOLLOW_BATCH = 5000


def _moment(value: Any) -> datetime:
    """A point in time: RFC 3339, epoch seconds, or an age such as 10m, 2h, 30s, 1d."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).strip()
    if m := _AGO.match(text):
        return datetime.now(UTC) - timedelta(seconds=float(m[1]) * _UNITS[m[2]])
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            "must be a time (RFC 3339 or epoch seconds) or an age such as 10m, 2h, 30s"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


Moment = Annotated[datetime, BeforeValidator(_moment)]


def _request_id(value: Any) -> str:
    """Request ids are shown as 32 hex digits; a uuid with dashes is the same id."""
    text = str(value).strip()
    try:
        return uuid.UUID(text).hex
    except ValueError:
        if not text or len(text) > 64:
            raise ValueError("must be a request id (32 hex digits)") from None
        return text


RequestId = Annotated[str, BeforeValidator(_request_id)]


class LogQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Lines written at or after this time (RFC 3339, epoch seconds, or an age: 10m, 2h).
    since: Moment | None = None
    # Lines written before this time.
    until: Moment | None = None
    # Only the lines of this invocation (its X-Kapal-Request-Id).
    request_id: RequestId | None = None
    # Only the lines of this instance.
    instance: Annotated[str, Field(max_length=64)] | None = None
    # The newest this many lines (they are answered oldest first).
    limit: Annotated[int, Field(ge=1, le=10_000)] = 1000
    # Keep the response open and stream new lines as they are stored.
    follow: bool = False


class LogLine(BaseModel):
    ts: datetime
    function: str
    version: int
    # The instance that wrote it ("" for an event of no instance, such as a build).
    instance: str
    # stdout | stderr | log (Python logging) | runtime | platform (what Kapal did)
    stream: str
    level: str | None
    # The invocation it was written during, if any.
    request_id: str | None
    # Bytes that were not UTF-8 are shown escaped (\x..).
    line: str


LINE_COLUMNS = "ts, function, version, instance, seq, stream, level, request_id, line, batch"


def _line_json(r: asyncpg.Record) -> str:
    return json.dumps(
        {
            "ts": r["ts"].isoformat().replace("+00:00", "Z"),
            "function": r["function"],
            "version": r["version"],
            "instance": r["instance"],
            "stream": r["stream"],
            "level": r["level"],
            "request_id": r["request_id"],
            "line": r["line"],
        },
        ensure_ascii=False,
    )


def _name(request: web.Request, svc: Services) -> str:
    name = request.match_info["name"]
    if not NAME_RE.match(name) or svc.catalog.get(name) is None:
        raise FunctionNotFound(f"function {name} not found")
    return name


async def _lines(svc: Services, name: str, q: LogQuery) -> list[asyncpg.Record]:
    where: list[str] = ["function = $1"]
    args: list[Any] = [name]
    for column, op, value in (
        ("ts", ">=", q.since),
        ("ts", "<", q.until),
        ("request_id", "=", q.request_id),
        ("instance", "=", q.instance),
    ):
        if value is not None:
            args.append(value)
            where.append(f"{column} {op} ${len(args)}")
    args.append(q.limit)
    rows: list[asyncpg.Record] = await svc.pg.fetch(
        f"SELECT {LINE_COLUMNS} FROM function_logs WHERE {' AND '.join(where)}"
        f" ORDER BY ts DESC, seq DESC LIMIT ${len(args)}",
        *args,
    )
    rows.reverse()
    return rows


async def get_logs(request: web.Request, svc: Services) -> web.StreamResponse:
    name = _name(request, svc)
    q = parse_query(LogQuery, request.query)
    if not q.follow:
        rows = await _lines(svc, name, q)
        body = "".join(_line_json(r) + "\n" for r in rows)
        return web.Response(body=body.encode(), content_type="application/x-ndjson")
    return await _follow(request, svc, name, q)


async def _follow(
    request: web.Request, svc: Services, name: str, q: LogQuery
) -> web.StreamResponse:
    # Batches numbered up to here may still be committing: read again what is not shown.
    current = await svc.pg.fetchval(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM function_logs_batch"
    )
    rows = await _lines(svc, name, q)
    shown = {r["batch"] for r in rows}
    cursor = BatchCursor(max(0, current - 16))
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    try:
        await resp.write("".join(_line_json(r) + "\n" for r in rows).encode())
        with svc.logs.feed.follow(name) as wake:
            while svc.catalog.get(name) is not None:
                if request.transport is None or request.transport.is_closing():
                    break
                highest, gaps = cursor.wanted()
                found = await svc.pg.fetch(
                    f"SELECT {LINE_COLUMNS} FROM function_logs"
                    " WHERE function = $1 AND (batch > $2 OR batch = ANY($3::bigint[]))"
                    " ORDER BY batch, ts, seq LIMIT $4",
                    name,
                    highest,
                    gaps,
                    FOLLOW_BATCH,
                )
                batches = {r["batch"] for r in found}
                if len(found) == FOLLOW_BATCH:  # the last batch may continue: read it again
                    batches.discard(found[-1]["batch"])
                    found = [r for r in found if r["batch"] in batches]
                cursor.saw(batches)
                new = [r for r in found if r["batch"] not in shown]
                if q.until is not None:
                    new = [r for r in new if r["ts"] < q.until]
                if q.request_id is not None:
                    new = [r for r in new if r["request_id"] == q.request_id]
                if q.instance is not None:
                    new = [r for r in new if r["instance"] == q.instance]
                if new:
                    await resp.write("".join(_line_json(r) + "\n" for r in new).encode())
                if len(found) >= FOLLOW_BATCH // 2:
                    continue
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), POLL_S)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()
    return resp


# -- invocation records ---------------------------------------------------------------

Trigger = Literal["http", "async", "webhook", "job", "schedule"]
_STATUS = re.compile(r"^([1-5])xx$|^([1-5]\d\d)$|^(error|ok)$")


def _status(value: Any) -> str:
    text = str(value).strip().lower()
    if not _STATUS.match(text):
        raise ValueError("must be a status code (500), a class (5xx), ok (< 400) or error")
    return text


def _cold(value: Any) -> str:
    text = str(value).strip().lower()
    aliases = {"1": "true", "yes": "true", "0": "false", "no": "false"}
    text = aliases.get(text, text)
    if text not in ("true", "false", "paused", "prewarm", "new"):
        raise ValueError("must be true, false or a tier: paused, prewarm, new")
    return text


class RecordQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Invocations started at or after this time (RFC 3339, epoch seconds, or an age: 10m).
    since: Moment | None = None
    # A status code (500), a class (5xx), ok (below 400) or error (400 and above).
    status: Annotated[str, BeforeValidator(_status)] | None = None
    # true: cold starts only, false: warm only, or one tier (paused, prewarm, new).
    cold: Annotated[str, BeforeValidator(_cold)] | None = None
    trigger: Trigger | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    # From a previous page's next_cursor.
    cursor: str | None = None


class RecordOut(BaseModel):
    # The request id (X-Kapal-Request-Id), 32 hex digits.
    id: str
    function: str
    version: int
    # http | async | webhook | job | schedule
    trigger: str
    method: str
    path: str
    status: int
    cold: bool
    # The cold-start tier (paused, prewarm, new); null when warm.
    tier: str | None
    instance: str
    started_at: datetime
    duration_ms: float
    # Time queued for a slot, and the part of it spent starting the instance.
    wait_ms: float
    init_ms: float
    # The async invocation this was an attempt of.
    parent: str | None


class RecordList(BaseModel):
    # Newest first.
    invocations: list[RecordOut]
    # Pass as `cursor` for the next (older) page; null on the last.
    next_cursor: str | None


class InvocationDetail(BaseModel):
    id: str
    # The invocation with this request id (null when the id is an async invocation's).
    record: RecordOut | None
    # For an async invocation's id: the records of its attempts, oldest first.
    attempts: list[RecordOut]
    # Its log lines (those of every attempt), oldest first.
    logs: list[LogLine]


RECORD_COLUMNS = (
    "id, function, version, trigger, method, path, status, tier, instance, started_at,"
    " duration_ms, wait_ms, init_ms, parent"
)


def _record(r: asyncpg.Record) -> RecordOut:
    return RecordOut(
        id=r["id"].hex,
        function=r["function"],
        version=r["version"],
        trigger=r["trigger"],
        method=r["method"],
        path=r["path"],
        status=r["status"],
        cold=r["tier"] is not None,
        tier=r["tier"],
        instance=r["instance"],
        started_at=r["started_at"],
        duration_ms=r["duration_ms"],
        wait_ms=r["wait_ms"],
        init_ms=r["init_ms"],
        parent=r["parent"].hex if r["parent"] is not None else None,
    )


def _encode_cursor(r: asyncpg.Record) -> str:
    raw = f"{r['started_at'].isoformat()}|{r['id'].hex}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        started, _, id = raw.partition("|")
        return datetime.fromisoformat(started), uuid.UUID(id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest("cursor: not a cursor this API gave out") from None


async def list_records(request: web.Request, svc: Services) -> web.Response:
    name = _name(request, svc)
    q = parse_query(RecordQuery, request.query)
    where: list[str] = ["function = $1"]
    args: list[Any] = [name]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if q.since is not None:
        where.append(f"started_at >= {arg(q.since)}")
    if q.status is not None:
        if q.status == "ok":
            where.append("status < 400")
        elif q.status == "error":
            where.append("status >= 400")
        elif q.status.endswith("xx"):
            low = int(q.status[0]) * 100
            where.append(f"status >= {arg(low)} AND status < {arg(low + 100)}")
        else:
            where.append(f"status = {arg(int(q.status))}")
    if q.cold == "true":
        where.append("tier IS NOT NULL")
    elif q.cold == "false":
        where.append("tier IS NULL")
    elif q.cold is not None:
        where.append(f"tier = {arg(q.cold)}")
    if q.trigger is not None:
        where.append(f"trigger = {arg(q.trigger)}")
    if q.cursor is not None:
        started, id = _decode_cursor(q.cursor)
        where.append(f"(started_at, id) < ({arg(started)}, {arg(id)})")
    rows = await svc.pg.fetch(
        f"SELECT {RECORD_COLUMNS} FROM invocation_records WHERE {' AND '.join(where)}"
        f" ORDER BY started_at DESC, id DESC LIMIT {arg(q.limit + 1)}",
        *args,
    )
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    out = RecordList(
        invocations=[_record(r) for r in rows],
        next_cursor=_encode_cursor(rows[-1]) if more else None,
    )
    return web.json_response(text=out.model_dump_json())


async def get_record(request: web.Request, svc: Services) -> web.Response:
    name = _name(request, svc)
    raw = request.match_info["id"]
    try:
        id = uuid.UUID(raw)
    except ValueError:
        raise NotFound(f"invocation {raw} not found") from None
    rows = await svc.pg.fetch(
        f"SELECT {RECORD_COLUMNS} FROM invocation_records"
        " WHERE function = $1 AND (id = $2 OR parent = $2) ORDER BY started_at",
        name,
        id,
    )
    record = next((_record(r) for r in rows if r["id"] == id), None)
    attempts = [_record(r) for r in rows if r["id"] != id]
    if record is None and not attempts:
        raise NotFound(
            f"invocation {raw} of {name} not found (records are written within a second)"
        )
    ids = [r.id for r in ([record] if record else attempts)]
    lines = await svc.pg.fetch(
        f"SELECT {LINE_COLUMNS} FROM function_logs"
        " WHERE function = $1 AND request_id = ANY($2::text[]) ORDER BY ts, seq LIMIT 10000",
        name,
        ids,
    )
    detail = InvocationDetail(
        id=id.hex,
        record=record,
        attempts=attempts,
        logs=[LogLine(**{k: r[k] for k in LogLine.model_fields}) for r in lines],
    )
    return web.json_response(text=detail.model_dump_json())


NAME = {"name": {"type": "string", "pattern": NAME_RE.pattern}}
NDJSON_LINES = Content(
    {"application/x-ndjson": {"schema": {"$ref": "#/components/schemas/LogLine"}}},
    models=(LogLine,),
    description="one log line (a LogLine) per line, oldest first",
)

ROUTES = (
    Route(
        "GET",
        "/v1/functions/{name}/logs",
        get_logs,
        "a function's log lines (NDJSON, newest last); follow=1 streams new ones",
        scope=Scope.DEPLOY,
        response=NDJSON_LINES,
        errors=(404, 422),
        params=NAME,
        query=LogQuery,
    ),
    Route(
        "GET",
        "/v1/functions/{name}/invocations",
        list_records,
        "a function's invocation records, newest first, paged",
        scope=Scope.DEPLOY,
        response=RecordList,
        errors=(404, 422),
        params=NAME,
        query=RecordQuery,
    ),
    Route(
        "GET",
        "/v1/functions/{name}/invocations/{id}",
        get_record,
        "one invocation (or an async invocation's attempts) with its log lines",
        scope=Scope.DEPLOY,
        response=InvocationDetail,
        errors=(404,),
        params={**NAME, "id": {"type": "string", "format": "uuid"}},
    ),
)
