"""The function's models derive from one config: same fields, same checks, same wire JSON."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.api import function_out
from gateway.store import FunctionRow, VersionRow
from gateway.validation import describe
from gateway.wire import DeploySpec, FunctionOut, InstanceOut, PoolStatus
from kapal.spec import Manifest
from scheduler.models import FunctionConfig, FunctionSpec
from scheduler.scheduler import InstanceView, PoolView

CONFIG = {"runtime", "handler", "style", "env", "limits", "scaling", "public", "secrets", "network"}
IMAGE = {"image", "port", "health_path", "registry_auth"}
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_every_model_of_a_function_has_the_config_fields() -> None:
    config = set(FunctionConfig.model_fields)
    assert config == {*CONFIG, *IMAGE, "async_"}
    for model in (DeploySpec, FunctionSpec, FunctionOut, Manifest):
        assert config <= set(model.model_fields), model
    assert set(DeploySpec.model_fields) - config == {"name"}
    assert set(Manifest.model_fields) - config == {"name"}
    assert set(FunctionSpec.model_fields) - config == {"name", "version", "has_dependencies"}


def test_pool_and_instance_views_are_the_schedulers() -> None:
    def names(cls: type) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    assert names(InstanceOut) == names(InstanceView)
    assert names(PoolStatus) == names(PoolView)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"name": "Bad_Name"}, "name"),
        ({"runtime": "cobol"}, "runtime"),
        ({"handler": "no-dots"}, "handler"),
        ({"style": "azure"}, "style"),
        ({"limits": {"timeout_s": 0}}, "limits.timeout_s"),
        ({"scaling": {"min": 5, "max": 2}}, "scaling.max"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"env": {"KAPAL_X": "x"}}, "env"),
        ({"secrets": ["ok", "ok"]}, "secrets"),
        ({"secrets": ["../x"]}, "secrets"),
        ({"async": {"max_retries": -1}}, "async.max_retries"),
        ({"network": {"inbound": True}}, "network.inbound"),
        ({"color": "blue"}, "color"),
    ],
)
def test_a_bad_deploy_spec_names_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        DeploySpec.model_validate(spec)
    assert describe(caught.value).startswith(f"{field}: ")


def test_the_deploy_spec_reaches_the_scheduler_whole() -> None:
    given = DeploySpec.model_validate(
        {"env": {"A": "1"}, "async": {"concurrency": 2}, "network": {"outbound": False}}
    )
    config = given.model_dump(include=set(FunctionConfig.model_fields) - {"image"})
    spec = FunctionSpec(**config, name="f", version=1, image="i")
    assert (spec.env, spec.async_.concurrency, spec.network.outbound) == ({"A": "1"}, 2, False)


def test_the_platforms_own_spec_may_carry_its_variables() -> None:
    spec = FunctionSpec(name="_prewarm", version=0, image="i", env={"KAPAL_PREWARM": "1"})
    assert spec.env == {"KAPAL_PREWARM": "1"}


class Views:
    def describe(self, name: str) -> list[InstanceView]:
        return [InstanceView("i1", 2, "ready", 1, "10.0.0.2:8080", "abc", "new")]

    def status(self, name: str) -> PoolView | None:
        return PoolView(1, 1, 0, 0, 0, 1, 0, 0, False)


class Pending:
    def pending_count(self, function: str) -> int:
        return 3


def test_a_function_on_the_wire() -> None:
    spec = FunctionSpec(
        name="f", version=2, image="img:2", has_dependencies=True, async_={"max_retries": 0}
    )
    row = FunctionRow(spec, 4, NOW, NOW, [VersionRow(2, "img:2", NOW)])

    out = function_out(row, Views(), Pending())  # type: ignore[arg-type]

    assert set(out) == {
        "name",
        "version",
        "runtime",
        "handler",
        "style",
        "image",
        "port",
        "health_path",
        "registry_auth",
        "env",
        "limits",
        "scaling",
        "public",
        "secrets",
        "network",
        "async",
        "created_at",
        "updated_at",
        "invocations",
        "versions",
        "instances",
        "pool",
    }
    assert out["async"] == {"max_retries": 0, "concurrency": 16}
    assert (out["name"], out["version"], out["invocations"]) == ("f", 2, 7)
    assert out["instances"][0]["tier"] == "new"
    assert out["pool"]["in_flight"] == 1
