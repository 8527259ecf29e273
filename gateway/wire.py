"""Wire models of the management API (JSON in and out)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from gateway.keys import Scope
from scheduler.models import (
    ENV_NAME_RE,
    HANDLER_RE,
    NAME_RE,
    RUNTIMES,
    SECRET_NAME_RE,
    AsyncPolicy,
    Limits,
    Network,
    Scaling,
)

MAX_ENV = 200
MAX_ENV_VALUE = 32 * 1024


class DeploySpec(BaseModel):
    """The `spec` part of a deploy or update."""

    model_config = ConfigDict(extra="forbid")

    # Lowercase DNS label (a-z, 0-9, '-', at most 63 characters).
    name: str | None = None
    # Runtime family.
    runtime: str = "python"
    # "module.function" inside the code folder.
    handler: str = "handler.handle"
    # Environment variables of every instance.
    env: dict[str, str] = Field(default_factory=dict)
    # Per-instance limits.
    limits: Limits = Field(default_factory=Limits)
    # Pool sizing.
    scaling: Scaling = Field(default_factory=Scaling)
    # Anyone may invoke it; otherwise an API key with the `invoke` scope is needed.
    public: bool = False
    # Names of secrets (POST /v1/secrets) mounted read-only under /run/secrets/<name>.
    secrets: list[str] = Field(default_factory=list, max_length=50)
    # What the instances may reach: {"outbound": false} cuts internet access.
    network: Network = Field(default_factory=Network)

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: list[str]) -> list[str]:
        for name in v:
            if not SECRET_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a valid secret name")
        if len(set(v)) != len(v):
            raise ValueError("names must be unique")
        return v

    # Retries and concurrency of queued invocations.
    async_: AsyncPolicy = Field(
        default_factory=AsyncPolicy,
        validation_alias=AliasChoices("async", "async_"),
        serialization_alias="async",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not NAME_RE.match(v):
            raise ValueError("must be a lowercase DNS label: a-z, 0-9 and '-', at most 63 long")
        return v

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, v: str) -> str:
        if v not in RUNTIMES:
            raise ValueError(f"unknown runtime {v!r}; known: {', '.join(RUNTIMES)}")
        return v

    @field_validator("handler")
    @classmethod
    def _handler(cls, v: str) -> str:
        if not HANDLER_RE.match(v):
            raise ValueError("must look like module.function, e.g. handler.handle")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_ENV:
            raise ValueError(f"at most {MAX_ENV} variables")
        for key, value in v.items():
            if not ENV_NAME_RE.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if key.startswith("KAPAL_"):
                raise ValueError(f"{key!r}: names starting with KAPAL_ are reserved")
            if len(value) > MAX_ENV_VALUE or "\x00" in value:
                raise ValueError(f"{key!r}: value too long or holds a NUL byte")
        return v


class VersionOut(BaseModel):
    version: int
    image: str
    created_at: datetime


class InstanceOut(BaseModel):
    id: str
    version: int
    state: str
    in_flight: int
    address: str
    # Short id of its container.
    container: str
    # How it was brought up: new (container from the image), prewarm, or paused.
    tier: str


class PoolStatus(BaseModel):
    # Instances the autoscaler wants for the current version.
    desired: int
    ready: int
    starting: int
    paused: int
    draining: int
    # Requests being served, and waiting for a slot.
    in_flight: int
    waiting: int
    # Requests answered 503 since start-up (wait buffer full, or no slot in time).
    rejected: int
    # The autoscaler is in panic mode (a burst).
    panic: bool


class FunctionOut(BaseModel):
    name: str
    version: int
    runtime: str
    handler: str
    image: str
    env: dict[str, str]
    limits: Limits
    scaling: Scaling
    public: bool
    secrets: list[str]
    network: Network
    async_: AsyncPolicy = Field(serialization_alias="async")
    created_at: datetime
    updated_at: datetime
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
    # What the key may do: admin (everything), deploy (functions), invoke (private functions).
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=3)]
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
