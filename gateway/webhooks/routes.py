"""Webhook routes: manage endpoints under /v1/webhooks, receive deliveries at /hooks/{id}."""

from __future__ import annotations

import secrets
import time
from datetime import datetime
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import FunctionNotFound
from gateway.keys import Scope
from gateway.queue.routes import ANY_BODY, Accepted, accepted, read_body, stored_headers
from gateway.routing import OPEN, Route
from gateway.services import Services
from gateway.validation import FunctionName, parse_json
from gateway.webhooks.store import Webhook
from gateway.webhooks.verify import Verify, delivery_id, verify

Secret = Annotated[str, Field(min_length=8, max_length=256)]


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Function each delivery invokes (POST /, the delivery's headers and body).
    function: FunctionName
    # How deliveries are signed: github | stripe | hmac-sha256 | none.
    verify: Verify
    # Shared secret; generated when absent.
    secret: Secret | None = None


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The new secret; generated when absent.
    secret: Secret | None = None


class WebhookOut(BaseModel):
    # Id of the endpoint; deliveries go to `url`.
    id: str
    function: FunctionName
    verify: Verify
    # Where the sender POSTs deliveries.
    url: str
    created_at: datetime
    # When its secret was last replaced (absent: never).
    rotated_at: datetime | None = None
    # The secret: only in the answer of a creation or a rotation.
    secret: str | None = None


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


def _out(request: web.Request, hook: Webhook, secret: str | None = None) -> WebhookOut:
    return WebhookOut(
        id=hook.id,
        function=hook.function,
        verify=hook.verify,
        url=f"{request.scheme}://{request.host}/hooks/{hook.id}",
        created_at=hook.created_at,
        rotated_at=hook.rotated_at,
        secret=secret,
    )


def _json(out: WebhookOut | list[WebhookOut], status: int = 200) -> web.Response:
    if isinstance(out, list):
        text = "[" + ",".join(o.model_dump_json(exclude_none=True) for o in out) + "]"
        return web.json_response(text='{"webhooks": ' + text + "}", status=status)
    return web.json_response(text=out.model_dump_json(exclude_none=True), status=status)


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


async def create_webhook(request: web.Request, svc: Services) -> web.Response:
    body = await parse_json(request, WebhookIn)
    if svc.catalog.get(body.function) is None:
        raise FunctionNotFound(f"function {body.function} not found")
    secret = body.secret or ("" if body.verify is Verify.NONE else new_secret())
    hook = await svc.webhooks.create(
        "wh_" + secrets.token_hex(12), body.function, body.verify, secret
    )
    return _json(_out(request, hook, secret or None), status=201)


async def list_webhooks(request: web.Request, svc: Services) -> web.Response:
    hooks = await svc.webhooks.all()
    return _json([_out(request, h) for h in hooks])


async def get_webhook(request: web.Request, svc: Services) -> web.Response:
    hook = await svc.webhooks.get(request.match_info["id"])
    return _json(_out(request, hook))


async def rotate_webhook(request: web.Request, svc: Services) -> web.Response:
    body = await parse_json(request, RotateIn)
    secret = body.secret or new_secret()
    hook = await svc.webhooks.rotate(request.match_info["id"], secret)
    return _json(_out(request, hook, secret))


async def delete_webhook(request: web.Request, svc: Services) -> web.Response:
    await svc.webhooks.delete(request.match_info["id"])
    return web.Response(status=204)


async def deliver(request: web.Request, svc: Services) -> web.Response:
    """A delivery: verified, deduplicated by its delivery id, queued; 202 at once."""
    hook = await svc.webhooks.get(request.match_info["id"])
    body = await read_body(request, svc.settings.queue_max_body_bytes)
    verify(hook.verify, hook.secret, request.headers, body, time.time())
    delivery = delivery_id(hook.verify, request.headers, body)
    headers = stored_headers(request)
    headers.append(("X-Kapal-Webhook-Id", hook.id))
    id = await svc.queue.manager.enqueue(
        hook.function,
        "POST",
        "/",
        headers,
        body,
        idempotency_key=None if delivery is None else f"webhook:{hook.id}:{delivery}"[:512],
        trigger="webhook",
    )
    return accepted(id)


ROUTES = (
    Route(
        "POST",
        "/v1/webhooks",
        create_webhook,
        "create a webhook endpoint (its secret shown once)",
        scope=Scope.DEPLOY,
        body=WebhookIn,
        response=WebhookOut,
        status=201,
        errors=(400, 404, 413, 422),
    ),
    Route(
        "GET",
        "/v1/webhooks",
        list_webhooks,
        "list webhook endpoints",
        scope=Scope.DEPLOY,
        response=WebhookList,
    ),
    Route(
        "GET",
        "/v1/webhooks/{id}",
        get_webhook,
        "one webhook endpoint",
        scope=Scope.DEPLOY,
        response=WebhookOut,
        errors=(404,),
    ),
    Route(
        "POST",
        "/v1/webhooks/{id}/rotate",
        rotate_webhook,
        "replace its secret (the new one shown once)",
        scope=Scope.DEPLOY,
        body=RotateIn,
        response=WebhookOut,
        errors=(400, 404, 413, 422),
    ),
    Route(
        "DELETE",
        "/v1/webhooks/{id}",
        delete_webhook,
        "delete a webhook endpoint",
        scope=Scope.DEPLOY,
        status=204,
        errors=(404,),
    ),
    # Checked by its signature instead of a key.
    Route(
        "POST",
        "/hooks/{id}",
        deliver,
        "a delivery: verified, deduplicated, queued; 202 at once",
        scope=OPEN,
        body=ANY_BODY,
        response=Accepted,
        status=202,
        errors=(401, 404, 413, 503),
    ),
)
