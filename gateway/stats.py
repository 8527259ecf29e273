"""Per-minute figures of each function from its invocation records: what `kapal top` and
the dashboard chart. Computed in Postgres (percentiles of a window are not sums of
per-minute ones), from the records the gateways flush about once a second.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import FunctionNotFound
from gateway.keys import Scope
from gateway.routing import Route
from gateway.services import Services
from gateway.validation import parse_query
from scheduler.models import NAME_RE

STEP_S = 60

# One row per (function, minute) with calls, and one per function for the whole window
# (its minute null): percentiles of a window are not sums of per-minute ones.
FIGURES = """
SELECT function, date_trunc('minute', started_at) AS t, count(*) AS count,
       count(*) FILTER (WHERE status >= 500) AS errors,
       count(*) FILTER (WHERE tier IS NOT NULL) AS cold,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p99_ms
FROM invocation_records
WHERE started_at >= $1 AND ($2::text IS NULL OR function = $2)
GROUP BY GROUPING SETS ((function, date_trunc('minute', started_at)), (function))
"""


class StatsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The window: this many minutes up to now, the current one included.
    minutes: Annotated[int, Field(ge=1, le=1440)] = 15


class Point(BaseModel):
    # Calls that started in this minute (errors: status 500 and above; cold: cold starts).
    count: int = 0
    errors: int = 0
    cold: int = 0
    # Duration percentiles, null without calls.
    p50_ms: float | None = None
    p99_ms: float | None = None


class Minute(Point):
    # The minute's start.
    t: datetime


class Totals(Point):
    # Calls a second over the window so far.
    rps: float = 0.0


class FunctionStats(BaseModel):
    total: Totals
    # One point per minute of the window, oldest first.
    series: list[Minute]


class StatsOut(BaseModel):
    minutes: int
    step_s: int = STEP_S
    # Every deployed function, calls or none.
    functions: dict[str, FunctionStats]


class OneStatsOut(FunctionStats):
    minutes: int
    step_s: int = STEP_S
    function: str


def _figures(row: Any) -> dict[str, Any]:
    return {k: row[k] for k in ("count", "errors", "cold", "p50_ms", "p99_ms")}


async def stats(
    svc: Services, names: list[str], minutes: int, only: str | None
) -> dict[str, FunctionStats]:
    async with svc.pg.acquire() as conn:
        now: datetime = await conn.fetchval("SELECT now()")
        first = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
        rows = await conn.fetch(FIGURES, first, only)
    elapsed = max((now - first).total_seconds(), 1.0)
    minutes_of = [first + timedelta(minutes=i) for i in range(minutes)]
    points: dict[str, dict[datetime, Minute]] = {n: {} for n in names}
    for r in rows:
        if r["function"] in points and r["t"] is not None:
            points[r["function"]][r["t"]] = Minute(t=r["t"], **_figures(r))
    out = {
        n: FunctionStats(
            total=Totals(), series=[points[n].get(t) or Minute(t=t) for t in minutes_of]
        )
        for n in names
    }
    for r in rows:
        if r["function"] in out and r["t"] is None:
            out[r["function"]].total = Totals(**_figures(r), rps=round(r["count"] / elapsed, 3))
    return out


async def all_stats(request: web.Request, svc: Services) -> web.Response:
    q = parse_query(StatsQuery, request.query)
    names = sorted(svc.catalog.specs)
    out = StatsOut(minutes=q.minutes, functions=await stats(svc, names, q.minutes, None))
    return web.json_response(text=out.model_dump_json())


async def function_stats(request: web.Request, svc: Services) -> web.Response:
    name = request.match_info["name"]
    if not NAME_RE.match(name) or svc.catalog.get(name) is None:
        raise FunctionNotFound(f"function {name} not found")
    q = parse_query(StatsQuery, request.query)
    one = (await stats(svc, [name], q.minutes, name))[name]
    out = OneStatsOut(minutes=q.minutes, function=name, **vars(one))
    return web.json_response(text=out.model_dump_json())


ROUTES = (
    Route(
        "GET",
        "/v1/stats",
        all_stats,
        "calls, errors, cold starts and latency of every function, per minute",
        scope=Scope.DEPLOY,
        query=StatsQuery,
        response=StatsOut,
        errors=(422,),
    ),
    Route(
        "GET",
        "/v1/functions/{name}/stats",
        function_stats,
        "one function's calls, errors, cold starts and latency, per minute",
        scope=Scope.DEPLOY,
        query=StatsQuery,
        response=OneStatsOut,
        errors=(404, 422),
        params={"name": {"type": "string", "pattern": NAME_RE.pattern}},
    ),
)
