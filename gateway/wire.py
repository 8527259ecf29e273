"""Wire models of the management API (JSON in and out)."""

from __future__ import annotations

from datetime import datetime

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from scheduler.models import (
    ENV_NAME_RE,
    HANDLER_RE,
    NAME_RE,
    RUNTIMES,
    AsyncPolicy,
    Limits,
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


class FunctionOut(BaseModel):
    name: str
    version: int
    runtime: str
    handler: str
    image: str
    env: dict[str, str]
    limits: Limits
    scaling: Scaling
    async_: AsyncPolicy = Field(serialization_alias="async")
    created_at: datetime
    updated_at: datetime
    invocations: int
    versions: list[VersionOut]
    instances: list[InstanceOut]
