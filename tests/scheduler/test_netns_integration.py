"""New instances join a network namespace made ahead (scheduler/netns.py), on real Docker:
locked down as before, found and removed with their holder, nothing left behind."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import docker
import pytest

from infra.local import new_namespace
from scheduler import probe
from scheduler.docker_backend import LABEL_NAMESPACE, RUNTIME_UID, DockerBackend
from scheduler.models import PREWARM_NAME, FunctionSpec, Limits, Network
from scheduler.netns import LABEL_ROLE, ROLE_NETNS
from scheduler.pool import new_instance_id

pytestmark = pytest.mark.integration


def _spec(name: str, *, outbound: bool = True) -> FunctionSpec:
    # A prewarm runtime answers its health check without any code.
    return FunctionSpec(
        name=name,
        version=1,
        runtime="python",
        image=os.environ["KAPAL_RUNTIME_IMAGE_PYTHON"],
        env={"KAPAL_PREWARM": "1"},
        limits=Limits(memory_mb=128),
        network=Network(outbound=outbound),
    )


def _holders(client: docker.DockerClient, namespace: str) -> list[Any]:
    labels = [f"{LABEL_NAMESPACE}={namespace}", f"{LABEL_ROLE}={ROLE_NETNS}"]
    return client.containers.list(all=True, filters={"label": labels})


async def _spares(
    client: docker.DockerClient, namespace: str, network: str, backend: DockerBackend | None = None
) -> list[str]:
    """The ids of the holders on `network` once one is running, not joined, and (when
    `backend` is given) ready to be taken."""
    for _ in range(300):
        if backend is not None:
            assert backend.spares is not None
            if not backend.spares.ready(network):
                await asyncio.sleep(0.1)
                continue
        found = [
            c.id
            for c in _holders(client, namespace)
            if c.status == "running" and network in c.attrs["NetworkSettings"]["Networks"]
        ]
        joined = {
            c.labels.get("kapal.netns")
            for c in client.containers.list(
                all=True, filters={"label": f"{LABEL_NAMESPACE}={namespace}"}
            )
        }
        if [h for h in found if h not in joined]:
            return [h for h in found if h not in joined]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no spare holder on {network}")


@pytest.fixture
async def backend(docker_client: docker.DockerClient) -> AsyncIterator[DockerBackend]:
    namespace = new_namespace()
    b = DockerBackend(
        namespace,
        f"{namespace}-functions",
        docker_client,
        isolate_host=False,
        netns_image=os.environ["KAPAL_RUNTIME_IMAGE_PYTHON"],
    )
    await b.ensure_network()
    try:
        yield b
    finally:
        for c in await b.list_managed():
            await b.remove(c.id)
        await b.remove_network()
        b.lease.release()
        b._pool.shutdown(wait=False)


async def test_a_new_instance_joins_a_spare_and_keeps_its_limits_and_hardening(
    backend: DockerBackend, docker_client: docker.DockerClient
) -> None:
    (spare,) = await _spares(docker_client, backend.namespace, backend.network, backend)
    holder_ip = docker_client.containers.get(spare).attrs["NetworkSettings"]["Networks"][
        backend.network
    ]["IPAddress"]
    running = await backend.start(_spec("joins"), new_instance_id())
    assert running.address == f"{holder_ip}:8080"
    await probe.wait_ready(running.address, asyncio.get_running_loop().time() + 30)

    host = docker_client.api.inspect_container(running.id)["HostConfig"]
    assert host["NetworkMode"] == f"container:{spare}"
    assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Memory"] == host["MemorySwap"] == 128 * 1024 * 1024
    holder = docker_client.api.inspect_container(spare)
    assert holder["Config"]["User"] == f"{RUNTIME_UID}:{RUNTIME_UID}"
    assert holder["HostConfig"]["ReadonlyRootfs"] and holder["HostConfig"]["CapDrop"] == ["ALL"]
    assert holder["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]

    # Another gateway (or a restarted one) finds the instance, with its address, and
    # never takes the holder for one.
    assert [(c.id, c.address) for c in await backend.list_managed()] == [
        (running.id, running.address)
    ]
    found = await backend.inspect(running.id)
    assert found is not None and found.address == running.address
    assert await backend.inspect(spare) is None

    # A new spare replaces the one taken; removing the instance removes its holder.
    (next_spare,) = await _spares(docker_client, backend.namespace, backend.network, backend)
    assert next_spare != spare
    await backend.remove(running.id)
    assert {c.id for c in _holders(docker_client, backend.namespace)} == {next_spare}


async def test_prewarmed_containers_and_other_networks_build_their_own(
    backend: DockerBackend, docker_client: docker.DockerClient
) -> None:
    (spare,) = await _spares(docker_client, backend.namespace, backend.network, backend)
    prewarmed = await backend.start(_spec(PREWARM_NAME), new_instance_id())
    internal = await backend.start(_spec("closed", outbound=False), new_instance_id())
    for running in (prewarmed, internal):
        mode = docker_client.api.inspect_container(running.id)["HostConfig"]["NetworkMode"]
        assert not mode.startswith("container:")
    assert spare in {c.id for c in _holders(docker_client, backend.namespace)}
    # The internal network gets a spare of its own for its next instance.
    assert await _spares(docker_client, backend.namespace, backend.internal_network)


async def test_the_last_gateway_leaves_no_holder(
    docker_client: docker.DockerClient,
) -> None:
    namespace = new_namespace()
    network = f"{namespace}-functions"
    image = os.environ["KAPAL_RUNTIME_IMAGE_PYTHON"]
    first = DockerBackend(namespace, network, docker_client, isolate_host=False, netns_image=image)
    await first.ensure_network()
    await _spares(docker_client, namespace, network, first)
    first.close()  # a gateway that was not the last: its own spares go
    assert _holders(docker_client, namespace) == []

    killed = DockerBackend(namespace, network, docker_client, isolate_host=False, netns_image=image)
    await killed.ensure_network()
    (left,) = await _spares(docker_client, namespace, network)
    killed.lease.release()  # killed: nothing of it ran to remove its spare

    last = DockerBackend(namespace, network, docker_client, isolate_host=False, netns_image=image)
    await last.ensure_network()
    await _spares(docker_client, namespace, network, last)
    await last.remove_network()
    last.close()
    assert _holders(docker_client, namespace) == []
    assert docker_client.networks.list(names=[network]) == []
    assert left


async def test_an_instance_whose_holder_died_dies_too(
    backend: DockerBackend, docker_client: docker.DockerClient
) -> None:
    await _spares(docker_client, backend.namespace, backend.network, backend)
    events: list[tuple[str, str]] = []
    unwatch = backend.watch(lambda cid, action: events.append((cid, action)))
    try:
        running = await backend.start(_spec("orphaned"), new_instance_id())
        holder = docker_client.api.inspect_container(running.id)["Config"]["Labels"]["kapal.netns"]
        docker_client.api.kill(holder)
        for _ in range(100):  # crash detection sees the instance die, never the holder
            if (running.id, "die") in events:
                break
            await asyncio.sleep(0.1)
        assert (running.id, "die") in events
        assert not [e for e in events if e[0] == holder]
    finally:
        unwatch()
