"""Schedule routes: create, list, get, delete."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from pydantic import BaseModel, ConfigDict, field_validator

from gateway.errors import FunctionNotFound, NotFound
from gateway.keys import Scope
from gateway.routing import UUID_ID, Route
from gateway.schedules.cron import Cron, CronError
from gateway.schedules.store import ScheduleRow
from gateway.services import Services
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


class ScheduleList(BaseModel):
    schedules: list[ScheduleOut]


def _out(row: ScheduleRow) -> ScheduleOut:
    return ScheduleOut(**vars(row))


def _id(request: web.Request) -> uuid.UUID:
    raw = request.match_info["id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound(f"schedule {raw} not found") from None


async def create_schedule(request: web.Request, svc: Services) -> web.Response:
    body = await parse_json(request, ScheduleIn)
    if svc.catalog.get(body.function) is None:
        raise FunctionNotFound(f"function {body.function} not found")
    next_run = Cron.parse(body.cron).next_after(datetime.now(UTC), ZoneInfo(body.timezone))
    row = await svc.schedules.create(
        body.function, body.cron, body.timezone, body.payload, next_run
    )
    return web.json_response(text=_out(row).model_dump_json(), status=201)


async def list_schedules(request: web.Request, svc: Services) -> web.Response:
    rows = await svc.schedules.all()
    items = ",".join(_out(r).model_dump_json() for r in rows)
    return web.json_response(text='{"schedules": [' + items + "]}")


async def get_schedule(request: web.Request, svc: Services) -> web.Response:
    row = await svc.schedules.get(_id(request))
    return web.json_response(text=_out(row).model_dump_json())


async def delete_schedule(request: web.Request, svc: Services) -> web.Response:
    await svc.schedules.delete(_id(request))
    return web.Response(status=204)


ROUTES = (
    Route(
        "POST",
        "/v1/schedules",
        create_schedule,
        "create a schedule: a function invoked on a cron",
        scope=Scope.DEPLOY,
        body=ScheduleIn,
        response=ScheduleOut,
        status=201,
        errors=(400, 404, 413, 422),
    ),
    Route(
        "GET",
        "/v1/schedules",
        list_schedules,
        "list schedules",
        scope=Scope.DEPLOY,
        response=ScheduleList,
    ),
    Route(
        "GET",
        "/v1/schedules/{id}",
        get_schedule,
        "one schedule",
        scope=Scope.DEPLOY,
        response=ScheduleOut,
        errors=(404,),
        params=UUID_ID,
    ),
    Route(
        "DELETE",
        "/v1/schedules/{id}",
        delete_schedule,
        "delete a schedule",
        scope=Scope.DEPLOY,
        status=204,
        errors=(404,),
        params=UUID_ID,
    ),
)
