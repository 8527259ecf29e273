"""`kapal.yaml`: several functions with their webhooks and schedules, read and checked whole.

A bad manifest is refused with the file, the line and the field: the YAML is composed into
nodes (which carry their marks) and the pydantic error's location is walked down them.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from kapal.errors import KapalError
from scheduler.models import FunctionConfig, FunctionName

DEFAULT_FILE = "kapal.yaml"
# Five cron fields, or a macro; the gateway parses them fully when the schedule is made.
CRON_FIELD = re.compile(r"^[\w*/,\-?]+$")
CRON_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


class ManifestError(KapalError):
    """The manifest cannot be deployed; the message names file, line and field."""


class WebhookEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # How deliveries are signed; the endpoint's URL and secret are printed when it is made.
    verify: Literal["github", "stripe", "hmac-sha256", "none"]


class ScheduleEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Five fields (minute hour day month weekday) or @hourly, @daily, ...
    cron: str
    # JSON body of each tick's invocation.
    payload: Any = None
    # IANA time zone the cron fields are read in.
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        fields = value.split()
        if value.strip() in CRON_MACROS:
            return value
        if len(fields) != 5 or not all(CRON_FIELD.match(f) for f in fields):
            raise ValueError("expected five cron fields or a macro such as @hourly")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    def key(self, function: str) -> tuple[str, str, str, str]:
        """What identifies a schedule: all of it (the API gives schedules no name)."""
        return (function, self.cron, self.timezone, canonical(self.payload))


class FunctionEntry(FunctionConfig):
    # The function's code, relative to the manifest's folder (none for an image function).
    folder: Annotated[str | None, Field(validate_default=True)] = None
    # Webhook endpoints that invoke it.
    webhooks: list[WebhookEntry] = Field(default_factory=list)
    # Cron schedules that invoke it.
    schedules: list[ScheduleEntry] = Field(default_factory=list)

    @field_validator("folder")
    @classmethod
    def _code_or_image(cls, v: str | None, info: ValidationInfo) -> str | None:
        image = info.data.get("image")
        if v is None and image is None:
            raise PydanticCustomError("missing", "Field required (or image, for an image function)")
        if v is not None and image is not None:
            raise ValueError("an image function has no folder")
        return v


class ManifestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Functions by name.
    functions: Annotated[dict[FunctionName, FunctionEntry], Field(min_length=1)]


@dataclass(frozen=True)
class ManifestFunction:
    """One function of a manifest, ready to deploy."""

    name: str
    # None: an image function.
    folder: Path | None
    # The deploy spec, as the gateway takes it (name included).
    spec: dict[str, Any]
    webhooks: list[WebhookEntry]
    schedules: list[ScheduleEntry]


@dataclass(frozen=True)
class Manifest:
    path: Path
    functions: list[ManifestFunction]
    # The composed YAML, for the line of a field found wrong after parsing.
    root: yaml.Node | None

    def where(self, *loc: int | str) -> str:
        """`file:line: dotted.field` of a field (or of what holds it when it is absent)."""
        return f"{self.path}:{line_of(self.root, loc)}: " + ".".join(str(p) for p in loc)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def load_manifest(path: Path) -> Manifest:
    """Read and check `path` whole; ManifestError names the file, line and field."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        raise ManifestError(f"{path}:{line}: not valid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from exc
    try:
        model = ManifestModel.model_validate(data if data is not None else {})
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = error["loc"]
        where = ".".join(str(part) for part in loc if part != "[key]") or "(top)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        got = "" if error["type"] == "missing" else f" (got {error['input']!r})"
        raise ManifestError(
            f"{path}:{line_of(root, loc)}: {where}: "
            f"{error['msg'].removeprefix('Value error, ')}{got}{more}"
        ) from exc
    base = path.resolve().parent
    functions = []
    for name, entry in model.functions.items():
        spec = entry.model_dump(
            mode="json",
            by_alias=True,
            exclude_unset=True,
            exclude={"folder", "webhooks", "schedules"},
        )
        functions.append(
            ManifestFunction(
                name=name,
                folder=None if entry.folder is None else base / entry.folder,
                spec={"name": name, **spec},
                webhooks=entry.webhooks,
                schedules=entry.schedules,
            )
        )
    return Manifest(path, functions, root)


def line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int:
    """The 1-based line of the node at `loc` (a pydantic error location), or of the
    deepest node on the way there (a missing field: the mapping that lacks it)."""
    line = node.start_mark.line + 1 if node is not None else 1
    key_line = line
    for part in loc:
        if part == "[key]":  # the mapping key itself is wrong (a function's name)
            return key_line
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if str(key.value) == str(part):
                    child = value
                    key_line = key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if 0 <= part < len(node.value):
                child = node.value[part]
        if child is None:
            return line
        node = child
        line = node.start_mark.line + 1
    return line


def handler_file(folder: Path, handler: str, runtime: str = "python") -> Path | None:
    """The file `module.function` (Node.js: `file.export`) loads from `folder`, or None."""
    if runtime == "nodejs":
        file = handler.rpartition(".")[0]
        candidates = [folder / f"{file}{ext}" for ext in (".js", ".mjs", ".cjs")]
        return next((c for c in candidates if c.is_file()), None)
    module = handler.rpartition(".")[0].replace(".", "/")
    for candidate in (folder / f"{module}.py", folder / module / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None
