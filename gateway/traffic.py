"""Traffic routes: how a function's requests split between its versions (GET, PUT).

A split is kept in Postgres and reaches every gateway through the catalog; each version
in it gets its own pool. A plain deploy or a rollback sends all traffic to one version.
"""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from gateway.api import NAME, _name, read_json
from gateway.keys import Scope
from gateway.routing import Route
from gateway.services import Services
from scheduler.traffic import WHOLE

# A version number, as a key of the JSON object ("3").
Version = Annotated[int, Field(ge=1, le=2**31 - 1)]
# A share in percent: an integer from 0 (serves nothing) to 100.
Weight = Annotated[StrictInt, Field(ge=0, le=WHOLE)]


class TrafficIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Version -> percent of requests, e.g. {"3": 90, "4": 10}; adding up to 100.
    traffic: dict[Version, Weight]

    @field_validator("traffic")
    @classmethod
    def _whole(cls, v: dict[int, int]) -> dict[int, int]:
        if sum(v.values()) != WHOLE:
            raise ValueError(f"weights must add up to {WHOLE}, not {sum(v.values())}")
        return v


class TrafficOut(BaseModel):
    # Version -> percent of requests, versions serving none left out.
    traffic: dict[int, int]


async def get_traffic(request: web.Request, svc: Services) -> web.Response:
    split = await svc.functions.traffic(_name(request))
    return web.json_response(TrafficOut(traffic=split).model_dump(mode="json"))


async def put_traffic(request: web.Request, svc: Services) -> web.Response:
    name = _name(request)
    body = await read_json(request, TrafficIn)
    split = await svc.deployer.split(name, body.traffic)
    return web.json_response(TrafficOut(traffic=split).model_dump(mode="json"))


ROUTES = (
    Route(
        "GET",
        "/v1/functions/{name}/traffic",
        get_traffic,
        "how a function's requests split between its versions",
        scope=Scope.DEPLOY,
        response=TrafficOut,
        errors=(400, 404),
        params=NAME,
    ),
    Route(
        "PUT",
        "/v1/functions/{name}/traffic",
        put_traffic,
        "split a function's requests between versions by weight (percent, adding up to 100)",
        scope=Scope.DEPLOY,
        body=TrafficIn,
        response=TrafficOut,
        errors=(400, 404, 413, 422),
        params=NAME,
    ),
)
