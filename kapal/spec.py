"""A function's deploy spec: its folder's optional `kapal.toml` plus command-line overrides.

The gateway is the authority on values (name syntax, limit ranges, defaults); this module
only checks shape and types, so a typo in `kapal.toml` fails here, naming the key.
"""

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from kapal.errors import SpecError

SPEC_FILE = "kapal.toml"
SECTIONS = ("env", "limits", "scaling", "network")


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout_s: float | None = None  # seconds one invocation may run
    memory_mb: int | None = None  # memory limit of each instance
    cpus: float | None = None  # CPU share of each instance
    rps: float | None = None  # invocations a second across all instances


class Scaling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min: int | None = None  # instances kept warm even when idle
    max: int | None = None  # instances never exceeded
    concurrency: int | None = None  # in-flight requests per instance
    idle_timeout_s: float | None = None  # idle seconds before an instance is stopped


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # lowercase DNS label
    runtime: str | None = None  # language runtime; gateway default "python"
    handler: str | None = None  # module.function; gateway default "handler.handle"
    env: dict[str, str] = {}  # environment of the function's containers
    limits: Limits = Limits()  # resource limits
    scaling: Scaling = Scaling()  # autoscaling bounds
    public: bool | None = None  # anyone may invoke it (default: an invoke key is needed)
    secrets: list[str] | None = None  # secrets mounted under /run/secrets/<name>
    network: dict[str, Any] | None = None  # {"outbound": false} cuts internet access

    @field_validator("env", mode="before")
    @classmethod
    def _scalars_to_str(cls, value: Any) -> Any:
        # TOML has typed scalars (PORT = 8080); an environment only has strings.
        if not isinstance(value, dict):
            return value
        return {key: _env_value(item) for key, item in value.items()}


def _env_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def default_name(folder: Path) -> str:
    """The name a function gets from its folder: `My_Func/` deploys as `my-func`."""
    return folder.resolve().name.lower().replace("_", "-")


def read_spec_file(folder: Path) -> dict[str, Any]:
    """The folder's `kapal.toml` as a dict, or {} when it has none."""
    path = folder / SPEC_FILE
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: {exc}") from exc
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc}") from exc


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` on top of `base`; sections merge key by key; None means "not given"."""
    merged = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        section = merged.get(key)
        if key in SECTIONS and isinstance(value, Mapping) and isinstance(section, Mapping):
            merged[key] = merge(section, value)
        elif key in SECTIONS and isinstance(value, Mapping):
            merged[key] = {k: v for k, v in value.items() if v is not None}
        else:
            merged[key] = value
    return merged


def load_spec(folder: Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The spec to deploy `folder` with, as the JSON-ready dict the gateway takes."""
    if not folder.is_dir():
        raise SpecError(f"{folder} is not a folder")
    raw = merge(read_spec_file(folder), overrides or {})
    raw.setdefault("name", default_name(folder))
    try:
        spec = FunctionSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_describe(folder / SPEC_FILE, exc)) from exc
    return spec.model_dump(exclude_none=True)


def _describe(path: Path, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        problems.append(f"{where}: {error['msg']} (got {error['input']!r})")
    return f"invalid spec (from {path} and options): " + "; ".join(problems)
