"""A function's deploy spec: its folder's optional `kapal.toml` plus command-line overrides.

Checked with the gateway's own definition of a function's config (`FunctionConfig`), so a
typo or a bad value in `kapal.toml` fails here, naming the file and the field. Only what
the user gave is sent: the gateway's defaults apply to the rest.
"""

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError, field_validator

from kapal.errors import SpecError
from scheduler.models import FunctionConfig, FunctionName

SPEC_FILE = "kapal.toml"


class Manifest(FunctionConfig):
    """`kapal.toml` and the command-line options: the function's config and its name."""

    # Lowercase DNS label; default: the folder's name.
    name: FunctionName

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
    """`overrides` on top of `base`; tables merge key by key; None means "not given"."""
    merged = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            section = merged.get(key)
            value = merge(section if isinstance(section, Mapping) else {}, value)
            if not value and key not in merged:
                continue  # a table of options none of which was given
        merged[key] = value
    return merged


def load_spec(folder: Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The spec to deploy `folder` with, as the JSON-ready dict the gateway takes."""
    if not folder.is_dir():
        raise SpecError(f"{folder} is not a folder")
    raw = merge(read_spec_file(folder), overrides or {})
    raw.setdefault("name", default_name(folder))
    try:
        spec = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_describe(f"{folder / SPEC_FILE} and options", exc)) from exc
    return spec.model_dump(mode="json", by_alias=True, exclude_unset=True)


def image_spec(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The spec of an image function, from the command-line options alone (no folder)."""
    raw = merge({}, overrides)
    if "name" not in raw:
        raise SpecError("an image function needs a name (--name)")
    try:
        spec = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_describe("options", exc)) from exc
    return spec.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _describe(source: str, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        problems.append(f"{where}: {error['msg']} (got {error['input']!r})")
    return f"invalid spec (from {source}): " + "; ".join(problems)
