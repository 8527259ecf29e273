"""Wire models of the management API (JSON in and out)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.dataclasses import dataclass

from gateway.keys import Scope
from scheduler.models import SECRET_NAME_RE, FunctionConfig, FunctionName, FunctionVersion
from scheduler.scheduler import InstanceView, PoolView


class DeploySpec(FunctionConfig):
    """The `spec` part of a deploy or update: the function's config, and maybe its name."""

    # Lowercase DNS label (a-z, 0-9, '-', at most 63 characters); PUT takes it from the URL.
    name: FunctionName | None = None


class VersionOut(BaseModel):
    version: int
    image: str
    created_at: datetime


@dataclass(frozen=True)
class InstanceOut(InstanceView):
    """One instance as the scheduler describes it; `container` is a short container id,
    `tier` how it was brought up: new (container from the image), prewarm, or paused."""


@dataclass(frozen=True)
class PoolStatus(PoolView):
    """A pool's counts: `desired` is what the autoscaler wants for the current version,
    `in_flight` requests are being served and `waiting` wait for a slot, `rejected` were
    answered 503 since start-up (wait buffer full, or no slot in time), `panic` means the
    autoscaler sees a burst."""


class FunctionOut(FunctionVersion):
    """A function as the API shows it: its current version's spec, history and pool."""

    # Documented as sent: every field present (defaults too), `async` by its wire name.
    model_config = ConfigDict(
        extra="ignore",
        json_schema_mode_override="serialization",
        json_schema_serialization_defaults_required=True,
    )

    created_at: datetime
    updated_at: datetime
    # Invocations recorded so far (including those not yet flushed to Postgres).
    invocations: int
    versions: list[VersionOut]
    instances: list[InstanceOut]
    pool: PoolStatus | None


class KeyCreate(BaseModel):
    """Body of POST /v1/keys."""

    model_config = ConfigDict(extra="forbid")

    # What the key is for (shown in listings).
    name: Annotated[
        str, StringConstraints(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]*$")
    ]
    # What the key may do: admin (everything), deploy (functions), invoke (private
    # functions), metrics (GET /metrics).
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=len(Scope))]
    # Requests a second this key may make; null: the gateway's default.
    rps: Annotated[float | None, Field(gt=0, le=1_000_000)] = None


class KeyOut(BaseModel):
    # Public id: the part of the key after `kpl_`.
    id: str
    # What the key is for.
    name: str
    # What the key may do.
    scopes: list[Scope]
    # Its own rate limit, or null for the gateway's default.
    rps: float | None
    created_at: datetime


class KeyCreated(KeyOut):
    # The key itself: shown this once, stored only as a hash.
    key: str


class SecretPut(BaseModel):
    """Body of POST /v1/secrets (creates or replaces)."""

    model_config = ConfigDict(extra="forbid")

    # Letters, digits, '_', '.', '-'; the file name under /run/secrets.
    name: Annotated[str, StringConstraints(pattern=SECRET_NAME_RE.pattern)]
    # The value; never returned by the API.
    value: Annotated[str, StringConstraints(max_length=64 * 1024)]


class SecretOut(BaseModel):
    # The secret's name (its value is never shown).
    name: str
    created_at: datetime
    updated_at: datetime
