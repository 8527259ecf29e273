"""A function's spec, defined once: what users set, and what the scheduler runs (shared leaf).

`FunctionConfig` is everything a user sets in a deploy's spec or a `kapal.toml`, with every
value check; the deploy wire model, the API's function view and the CLI's manifest add
their own few fields to it, and `FunctionSpec` adds what the scheduler needs. Adding a
field is one edit here.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HANDLER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
RUNTIMES = ("python",)
MAX_ENV = 200
MAX_ENV_VALUE = 32 * 1024
MAX_SECRETS = 50
# The function name generic prewarmed containers run under (not a valid function name).
PREWARM_NAME = "_prewarm"


def _function_name(v: str) -> str:
    if not NAME_RE.match(v):
        raise ValueError("must be a lowercase DNS label: a-z, 0-9 and '-', at most 63 long")
    return v


def _runtime(v: str) -> str:
    if v not in RUNTIMES:
        raise ValueError(f"unknown runtime {v!r}; known: {', '.join(RUNTIMES)}")
    return v


def _handler(v: str) -> str:
    if not HANDLER_RE.match(v):
        raise ValueError("must look like module.function, e.g. handler.handle")
    return v


def _secret_names(v: list[str]) -> list[str]:
    for name in v:
        if not SECRET_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a valid secret name")
    if len(set(v)) != len(v):
        raise ValueError("names must be unique")
    return v


# A function's name as users give it: a lowercase DNS label.
FunctionName = Annotated[str, AfterValidator(_function_name)]
# Names of secrets, each at most once.
SecretNames = Annotated[list[str], Field(max_length=MAX_SECRETS), AfterValidator(_secret_names)]


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
    def _max_not_below_min(cls, v: int, info: ValidationInfo) -> int:
        if "min" in info.data and v < info.data["min"]:
            raise ValueError("must be >= scaling.min")
        return v


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


class FunctionConfig(BaseModel):
    """What a user sets for a function: a deploy's spec, a `kapal.toml` (less the name)."""

    model_config = ConfigDict(extra="forbid")
    # Variable names users may not set: the platform sets its own (KAPAL_FUNCTION, ...).
    reserved_env: ClassVar[str] = "KAPAL_"

    # Runtime family ("python").
    runtime: Annotated[str, AfterValidator(_runtime)] = "python"
    # "module.function" of the handler inside the code folder.
    handler: Annotated[str, AfterValidator(_handler)] = "handler.handle"
    # Handler convention: native, lambda (HTTP API v2 event), lambda-v1 (REST v1 event),
    # openwhisk, wsgi, asgi; None: detected.
    style: Literal["native", "lambda", "lambda-v1", "openwhisk", "wsgi", "asgi"] | None = None
    # Environment variables given to every instance.
    env: dict[str, str] = Field(default_factory=dict)
    # Resource and time limits per instance.
    limits: Limits = Field(default_factory=Limits)
    # Pool sizing.
    scaling: Scaling = Field(default_factory=Scaling)
    # Anyone may invoke it; otherwise an API key with the `invoke` scope is needed.
    public: bool = False
    # Names of secrets (POST /v1/secrets) mounted read-only under /run/secrets/<name>.
    secrets: SecretNames = Field(default_factory=list)
    # What the instances may reach: {"outbound": false} cuts internet access.
    network: Network = Field(default_factory=Network)
    # Retries and concurrency of queued invocations ("async" on the wire).
    async_: AsyncPolicy = Field(
        default_factory=AsyncPolicy,
        validation_alias=AliasChoices("async", "async_"),
        serialization_alias="async",
    )

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_ENV:
            raise ValueError(f"at most {MAX_ENV} variables")
        for key, value in v.items():
            if not ENV_NAME_RE.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if cls.reserved_env and key.startswith(cls.reserved_env):
                raise ValueError(f"{key!r}: names starting with {cls.reserved_env} are reserved")
            if len(value) > MAX_ENV_VALUE or "\x00" in value:
                raise ValueError(f"{key!r}: value too long or holds a NUL byte")
        return v


class FunctionVersion(FunctionConfig):
    """One deployed version of a function, as anyone may see it."""

    # DNS-label name of the function (PREWARM_NAME for a generic prewarmed container).
    name: str
    # Version number, 1 for the first deploy, +1 per update.
    version: int
    # Image built for this version.
    image: str


class FunctionSpec(FunctionVersion):
    """One immutable version of a function, as the scheduler runs it."""

    model_config = ConfigDict(frozen=True)
    # The platform's own specs carry its variables (KAPAL_PREWARM in prewarmed containers).
    reserved_env: ClassVar[str] = ""

    # Its image carries resolved requirements (a generic prewarmed container cannot serve it).
    has_dependencies: bool = False
