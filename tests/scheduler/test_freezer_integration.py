"""Pausing through the container's cgroup on a real engine: a frozen instance serves
nothing until thawed, is seen frozen by a restarted gateway, and is removed like any."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import docker
import pytest

from infra.local import cleanup_namespace, new_namespace
from scheduler import probe
from scheduler.backend import Running
from scheduler.docker_backend import DockerBackend
from scheduler.models import PREWARM_NAME, FunctionSpec
from scheduler.pool import new_instance_id


@pytest.fixture
async def backend(docker_client: docker.DockerClient) -> AsyncIterator[DockerBackend]:
    namespace = new_namespace()
    made = DockerBackend(namespace, f"{namespace}-functions", docker_client, isolate_host=False)
    await made.ensure_network()
    try:
        yield made
    finally:
        for c in await made.list_managed():
            await made.remove(c.id)
        await made.remove_network()
        made.lease.release()
        assert not cleanup_namespace(docker_client, namespace)


async def runtime(backend: DockerBackend) -> Running:
    spec = FunctionSpec(
        name=PREWARM_NAME,
        version=0,
        runtime="python",
        image=os.environ["KAPAL_RUNTIME_IMAGE_PYTHON"],
        env={"KAPAL_PREWARM": "1"},
    )
    running = await backend.start(spec, new_instance_id())
    await probe.wait_ready(running.address, time.monotonic() + 60)
    return running


async def answers(address: str) -> bool:
    """Whether the runtime answers its health check (a frozen one never does)."""
    try:
        status, _ = await asyncio.wait_for(probe.health(address), 2.0)
    except TimeoutError:
        return False
    return status == 200


async def test_a_cgroup_frozen_instance_serves_nothing_until_thawed(
    backend: DockerBackend, docker_client: docker.DockerClient
) -> None:
    c = await runtime(backend)
    await backend.pause(c.id)
    # Kapal froze it itself: the engine still says it runs, the backend says paused.
    assert backend.pauses.cgroup(c.id) is not None
    assert docker_client.api.inspect_container(c.id)["State"]["Status"] == "running"
    seen = await backend.inspect(c.id)
    assert seen is not None and seen.paused
    assert not await answers(c.address)
    await backend.unpause(c.id)
    assert await answers(c.address)
    seen = await backend.inspect(c.id)
    assert seen is not None and not seen.paused


async def test_a_restarted_gateway_sees_the_freeze_and_thaws_it(
    backend: DockerBackend, docker_client: docker.DockerClient
) -> None:
    c = await runtime(backend)
    await backend.pause(c.id)
    later = DockerBackend(backend.namespace, backend.network, docker_client, isolate_host=False)
    try:
        listed = {r.id: r for r in await later.list_managed()}
        assert listed[c.id].paused
        await later.unpause(c.id)
        assert await answers(c.address)
        assert not {r.id: r for r in await later.list_managed()}[c.id].paused
    finally:
        later.lease.release()


async def test_an_engine_paused_instance_is_unpaused_by_the_engine(
    backend: DockerBackend, docker_client: docker.DockerClient
) -> None:
    c = await runtime(backend)
    # A gateway that could not write the cgroup (or an older one) paused it.
    engine_only = DockerBackend(
        backend.namespace, backend.network, docker_client, isolate_host=False, freeze_cgroups=False
    )
    try:
        await engine_only.pause(c.id)
    finally:
        engine_only.lease.release()
    assert docker_client.api.inspect_container(c.id)["State"]["Paused"]
    assert {r.id: r for r in await backend.list_managed()}[c.id].paused
    await backend.unpause(c.id)
    assert not docker_client.api.inspect_container(c.id)["State"]["Paused"]
    assert await answers(c.address)


async def test_a_frozen_instance_is_thawed_then_stopped_gracefully_and_removed(
    backend: DockerBackend, docker_client: docker.DockerClient
) -> None:
    c = await runtime(backend)
    await backend.pause(c.id)
    since = int(time.time()) - 1
    await backend.remove(c.id, grace_s=10.0)
    with pytest.raises(docker.errors.NotFound):
        docker_client.api.inspect_container(c.id)
    died = docker_client.api.events(
        since=since,
        until=int(time.time()) + 1,
        filters={"container": c.id, "event": "die"},
        decode=True,
    )
    # The runtime exits 0 on SIGTERM; a frozen one never handles it and is killed (137).
    assert [e["Actor"]["Attributes"]["exitCode"] for e in died] == ["0"]


async def test_a_frozen_instance_left_behind_is_removed_by_force(
    backend: DockerBackend, docker_client: docker.DockerClient
) -> None:
    c = await runtime(backend)
    await backend.pause(c.id)
    docker_client.api.remove_container(c.id, force=True)  # as `infra down` and tests do
    with pytest.raises(docker.errors.NotFound):
        docker_client.api.inspect_container(c.id)
