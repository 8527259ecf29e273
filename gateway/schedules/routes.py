"""Schedule routes: create, list, get, delete."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from pydantic import BaseModel, ConfigDict, field_validator

from gateway.auth import requires
from gateway.errors import FunctionNotFound, NotFound
from gateway.keys import Scope
from gateway.queue.service import queue_key
from gateway.schedules.cron import Cron, CronError
from gateway.schedules.store import ScheduleRow
from gateway.validation import FunctionName, parse_json


class ScheduleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Function each tick invokes (POST / with the payload as JSON body).
    function: FunctionName
    # Five fields: minute hour day-of-month month day-of-week (or @hourly, @daily, ...).
    cron: str
    # JSON body of each invocation.
    payload: Any = None
    # IANA time zone the cron fields are read in.
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        try:
            Cron.parse(v)
        except CronError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class ScheduleOut(BaseModel):
    id: uuid.UUID
    function: FunctionName
    cron: str
    timezone: str
    payload: Any
    # When it fires next.
    next_run: datetime
    # The latest tick it fired.
    last_run: datetime | None
    created_at: datetime


def _out(row: ScheduleRow) -> ScheduleOut:
    return ScheduleOut(**vars(row))


def _id(request: web.Request) -> uuid.UUID:
    raw = request.match_info["id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound(f"schedule {raw} not found") from None


@requires(Scope.DEPLOY)
async def create_schedule(request: web.Request) -> web.Response:
    queue = request.app[queue_key]
    body = await parse_json(request, ScheduleIn)
    if queue.manager.scheduler.pool(body.function) is None:
        raise FunctionNotFound(f"function {body.function} not found")
    next_run = Cron.parse(body.cron).next_after(datetime.now(UTC), ZoneInfo(body.timezone))
    row = await queue.schedules.create(
        body.function, body.cron, body.timezone, body.payload, next_run
    )
    return web.json_response(text=_out(row).model_dump_json(), status=201)


@requires(Scope.DEPLOY)
async def list_schedules(request: web.Request) -> web.Response:
    rows = await request.app[queue_key].schedules.all()
    items = ",".join(_out(r).model_dump_json() for r in rows)
    return web.json_response(text='{"schedules": [' + items + "]}")


@requires(Scope.DEPLOY)
async def get_schedule(request: web.Request) -> web.Response:
    row = await request.app[queue_key].schedules.get(_id(request))
    return web.json_response(text=_out(row).model_dump_json())


@requires(Scope.DEPLOY)
async def delete_schedule(request: web.Request) -> web.Response:
    await request.app[queue_key].schedules.delete(_id(request))
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/schedules", create_schedule)
    app.router.add_get("/v1/schedules", list_schedules)
    app.router.add_get("/v1/schedules/{id}", get_schedule)
    app.router.add_delete("/v1/schedules/{id}", delete_schedule)
