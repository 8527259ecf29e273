"""Image functions without Docker: their spec, their container config, references, logs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker.errors
import pytest
from pydantic import ValidationError

from gateway.logs.engine import row, timestamp_ns
from gateway.wire import DeploySpec
from scheduler.docker_backend import address_port, container_config, runs_as_root
from scheduler.errors import ImageUnavailable
from scheduler.images import (
    ImageResolver,
    RegistryAuth,
    ResolvedImage,
    registry_of,
    repository_of,
)
from scheduler.models import FunctionSpec

PINNED = "registry.example:5000/team/web@sha256:" + "a" * 64


def image_spec(**kw: Any) -> FunctionSpec:
    return FunctionSpec(name="web", version=2, image=PINNED, runtime="image", **kw)


def test_an_image_in_the_spec_makes_an_image_function() -> None:
    spec = DeploySpec.model_validate({"image": "registry.example:5000/team/web:1", "port": 9000})
    assert (spec.runtime, spec.port, spec.probe_path) == ("image", 9000, "/")
    assert spec.from_image
    code = DeploySpec.model_validate({})
    assert (code.runtime, code.image, code.probe_path, code.from_image) == (
        "python",
        None,
        "/_/health",
        False,
    )


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"image": "app:1", "runtime": "python"}, "image"),
        ({"runtime": "image"}, "image"),
        ({"image": "app:1", "handler": "main.run"}, "handler"),
        ({"image": "app:1", "style": "wsgi"}, "style"),
        ({"port": 9000}, "port"),
        ({"health_path": "/healthz"}, "health_path"),
        ({"registry_auth": "creds"}, "registry_auth"),
        ({"image": "UPPER/case"}, "image"),
        ({"image": "app:1", "health_path": "healthz"}, "health_path"),
        ({"image": "app:1", "port": 70000}, "port"),
    ],
)
def test_image_fields_are_checked(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        DeploySpec.model_validate(data)
    assert field in str(caught.value)


def test_a_version_keeps_its_pinned_image_and_shows_it_only_for_image_functions() -> None:
    assert image_spec().config().image == PINNED
    code = FunctionSpec(name="fn", version=1, image="kapal-fn/fn:1")
    assert code.config().image is None


def test_an_image_instance_is_hardened_and_runs_as_non_root() -> None:
    cfg = container_config(image_spec(port=9000), "ns", "net", "i1", image_user="")
    host = cfg["host_config"]
    assert (host["cap_drop"], host["security_opt"], host["read_only"]) == (
        ["ALL"],
        ["no-new-privileges"],
        True,
    )
    assert host["pids_limit"] == 512 and "/tmp" in host["tmpfs"]
    assert cfg["user"] == "10001:10001"
    assert cfg["labels"]["kapal.port"] == "9000"
    assert address_port(cfg["labels"]) == 9000
    # No Kapal runtime inside: none of its settings.
    assert set(cfg["environment"]) == {"KAPAL_FUNCTION", "KAPAL_VERSION"}
    # An image with a user of its own keeps it.
    assert "user" not in container_config(image_spec(), "ns", "net", "i1", image_user="app")


def test_root_users() -> None:
    assert all(runs_as_root(u) for u in ("", "root", "0", "0:0", "root:root"))
    assert not any(runs_as_root(u) for u in ("1000", "app", "10001:10001"))
    assert address_port({}) == 8080


def test_references() -> None:
    assert registry_of("127.0.0.1:5000/team/web:1") == "127.0.0.1:5000"
    assert registry_of("localhost/web") == "localhost"
    assert registry_of("team/web:1") is None
    assert registry_of("web") is None
    assert repository_of("127.0.0.1:5000/team/web:1") == "127.0.0.1:5000/team/web"
    assert repository_of(PINNED) == "registry.example:5000/team/web"
    assert repository_of("web") == "web"


def test_registry_auth_is_username_colon_password() -> None:
    assert RegistryAuth.parse("me:pa:ss\n", "s") == RegistryAuth("me", "pa:ss")
    with pytest.raises(ImageUnavailable, match="registry_auth"):
        RegistryAuth.parse("no-colon", "s")


def test_an_engine_log_entry_becomes_a_row() -> None:
    ns = timestamp_ns(b"2026-12-06T15:07:37.123456789Z")
    assert ns == 1796569657123456789
    found = row(b"2026-12-06T15:07:37.123456789Z tab\there \\ \xff\n", "stderr")
    assert found is not None
    seq, data = found
    assert seq == ns
    assert data == f"{ns}\t1796569657.123457\tstderr\t\\N\t\\N\ttab\\there \\\\ \\\\xff\n".encode()
    assert row(b"not a timestamp\n", "stdout") is None


class FakeEngine:
    """inspect_image and pull, as the resolver uses them."""

    def __init__(self, images: dict[str, dict[str, Any]], registry: dict[str, dict[str, Any]]):
        self.images = images
        self.registry = registry
        self.pulled: list[tuple[str, Any]] = []

    def inspect_image(self, ref: str) -> dict[str, Any]:
        if ref not in self.images:
            raise docker.errors.ImageNotFound(ref)
        return self.images[ref]

    def pull(self, ref: str, **kw: Any) -> Iterator[dict[str, Any]]:
        self.pulled.append((ref, kw.get("auth_config")))
        if ref not in self.registry:
            yield {"error": f"manifest for {ref} not found: manifest unknown"}
            return
        self.images[ref] = self.registry[ref]
        yield {"status": "Digest: sha256:..."}


REMOTE = "127.0.0.1:5000/team/web:1"
REMOTE_ID = "sha256:" + "1" * 64
REMOTE_PINNED = "127.0.0.1:5000/team/web@sha256:" + "2" * 64
REMOTE_INFO = {"Id": REMOTE_ID, "RepoDigests": [REMOTE_PINNED]}


async def test_a_registry_image_is_always_pulled_and_pinned_by_its_digest() -> None:
    engine = FakeEngine({REMOTE: {"Id": "sha256:old"}}, {REMOTE: REMOTE_INFO})
    resolved = await ImageResolver(engine).resolve(REMOTE, RegistryAuth("me", "pw"))  # type: ignore[arg-type]
    assert resolved == ResolvedImage(REMOTE_PINNED, REMOTE_ID)
    assert engine.pulled == [(REMOTE, {"username": "me", "password": "pw"})]


async def test_a_local_image_is_not_pulled_and_is_pinned_by_its_id() -> None:
    engine = FakeEngine({"web:1": {"Id": "sha256:abc", "RepoDigests": []}}, {})
    resolved = await ImageResolver(engine).resolve("web:1", None)  # type: ignore[arg-type]
    assert resolved == ResolvedImage("sha256:abc", "sha256:abc")
    assert engine.pulled == []


async def test_an_image_that_cannot_be_had_is_unavailable() -> None:
    engine = FakeEngine({}, {})
    with pytest.raises(ImageUnavailable, match="manifest unknown"):
        await ImageResolver(engine).resolve("127.0.0.1:5000/x:nope", None)  # type: ignore[arg-type]
    with pytest.raises(ImageUnavailable, match="web:2"):
        await ImageResolver(engine).resolve("web:2", None)  # type: ignore[arg-type]
