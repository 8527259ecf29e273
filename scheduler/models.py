"""A function's spec, defined once: what users set, and what the scheduler runs (shared leaf).

`FunctionConfig` is everything a user sets in a deploy's spec or a `kapal.toml`, with every
value check; the deploy wire model, the API's function view and the CLI's manifest add
their own few fields to it, and `FunctionSpec` adds what the scheduler needs. Adding a
field is one edit here.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HANDLER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
# Node.js: "file.export", the file relative to the code folder without its extension.
NODE_HANDLER_RE = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*\.[A-Za-z_$][A-Za-z0-9_$]*$")
SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
RUNTIMES = ("python", "nodejs")
# The handler a function of each runtime gets when its spec names none.
DEFAULT_HANDLERS = {"python": "handler.handle", "nodejs": "index.handler"}
# Handler conventions the Node.js runtime knows (None: native).
NODE_STYLES = (None, "native", "lambda", "lambda-v1")
MAX_ENV = 200
MAX_ENV_VALUE = 32 * 1024
MAX_SECRETS = 50
# The function name generic prewarmed containers run under (not a valid function name).
PREWARM_NAME = "_prewarm"
# The runtime of a function that is a user's image serving HTTP (no Kapal runtime in it).
IMAGE_RUNTIME = "image"
# The port and health path of Kapal's own runtimes (an image function names its own).
RUNTIME_PORT = 8080
RUNTIME_HEALTH_PATH = "/_/health"
# An image reference: [registry[:port]/]path[:tag][@sha256:hex], at most 512 long.
IMAGE_REF_RE = re.compile(
    r"^[a-z0-9]([a-z0-9._:-]*[a-z0-9])?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)
HEALTH_PATH_RE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,1023}$")


def _function_name(v: str) -> str:
    if not NAME_RE.match(v):
        raise ValueError("must be a lowercase DNS label: a-z, 0-9 and '-', at most 63 long")
    return v


def _runtime(v: str) -> str:
    if v not in RUNTIMES and v != IMAGE_RUNTIME:
        raise ValueError(f"unknown runtime {v!r}; known: {', '.join(RUNTIMES)}")
    return v


def _handler(v: str) -> str:
    if not (HANDLER_RE.match(v) or NODE_HANDLER_RE.match(v)):
        raise ValueError(
            "must look like module.function (python, e.g. handler.handle) "
            "or file.export (nodejs, e.g. index.handler)"
        )
    return v


def _secret_names(v: list[str]) -> list[str]:
    for name in v:
        if not SECRET_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a valid secret name")
    if len(set(v)) != len(v):
        raise ValueError("names must be unique")
    return v


def _image(v: str | None) -> str | None:
    if v is not None and (len(v) > 512 or not IMAGE_REF_RE.match(v)):
        raise ValueError("must be an image reference: [registry/]repository[:tag][@digest]")
    return v


def _health_path(v: str | None) -> str | None:
    if v is not None and not HEALTH_PATH_RE.match(v):
        raise ValueError("must be a path starting with '/', e.g. /healthz")
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
    # `image` is what the user asked to run (a version's is what runs, code functions too).
    image_from_user: ClassVar[bool] = True

    # Runtime family ("python", "nodejs"); "image" for an image function (set when `image` is).
    runtime: Annotated[str, AfterValidator(_runtime)] = "python"
    # An image that serves HTTP, run instead of code (an image function). In a deployed
    # version: the image its instances run (built from code, or this one pinned by digest).
    image: Annotated[str | None, AfterValidator(_image), Field(validate_default=True)] = None
    # Port the image serves HTTP on (Kapal's runtimes: 8080).
    port: Annotated[int, Field(ge=1, le=65535)] = RUNTIME_PORT
    # Path polled until the image answers 2xx/3xx (null: "/"); Kapal's runtimes use /_/health.
    health_path: Annotated[str | None, AfterValidator(_health_path)] = None
    # Secret holding "username:password" for pulling `image` from its registry.
    registry_auth: Annotated[str | None, Field(pattern=SECRET_NAME_RE.pattern)] = None
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

    @model_validator(mode="before")
    @classmethod
    def _default_handler(cls, data: Any) -> Any:
        """A Node.js function without a handler gets Lambda's default, index.handler."""
        if isinstance(data, dict) and data.get("handler") is None:
            runtime = data.get("runtime")
            if isinstance(runtime, str) and runtime in DEFAULT_HANDLERS:
                return {**data, "handler": DEFAULT_HANDLERS[runtime]}
        return data

    @field_validator("handler")
    @classmethod
    def _handler_of_runtime(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("runtime") == "nodejs":
            if not NODE_HANDLER_RE.match(v):
                raise ValueError("must look like file.export, e.g. index.handler or src/app.main")
        elif not HANDLER_RE.match(v):
            raise ValueError("must look like module.function, e.g. handler.handle")
        return v

    @field_validator("style")
    @classmethod
    def _style_of_runtime(cls, v: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("runtime") == "nodejs" and v not in NODE_STYLES:
            known = ", ".join(s for s in NODE_STYLES if s)
            raise ValueError(f"the nodejs runtime knows the styles {known}, not {v!r}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _image_runtime(cls, data: object) -> object:
        # An image is its own runtime: `runtime` follows `image` unless given.
        if cls.image_from_user and isinstance(data, dict) and data.get("image") is not None:
            data = {"runtime": IMAGE_RUNTIME, **data}
        return data

    @field_validator("image")
    @classmethod
    def _image_and_runtime(cls, v: str | None, info: ValidationInfo) -> str | None:
        if "runtime" not in info.data:
            return v  # the runtime itself was refused
        runtime = info.data["runtime"]
        if runtime == IMAGE_RUNTIME and v is None:
            raise ValueError("required for runtime 'image'")
        if v is not None and runtime != IMAGE_RUNTIME and cls.image_from_user:
            raise ValueError(f"an image function has no runtime (not {runtime!r})")
        return v

    @field_validator("port", "health_path", "registry_auth")
    @classmethod
    def _only_for_images(cls, v: object, info: ValidationInfo) -> object:
        unset = cls.model_fields[str(info.field_name)].default
        if v != unset and info.data.get("runtime") != IMAGE_RUNTIME:
            raise ValueError("only for image functions (with `image`)")
        return v

    @field_validator("handler")
    @classmethod
    def _no_handler_for_images(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("runtime") == IMAGE_RUNTIME and v != "handler.handle":
            raise ValueError("an image function has no handler (its image serves)")
        return v

    @field_validator("style")
    @classmethod
    def _no_style_for_images(cls, v: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("runtime") == IMAGE_RUNTIME and v is not None:
            raise ValueError("an image function has no handler style (its image serves)")
        return v

    @property
    def from_image(self) -> bool:
        """An image function: the user's image serves, with no Kapal runtime inside."""
        return self.runtime == IMAGE_RUNTIME

    @property
    def probe_path(self) -> str:
        """The path polled until an instance is ready."""
        if self.from_image:
            return self.health_path or "/"
        return RUNTIME_HEALTH_PATH


class FunctionVersion(FunctionConfig):
    """One deployed version of a function, as anyone may see it."""

    image_from_user: ClassVar[bool] = False

    def config(self) -> FunctionConfig:
        """What its user set: the config part, with the image only for an image function
        (there, pinned by digest; a code function's image is the platform's build)."""
        fields = set(FunctionConfig.model_fields) - (set() if self.from_image else {"image"})
        return FunctionConfig.model_validate(self.model_dump(include=fields))

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
