"""The Swarm backend's replica changes against an in-memory stand-in for the manager's API:
what it sends, and what it never sends."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests

from scheduler.errors import BackendError, StartFailed
from scheduler.models import FunctionSpec
from scheduler.swarm_backend import SwarmBackend
from scheduler.swarm_spec import secret_name, service_spec, with_replicas

IMAGE = "r:5000/kapal-fn/ns-fn@sha256:" + "a" * 64
SPEC = FunctionSpec(name="fn", version=3, image=IMAGE)


def response(status: int, body: dict[str, Any] | None = None) -> requests.Response:
    made = requests.Response()
    made.status_code = status
    made._content = json.dumps(body).encode() if body is not None else b""
    made.url = "http://manager/v1.41/services"
    made.reason = "error" if status >= 400 else "OK"
    return made


class FakeManager:
    """The few calls set_replicas makes, on one service kept in memory."""

    base_url = "http://manager"
    api_version = "1.41"

    def __init__(self) -> None:
        self.service: dict[str, Any] | None = None
        self.posts: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, str]]] = []
        # Answers to give updates before taking them (e.g. someone else's update first).
        self.refusals: list[requests.Response] = []
        self.images, self.registry, self.pulls = {}, {}, []
        self.stored_secrets, self.task_states = {}, {}

    # Images on the manager's engine (name -> USER), what the registry has, pulls made.
    images: dict[str, str]
    registry: dict[str, str]
    pulls: list[str]
    # Secrets by name (ID, value); tasks by ID.
    stored_secrets: dict[str, tuple[str, bytes]]
    task_states: dict[str, dict[str, Any]]

    def inspect_image(self, image: str) -> dict[str, Any]:
        if image not in self.images:
            raise docker.errors.ImageNotFound(image)
        return {"Config": {"User": self.images[image]}}

    def pull(self, image: str, auth_config: dict[str, str] | None = None) -> None:
        self.pulls.append(image)
        if image not in self.registry:
            raise docker.errors.APIError(f"manifest for {image} not found")
        self.images[image] = self.registry[image]

    def secrets(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        name = filters["name"]
        return [
            {"ID": sid, "Spec": {"Name": n}}
            for n, (sid, _) in self.stored_secrets.items()
            if n.startswith(name)
        ]

    def create_secret(self, name: str, data: bytes, labels: dict[str, str]) -> dict[str, str]:
        assert labels == {"kapal.managed": "true", "kapal.namespace": "ns", "kapal.function": "fn"}
        self.stored_secrets[name] = (f"sid{len(self.stored_secrets)}", data)
        return {"ID": self.stored_secrets[name][0]}

    def inspect_task(self, task_id: str) -> dict[str, Any]:
        if task_id not in self.task_states:
            raise docker.errors.NotFound(task_id)
        return self.task_states[task_id]

    def services(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        return [] if self.service is None else [copy.deepcopy(self.service)]

    def post(
        self, url: str, data: str, params: dict[str, Any] | None, headers: dict[str, str]
    ) -> requests.Response:
        path = url.removeprefix(f"{self.base_url}/v{self.api_version}")
        body = json.loads(data)
        self.posts.append((path, body, params or {}, headers))
        if path == "/services/create":
            self.service = {"ID": "svc1", "Version": {"Index": 10}, "Spec": body}
            return response(201, {"ID": "svc1"})
        assert self.service is not None and path == "/services/svc1/update"
        if self.refusals:
            self.service["Version"]["Index"] += 1  # the other update
            return self.refusals.pop(0)
        assert params == {"version": self.service["Version"]["Index"]}
        self.service = {
            "ID": "svc1",
            "Version": {"Index": self.service["Version"]["Index"] + 1},
            "Spec": body,
        }
        return response(200, {})


OUT_OF_SEQUENCE = {"message": "rpc error: code = Unknown desc = update out of sequence"}


@pytest.fixture
def manager() -> FakeManager:
    return FakeManager()


@pytest.fixture
def backend(manager: FakeManager) -> Iterator[SwarmBackend]:
    made = SwarmBackend("ns", "ns-functions", manager_url="tcp://127.0.0.1:9", registry="r:5000")
    made.api = manager  # type: ignore[assignment]
    yield made
    made.close()


async def test_the_first_call_creates_the_service(
    backend: SwarmBackend, manager: FakeManager
) -> None:
    await backend.set_replicas(SPEC, 2)
    [(path, body, _, headers)] = manager.posts
    assert path == "/services/create"
    assert body == service_spec(SPEC, "ns", "ns-functions", 2)
    assert "X-Registry-Auth" not in headers


async def test_only_the_replica_count_goes_back_with_the_stored_spec(
    backend: SwarmBackend, manager: FakeManager
) -> None:
    await backend.set_replicas(SPEC, 1)
    assert manager.service is not None
    stored = copy.deepcopy(manager.service["Spec"])
    await backend.set_replicas(SPEC, 3)
    path, body, params, _ = manager.posts[-1]
    assert path == "/services/svc1/update"
    assert params == {"version": 10}
    assert body == with_replicas(stored, 3)
    assert body["TaskTemplate"] == stored["TaskTemplate"]  # no new template: tasks stay


async def test_the_same_count_sends_nothing(backend: SwarmBackend, manager: FakeManager) -> None:
    await backend.set_replicas(SPEC, 2)
    await backend.set_replicas(SPEC, 2)
    assert len(manager.posts) == 1


async def test_no_service_is_made_to_run_nothing(
    backend: SwarmBackend, manager: FakeManager
) -> None:
    await backend.set_replicas(SPEC, 0)
    assert manager.posts == []


async def test_an_update_out_of_sequence_is_tried_once_more_on_the_new_version(
    backend: SwarmBackend, manager: FakeManager
) -> None:
    await backend.set_replicas(SPEC, 1)
    manager.refusals = [response(500, OUT_OF_SEQUENCE)]
    await backend.set_replicas(SPEC, 4)
    assert manager.service is not None
    assert manager.service["Spec"]["Mode"] == {"Replicated": {"Replicas": 4}}
    assert [params for _, _, params, _ in manager.posts[1:]] == [{"version": 10}, {"version": 11}]


async def test_a_second_refusal_is_an_error(backend: SwarmBackend, manager: FakeManager) -> None:
    await backend.set_replicas(SPEC, 1)
    manager.refusals = [response(500, OUT_OF_SEQUENCE), response(500, OUT_OF_SEQUENCE)]
    with pytest.raises(BackendError, match="out of sequence"):
        await backend.set_replicas(SPEC, 4)


async def test_nodes_get_the_registry_credentials(manager: FakeManager) -> None:
    backend = SwarmBackend(
        "ns",
        "ns-functions",
        manager_url="tcp://127.0.0.1:9",
        registry="r:5000",
        registry_auth=("user", "pw"),
    )
    backend.api = manager  # type: ignore[assignment]
    try:
        await backend.set_replicas(SPEC, 1)
        await backend.set_replicas(SPEC, 2)
    finally:
        backend.close()
    for _, _, _, headers in manager.posts:
        sent = json.loads(base64.urlsafe_b64decode(headers["X-Registry-Auth"]))
        assert sent == {"username": "user", "password": "pw", "serveraddress": "r:5000"}


async def test_single_instances_are_not_started_or_stopped(backend: SwarmBackend) -> None:
    assert backend.replicated
    with pytest.raises(BackendError, match="replica count"):
        await backend.start(SPEC, "i1")
    with pytest.raises(BackendError, match="replica count"):
        await backend.pause("t1")
    await backend.remove("t1", grace_s=5)  # nothing to do: the replica count decides


async def test_an_image_that_runs_as_root_is_pulled_once_and_run_as_the_runtime_user(
    backend: SwarmBackend, manager: FakeManager
) -> None:
    image_fn = FunctionSpec(name="fn", version=1, image=IMAGE, runtime="image")
    manager.registry[IMAGE] = "root"
    await backend.set_replicas(image_fn, 1)
    assert manager.pulls == [IMAGE]
    assert manager.service is not None
    assert manager.service["Spec"]["TaskTemplate"]["ContainerSpec"]["User"] == "10001:10001"
    manager.service = None
    await backend.set_replicas(image_fn, 1)
    assert manager.pulls == [IMAGE]  # its USER is known now


async def test_an_image_that_cannot_be_had_fails_the_start(
    backend: SwarmBackend, manager: FakeManager
) -> None:
    image_fn = FunctionSpec(name="fn", version=1, image=IMAGE, runtime="image")
    with pytest.raises(StartFailed, match="cannot be had"):
        await backend.set_replicas(image_fn, 1)
    assert manager.posts == []


async def test_secrets_are_made_once_per_value(manager: FakeManager, tmp_path: Path) -> None:
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "pw").write_bytes(b"v1")
    backend = SwarmBackend(
        "ns", "net", manager_url="tcp://127.0.0.1:9", registry="r", secrets_root=tmp_path
    )
    backend.api = manager  # type: ignore[assignment]
    with_secret = SPEC.model_copy(update={"secrets": ["pw"]})
    try:
        await backend.set_replicas(with_secret, 1)
        await backend.set_replicas(with_secret.model_copy(update={"version": 4}), 1)
        (tmp_path / "fn" / "pw").write_bytes(b"v2")
        await backend.set_replicas(with_secret.model_copy(update={"version": 5}), 1)
    finally:
        backend.close()
    assert {name: value for name, (_, value) in manager.stored_secrets.items()} == {
        secret_name("ns", "fn", "pw", b"v1"): b"v1",
        secret_name("ns", "fn", "pw", b"v2"): b"v2",
    }
    refs = [
        body["TaskTemplate"]["ContainerSpec"]["Secrets"][0]["SecretID"]
        for path, body, _, _ in manager.posts
        if path == "/services/create"
    ]
    assert refs == ["sid0", "sid0", "sid1"]


async def test_a_secret_not_written_fails_the_start(manager: FakeManager, tmp_path: Path) -> None:
    backend = SwarmBackend(
        "ns", "net", manager_url="tcp://127.0.0.1:9", registry="r", secrets_root=tmp_path
    )
    backend.api = manager  # type: ignore[assignment]
    try:
        with pytest.raises(StartFailed, match="secret pw of fn"):
            await backend.set_replicas(SPEC.model_copy(update={"secrets": ["pw"]}), 1)
    finally:
        backend.close()
    assert manager.posts == []


def task(state: str, desired: str, exit_code: int = 0, err: str = "") -> dict[str, Any]:
    return {
        "DesiredState": desired,
        "Status": {"State": state, "Err": err, "ContainerStatus": {"ExitCode": exit_code}},
    }


async def test_oom_is_told_from_the_tasks_end(backend: SwarmBackend, manager: FakeManager) -> None:
    manager.task_states = {
        "killed": task("failed", "running", 137, "task: non-zero exit (137)"),
        "said": task("failed", "running", 1, "OOM killed"),
        "stopped": task("shutdown", "shutdown", 137),
        "failed": task("failed", "running", 1, "task: non-zero exit (1)"),
        "runs": task("running", "running"),
    }
    assert await backend.oom_killed("killed")
    assert await backend.oom_killed("said")
    assert not await backend.oom_killed("stopped")  # a scale-down's kill, not memory
    assert not await backend.oom_killed("failed")
    assert not await backend.oom_killed("runs", wait_s=0.1)
    assert not await backend.oom_killed("gone")


class LeavingNetwork(FakeManager):
    """An overlay removed a moment ago: listed for a few more looks, joined by nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.listed_for = 3
        self.created: list[tuple[str, bool]] = []

    def networks(self, names: list[str]) -> list[dict[str, Any]]:
        if names == ["ns-functions"] and self.listed_for > 0:
            self.listed_for -= 1
            return [{"Name": "ns-functions"}]
        return [{"Name": name} for name, _ in self.created if name in names]

    def create_network(self, name: str, internal: bool, **kw: Any) -> None:
        self.created.append((name, internal))

    def post(
        self, url: str, data: str, params: dict[str, Any] | None, headers: dict[str, str]
    ) -> requests.Response:
        if not self.created:
            self.posts.append((url, json.loads(data), {}, headers))
            return response(500, {"message": "network ns-functions not found"})
        return super().post(url, data, params, headers)


async def test_a_service_waits_for_an_overlay_being_removed_and_makes_it_again() -> None:
    manager = LeavingNetwork()
    backend = SwarmBackend("ns", "ns-functions", manager_url="tcp://127.0.0.1:9", registry="r")
    backend.api = manager  # type: ignore[assignment]
    try:
        await backend.set_replicas(SPEC, 1)
    finally:
        backend.close()
    assert manager.listed_for == 0
    assert manager.created == [("ns-functions", False), ("ns-functions-internal", True)]
    assert manager.service is not None
