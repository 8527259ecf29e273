"""The Swarm backend's replica changes against an in-memory stand-in for the manager's API:
what it sends, and what it never sends."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from scheduler.errors import BackendError
from scheduler.models import FunctionSpec
from scheduler.swarm_backend import SwarmBackend
from scheduler.swarm_spec import service_spec, with_replicas

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
