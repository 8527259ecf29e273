"""The Swarm backend on a real local 3-node swarm: images through its registry, a
function version as one replicated service, scaled by its replica count only.

Run alone at a time (the swarm's addresses are fixed): `flock /tmp/kapal-swarm.lock`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from infra.registry import REGISTRY_PORT, push_image, registry_image, start_registry
from infra.swarm import SWARM_LABEL, LocalSwarm, swarm_down, swarm_up
from scheduler.docker_backend import LABEL_INSTANCE, LABEL_NAMESPACE, RUNTIME_UID
from scheduler.errors import BackendError
from scheduler.models import FunctionSpec, Limits, Network
from scheduler.registry_api import RegistryAPI
from scheduler.swarm_backend import SwarmBackend
from scheduler.swarm_spec import LABEL_NODE, registry_repository

pytestmark = pytest.mark.integration

NAME = "swarm-backend"
NAMESPACE = "sbt"
FUNCTION = "echo"
SECRET = "token"
SECRET_VALUE = b"swarm-secret-value"
WAIT_S = 60.0
# A second registry on the swarm's bridge, with a password; the nodes trust it from the start.
PRIVATE_IP = "10.213.0.3"
PRIVATE = f"{PRIVATE_IP}:{REGISTRY_PORT}"
CREDENTIALS = ("kapal-pusher", "s3cret-swarm-backend")


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("swarm-backend-state")


@pytest.fixture(scope="module")
def swarm(docker_client: docker.DockerClient, state: Path) -> Iterator[LocalSwarm]:
    made = swarm_up(
        docker_client, state, name=NAME, nodes=3, insecure_registries=(PRIVATE,), log=lambda _: None
    )
    try:
        yield made
    finally:
        swarm_down(docker_client, state, name=NAME, log=lambda _: None)


@pytest.fixture(scope="module")
def runtime(swarm: LocalSwarm, docker_client: docker.DockerClient) -> tuple[str, str]:
    """(reference, digest) of the runtime image in the swarm's registry, also on the
    manager's engine (as a deploy's build leaves a function image there)."""
    image = os.environ["KAPAL_RUNTIME_IMAGE_PYTHON"]
    digest = push_image(docker_client, image, swarm.registry, "kapal-test/runtime", "1")
    reference = swarm.registry.reference("kapal-test/runtime", digest)
    with swarm.manager.engine() as engine:
        engine.images.pull(reference)
    return reference, digest


async def until(what: str, check: Callable[[], bool | Awaitable[bool]]) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        done = check()
        if not isinstance(done, bool):
            done = await done
        if done:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {what}")
        await asyncio.sleep(0.2)


def fetch_from_overlay(swarm: LocalSwarm, image: str, network: str, urls: list[str]) -> list[int]:
    """Statuses of GETs made from a helper container on the overlay (the host cannot route
    to task addresses), on the manager node."""
    script = (
        "import json, sys, urllib.request\n"
        "codes = []\n"
        "for url in sys.argv[1:]:\n"
        "    with urllib.request.urlopen(url, timeout=10) as r:\n"
        "        codes.append(r.status)\n"
        "print(json.dumps(codes))\n"
    )
    with swarm.manager.engine() as engine:
        helper = engine.containers.run(
            image,
            entrypoint=["python3", "-c", script, *urls],
            network=network,
            labels={SWARM_LABEL: swarm.name},
            user=f"{RUNTIME_UID}:{RUNTIME_UID}",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit="128m",
            pids_limit=64,
            detach=True,
        )
        try:
            result = helper.wait(timeout=60)
            output = helper.logs().decode()
        finally:
            helper.remove(force=True)
    assert result["StatusCode"] == 0, output
    codes: list[int] = json.loads(output.strip().splitlines()[-1])
    return codes


def service_attrs(swarm: LocalSwarm, service_id: str) -> dict[str, Any]:
    with swarm.manager.engine() as engine:
        return dict(engine.api.inspect_service(service_id))  # type: ignore[no-untyped-call]


def task_container(swarm: LocalSwarm, task: dict[str, object]) -> tuple[str, str]:
    """(node name, container ID) of a task."""
    with swarm.manager.engine() as engine:
        hostname = engine.nodes.get(str(task["NodeID"])).attrs["Description"]["Hostname"]
    status = task["Status"]
    assert isinstance(status, dict)
    return hostname, str(status["ContainerStatus"]["ContainerID"])


async def test_a_function_version_runs_as_one_replicated_service(
    swarm: LocalSwarm, runtime: tuple[str, str], tmp_path: Path
) -> None:
    source, digest = runtime
    secrets_root = tmp_path / "secrets"
    (secrets_root / FUNCTION).mkdir(parents=True)
    (secrets_root / FUNCTION / SECRET).write_bytes(SECRET_VALUE)
    network = f"{NAMESPACE}-functions"
    backend = SwarmBackend(
        NAMESPACE,
        network,
        manager_url=swarm.manager.api_url,
        registry=swarm.registry.address,
        secrets_root=secrets_root,
        poll_s=0.2,
    )
    events: list[tuple[str, str]] = []
    stop = backend.watch(lambda task_id, action: events.append((task_id, action)))
    registry = RegistryAPI(swarm.registry.address)
    repository = registry_repository(NAMESPACE, FUNCTION)
    try:
        assert backend.replicated
        await backend.ensure_network()
        await backend.ensure_network()  # already there: nothing to do

        image = await backend.publish(source, FUNCTION, 1)
        assert image.startswith(f"{swarm.registry.address}/kapal-fn/{NAMESPACE}-echo@sha256:")
        assert image.endswith(digest)  # the same image, pushed under the function's name
        assert registry.tags(repository) == ["1"]

        spec = FunctionSpec(
            name=FUNCTION,
            version=1,
            image=image,
            # A generic runtime waiting for its code: healthy without a handler.
            env={"KAPAL_PREWARM": "1"},
            secrets=[SECRET],
            limits=Limits(memory_mb=128, cpus=0.5, timeout_s=10),
        )

        async def count(n: int) -> bool:
            return len(await backend.list_managed()) == n

        await backend.set_replicas(spec, 1)
        await until("one task runs", lambda: count(1))
        [first] = await backend.list_managed()

        await backend.set_replicas(spec, 3)
        await until("three tasks run", lambda: count(3))
        running = await backend.list_managed()
        # Only the replica count changed: the first task was kept, not replaced.
        assert first.id in {r.id for r in running}
        assert len({r.labels[LABEL_NODE] for r in running}) >= 2
        assert {(r.function, r.version) for r in running} == {(FUNCTION, 1)}
        assert all(r.labels[LABEL_NAMESPACE] == NAMESPACE for r in running)
        assert all(r.labels[LABEL_INSTANCE] == r.id[:12] for r in running)
        await until(
            "watch reports every start",
            lambda: {r.id for r in running} <= {t for t, a in events if a == "start"},
        )
        urls = [f"http://{r.address}/_/health" for r in running]
        assert fetch_from_overlay(swarm, source, network, urls) == [200, 200, 200]
        assert await backend.inspect(first.id) == next(r for r in running if r.id == first.id)

        with swarm.manager.engine() as engine:
            [service] = engine.services.list(filters={"name": f"{NAMESPACE}-{FUNCTION}-1"})
            template = service.attrs["Spec"]["TaskTemplate"]
            version_at_3 = service.attrs["Version"]["Index"]
            task = dict(engine.api.inspect_task(first.id))  # type: ignore[no-untyped-call]
        container = template["ContainerSpec"]
        assert container["ReadOnly"] is True
        assert container["CapabilityDrop"] == ["ALL"]
        assert container["Init"] is True
        assert container["StopGracePeriod"] == 15 * 10**9
        assert template["Resources"]["Limits"] == {
            "NanoCPUs": 500_000_000,
            "MemoryBytes": 128 * 1024 * 1024,
            "Pids": 512,
        }
        assert service.attrs["Spec"]["EndpointSpec"]["Mode"] == "dnsrr"
        # What the node's engine made of it: the container itself is locked down.
        node, container_id = task_container(swarm, task)
        member = next(n for n in swarm.nodes if n.name == node)
        with member.engine() as engine:
            host = engine.api.inspect_container(container_id)["HostConfig"]
            assert host["ReadonlyRootfs"] is True
            assert host["CapDrop"] == ["ALL"]
            assert host["Init"] is True
            assert host["PidsLimit"] == 512
            assert host["Memory"] == 128 * 1024 * 1024
            read = engine.api.exec_create(
                container_id,
                [
                    "sh",
                    "-c",
                    f"id -u; stat -c %u:%a /run/secrets/{SECRET}; cat /run/secrets/{SECRET}",
                ],
            )
            output = engine.api.exec_start(read["Id"]).decode()
        assert output.splitlines() == [
            str(RUNTIME_UID),
            f"{RUNTIME_UID}:400",
            SECRET_VALUE.decode(),
        ]

        # The same count again changes nothing.
        await backend.set_replicas(spec, 3)
        assert service_attrs(swarm, str(service.id))["Version"]["Index"] == version_at_3

        await backend.set_replicas(spec, 1)
        await until("one task is left", lambda: count(1))
        [survivor] = await backend.list_managed()
        assert survivor.id in {r.id for r in running}
        gone = {r.id for r in running} - {survivor.id}
        await until(
            "watch reports the others' end",
            lambda: gone <= {t for t, a in events if a == "die"},
        )
        after = service_attrs(swarm, str(service.id))["Spec"]
        assert after["TaskTemplate"] == template  # the template was never touched
        assert after["Mode"] == {"Replicated": {"Replicas": 1}}

        # A second version, cut off from the outside, with the same secret value.
        cut = spec.model_copy(update={"version": 2, "network": Network(outbound=False)})
        await backend.set_replicas(cut, 1)
        await until("both versions run", lambda: count(2))
        [second] = [r for r in await backend.list_managed() if r.version == 2]
        internal = f"{network}-internal"
        assert fetch_from_overlay(
            swarm, source, internal, [f"http://{second.address}/_/health"]
        ) == [200]
        await backend.remove_version(FUNCTION, 1)
        await until("only the second version runs", lambda: count(1))
        with swarm.manager.engine() as engine:
            [left] = engine.services.list(filters={"label": f"{LABEL_NAMESPACE}={NAMESPACE}"})
            assert left.name == f"{NAMESPACE}-{FUNCTION}-2"
            # Still used by the second version: kept.
            [secret] = engine.secrets.list(filters={"label": f"{LABEL_NAMESPACE}={NAMESPACE}"})
            assert secret.name.startswith(f"{NAMESPACE}-{FUNCTION}-{SECRET}-")

        await backend.remove_function(FUNCTION)
        await until("no task is left", lambda: count(0))
        with swarm.manager.engine() as engine:
            assert engine.services.list(filters={"label": f"{LABEL_NAMESPACE}={NAMESPACE}"}) == []
            assert engine.secrets.list(filters={"label": f"{LABEL_NAMESPACE}={NAMESPACE}"}) == []

        await backend.unpublish(FUNCTION)
        assert registry.tags(repository) == []
        assert not await backend.image_exists(f"{swarm.registry.address}/{repository}:1")

        await backend.remove_network()

        def networks_gone() -> bool:
            # Swarm removes an overlay once the last task on it is gone.
            with swarm.manager.engine() as engine:
                names = {n.name for n in engine.networks.list(names=[network])}
            return not names & {network, internal}

        await until("both overlays are gone", networks_gone)
    finally:
        stop()
        await backend.remove_function(FUNCTION)
        await backend.remove_network()
        backend.close()


async def test_a_tasks_log_is_followed_with_timestamps(
    swarm: LocalSwarm, runtime: tuple[str, str]
) -> None:
    source, _ = runtime
    script = (
        "import sys, time\n"
        "print('to-out', flush=True)\n"
        "print('to-err', file=sys.stderr, flush=True)\n"
        "time.sleep(300)\n"
    )
    backend = SwarmBackend(
        NAMESPACE, f"{NAMESPACE}-functions", manager_url=swarm.manager.api_url, registry="-"
    )
    with swarm.manager.engine() as engine:
        service = engine.services.create(  # type: ignore[no-untyped-call]
            source,
            command=["python3", "-c", script],
            name=f"{NAMESPACE}-logger",
            labels={SWARM_LABEL: swarm.name},
            resources=docker.types.Resources(mem_limit=64 * 1024 * 1024, cpu_limit=250_000_000),
            restart_policy=docker.types.RestartPolicy(condition="none"),
            read_only=True,
            cap_drop=["ALL"],
        )
    try:

        async def started() -> bool:
            return any(t["Status"]["State"] == "running" for t in service.tasks())

        await until("the logger runs", started)
        [task] = service.tasks()
        for stream, line in (("stdout", b"to-out"), ("stderr", b"to-err")):
            logs = backend.follow_logs(task["ID"], stream, 0)
            try:
                entry = await asyncio.wait_for(asyncio.to_thread(next, iter(logs)), WAIT_S)
            finally:
                logs.close()
            stamp, _, text = entry.partition(b" ")
            assert text.rstrip(b"\n") == line
            assert stamp.endswith(b"Z") and stamp[:2] == b"20"  # RFC 3339, UTC
    finally:
        service.remove()
        backend.close()


async def test_a_registry_with_credentials_serves_pushes_pulls_and_deletes(
    swarm: LocalSwarm, runtime: tuple[str, str], docker_client: docker.DockerClient, state: Path
) -> None:
    source, digest = runtime
    registry = start_registry(
        docker_client,
        registry_image(docker_client, log=lambda _: None),
        state / NAME / "private-registry",
        name=f"{NAME}-private-registry",
        network=f"{NAME}-swarm",
        ip=PRIVATE_IP,
        labels={SWARM_LABEL: NAME},
        credentials=CREDENTIALS,
    )
    anonymous = SwarmBackend(
        NAMESPACE, f"{NAMESPACE}-functions", manager_url=swarm.manager.api_url, registry=PRIVATE
    )
    backend = SwarmBackend(
        NAMESPACE,
        f"{NAMESPACE}-functions",
        manager_url=swarm.manager.api_url,
        registry=PRIVATE,
        registry_auth=CREDENTIALS,
    )
    try:
        with pytest.raises(BackendError, match="no basic auth credentials"):
            await anonymous.publish(source, "private", 1)
        image = await backend.publish(source, "private", 1)
        assert image == f"{PRIVATE}/kapal-fn/{NAMESPACE}-private@{digest}"
        await backend.ensure_network()
        spec = FunctionSpec(name="private", version=1, image=image, env={"KAPAL_PREWARM": "1"})
        # Three tasks: every node pulls the image, with the credentials the service carries.
        await backend.set_replicas(spec, 3)

        async def three() -> bool:
            return len(await backend.list_managed()) == 3

        await until("three tasks pulled the image and run", three)
        repository = registry_repository(NAMESPACE, "private")
        assert RegistryAPI(PRIVATE, CREDENTIALS).tags(repository) == ["1"]
        await backend.remove_function("private")
        await backend.unpublish("private")
        assert RegistryAPI(PRIVATE, CREDENTIALS).tags(repository) == []
    finally:
        await backend.remove_function("private")
        await backend.remove_network()
        anonymous.close()
        backend.close()
        docker_client.api.remove_container(registry.container, force=True, v=True)
