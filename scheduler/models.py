"""Plain models the gateway hands to the scheduler (shared leaf module)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HANDLER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
RUNTIMES = ("python",)
# The function name generic prewarmed containers run under (not a valid function name).
PREWARM_NAME = "_prewarm"


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Seconds one invocation may run before it is answered 504 and its instance replaced.
    timeout_s: Annotated[float, Field(gt=0, le=900)] = 30.0
    # Memory cap of each instance, in MiB.
    memory_mb: Annotated[int, Field(ge=32, le=16384)] = 256
    # CPU share of each instance (1.0 = one core).
    cpus: Annotated[float, Field(gt=0, le=64)] = 1.0
    # Invocations a second across all instances (token bucket); None: the gateway default.
    rps: Annotated[float | None, Field(gt=0, le=1_000_000)] = None


class Scaling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Instances kept running even when idle.
    min: Annotated[int, Field(ge=0, le=100)] = 0
    # Most instances this function may have.
    max: Annotated[int, Field(ge=1, le=1000)] = 10
    # Requests one instance serves at once.
    concurrency: Annotated[int, Field(ge=1, le=1000)] = 8
    # Seconds an instance may sit idle before it is removed (down to `min`).
    idle_timeout_s: Annotated[float, Field(ge=1, le=86400)] = 300.0

    @field_validator("max")
    @classmethod
    def _max_not_below_min(cls, v: int, info: object) -> int:
        data = getattr(info, "data", {})
        if "min" in data and v < data["min"]:
            raise ValueError("must be >= scaling.min")
        return v


SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


class Network(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # May reach the internet; false: an internal network with no route out.
    outbound: bool = True


class AsyncPolicy(BaseModel):
    """How queued (async, webhook, job, scheduled) invocations of a function run."""

    model_config = ConfigDict(extra="forbid")

    # Retries after the first attempt for 5xx, 429, timeouts and lost instances.
    max_retries: Annotated[int, Field(ge=0, le=50)] = 3
    # Queued invocations of this function run at once (across gateways).
    concurrency: Annotated[int, Field(ge=1, le=10_000)] = 16


class FunctionSpec(BaseModel):
    """One immutable version of a function, as the scheduler runs it."""

    model_config = ConfigDict(frozen=True)

    # DNS-label name of the function.
    name: str
    # Version number, 1 for the first deploy, +1 per update.
    version: int
    # Runtime family ("python").
    runtime: str = "python"
    # "module.attr" of the handler inside the code folder.
    handler: str = "handler.handle"
    # Image built for this version.
    image: str
    # Environment variables given to every instance.
    env: dict[str, str] = Field(default_factory=dict)
    # Resource and time limits per instance.
    limits: Limits = Field(default_factory=Limits)
    # Pool sizing.
    scaling: Scaling = Field(default_factory=Scaling)
    # Its image carries resolved requirements (a generic prewarmed container cannot serve it).
    has_dependencies: bool = False
    # Anyone may invoke it; otherwise an API key with the `invoke` scope is needed.
    public: bool = False
    # Names of the secrets mounted read-only under /run/secrets/<name>.
    secrets: list[str] = Field(default_factory=list)
    # What the instances may reach.
    network: Network = Field(default_factory=Network)
    # Retries and concurrency of queued invocations ("async" on the wire).
    async_: AsyncPolicy = Field(
        default_factory=AsyncPolicy,
        validation_alias=AliasChoices("async", "async_"),
        serialization_alias="async",
    )
