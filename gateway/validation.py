"""Reading JSON bodies and query strings into pydantic models; 4xx naming the field."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ValidationError

from gateway.errors import BadRequest, InvalidRequest, PayloadTooLarge
from scheduler.models import NAME_RE

M = TypeVar("M", bound=BaseModel)


def _function_name(v: str) -> str:
    if not NAME_RE.match(v):
        raise ValueError("must be a function name (a lowercase DNS label)")
    return v


# A field naming a function: a lowercase DNS label, 422 naming the field otherwise.
FunctionName = Annotated[str, AfterValidator(_function_name)]


def describe(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InvalidRequest(describe(e)) from e


def parse_query(model: type[M], query: Mapping[str, str]) -> M:
    return validate(model, dict(query))


async def parse_json(request: web.Request, model: type[M], limit: int = 1 << 20) -> M:
    """A JSON body as `model`: 413 past `limit`, 400 when not JSON, 422 naming the field."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body is larger than {limit} bytes")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"body is larger than {limit} bytes")
    if not raw:
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"body is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise InvalidRequest("body: must be a JSON object")
    return validate(model, data)
