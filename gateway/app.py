"""The management application: every feature's routes, bound to the services."""

from __future__ import annotations

from aiohttp import web

from gateway import api, exporter, front, openapi, stats, traffic
from gateway.auth import auth_middleware
from gateway.errors import error_middleware
from gateway.jobs import routes as jobs
from gateway.logs import routes as logs
from gateway.queue import routes as queue
from gateway.routing import OPEN, Route, bind
from gateway.schedules import routes as schedules
from gateway.services import Services
from gateway.ui import routes as ui
from gateway.webhooks import routes as webhooks


async def openapi_json(request: web.Request, svc: Services) -> web.Response:
    return web.json_response(DOCUMENT)


# Every route the management application serves.
ROUTES: tuple[Route, ...] = (
    *api.ROUTES,
    *traffic.ROUTES,
    Route(
        "GET",
        "/openapi.json",
        openapi_json,
        "this document",
        scope=OPEN,
        response=openapi.DOCUMENT_BODY,
    ),
    *queue.ROUTES,
    *webhooks.ROUTES,
    *jobs.ROUTES,
    *schedules.ROUTES,
    *logs.ROUTES,
    *stats.ROUTES,
    *exporter.ROUTES,
    *ui.ROUTES,
)
# What the gateway serves on its public port: the front server's routes and these.
DOCUMENT = openapi.document((*front.ROUTES, *ROUTES))


def create_app(svc: Services, routes: tuple[Route, ...] = ROUTES) -> web.Application:
    app = web.Application(client_max_size=svc.settings.max_code_bytes + (1 << 20))
    bound = bind(app, routes, svc)
    app.middlewares.extend([error_middleware, auth_middleware(svc.gate, bound)])
    return app


def create_metrics_app(svc: Services) -> web.Application:
    """Only GET /metrics, keyed as on the public port: for `KAPAL_METRICS_LISTEN`."""
    return create_app(svc, exporter.ROUTES)
