"""A local swarm of docker-in-docker nodes and its registry, made on the real engine and
taken down again."""

import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.errors import APIError, NotFound

from infra.errors import InfraError
from infra.recipes import OS_IMAGE
from infra.registry import REGISTRY_PORT, push_image, registry_image, start_registry
from infra.swarm import SWARM_LABEL, LocalSwarm, swarm_down, swarm_up

pytestmark = pytest.mark.integration

NAME = "kapal-test"
# A second registry on the swarm's bridge, with a password; the nodes trust it from the start.
PRIVATE_IP = "10.213.0.3"
PRIVATE = f"{PRIVATE_IP}:{REGISTRY_PORT}"
USER, PASSWORD = "swarm-tester", "s3cret-swarm-pass"


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("swarm-state")


@pytest.fixture(scope="module")
def swarm(docker_client: docker.DockerClient, state: Path) -> Iterator[LocalSwarm]:
    made = swarm_up(
        docker_client, state, name=NAME, nodes=3, insecure_registries=(PRIVATE,), log=lambda _: None
    )
    try:
        yield made
    finally:
        swarm_down(docker_client, state, name=NAME, log=lambda _: None)


def test_three_nodes_join_one_swarm(swarm: LocalSwarm) -> None:
    with swarm.manager.engine() as engine:
        nodes = engine.nodes.list()
        networks = [n.name for n in engine.networks.list(filters={"driver": "overlay"})]
    assert sorted(n.attrs["Description"]["Hostname"] for n in nodes) == [
        f"{NAME}-node-1",
        f"{NAME}-node-2",
        f"{NAME}-node-3",
    ]
    assert all(n.attrs["Status"]["State"] == "ready" for n in nodes)
    assert sorted(n.attrs["Spec"]["Role"] for n in nodes) == ["manager", "worker", "worker"]
    assert swarm.overlay in networks


def test_the_registry_is_labelled_limited_and_hardened(
    swarm: LocalSwarm, docker_client: docker.DockerClient
) -> None:
    attrs = docker_client.api.inspect_container(swarm.registry.container)
    config, host = attrs["Config"], attrs["HostConfig"]
    assert config["Labels"][SWARM_LABEL] == NAME
    assert config["User"] not in ("", "0", "root") and not config["User"].startswith("0:")
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] > 0 and host["PidsLimit"] > 0 and host["NanoCpus"] > 0
    assert host["PortBindings"][f"{REGISTRY_PORT}/tcp"][0]["HostIp"] == "127.0.0.1"
    networks = attrs["NetworkSettings"]["Networks"]
    assert networks[f"{NAME}-swarm"]["IPAddress"] == swarm.registry.address.split(":")[0]


def test_a_service_pulls_from_the_registry_spreads_and_answers_on_each_node(
    swarm: LocalSwarm, docker_client: docker.DockerClient
) -> None:
    # Made by the session's base-image set-up; pushed from the host, pulled by the nodes.
    digest = push_image(docker_client, OS_IMAGE, swarm.registry, "kapal-test/web", "1")
    image = swarm.registry.reference("kapal-test/web", digest)
    assert image.startswith("10.213.0.2:5000/kapal-test/web@sha256:")
    with urllib.request.urlopen(f"http://{swarm.registry.push}/v2/_catalog") as response:
        assert json.load(response)["repositories"] == ["kapal-test/web"]
    # The push names (loopback port) are gone from the host; the image keeps its own.
    assert not [
        ref
        for found in docker_client.images.list()
        for ref in [*found.tags, *(found.attrs.get("RepoDigests") or [])]
        if ref.startswith(swarm.registry.push)
    ]
    assert OS_IMAGE in docker_client.images.get(OS_IMAGE).tags
    with swarm.manager.engine() as engine:
        service = engine.services.create(
            image,
            command=["python3", "-m", "http.server", "8080"],
            name="web",
            networks=[swarm.overlay],
            mode=docker.types.ServiceMode("replicated", replicas=3),
            # No IPVS on these kernels: no VIP, no routing mesh; each task gets a port of
            # its own node instead.
            endpoint_spec={
                "Mode": "dnsrr",
                "Ports": [{"Protocol": "tcp", "TargetPort": 8080, "PublishMode": "host"}],
            },
        )
        addresses = {n.id: n.attrs["Status"]["Addr"] for n in engine.nodes.list()}
        deadline = time.monotonic() + 60
        while True:
            tasks = [
                t
                for t in service.tasks({"desired-state": "running"})
                if t["Status"]["State"] == "running"
                and t["Status"].get("PortStatus", {}).get("Ports")
            ]
            if len(tasks) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert len(tasks) == 3, "three tasks did not start in 60 s"
    # The fresh nodes had no image at all: each one running a task pulled it by digest.
    assert len({t["NodeID"] for t in tasks}) >= 2
    assert {t["Spec"]["ContainerSpec"]["Image"] for t in tasks} == {image}
    for task in tasks:
        port = task["Status"]["PortStatus"]["Ports"][0]["PublishedPort"]
        url = f"http://{addresses[task['NodeID']]}:{port}/"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def test_a_registry_with_credentials_serves_only_who_logs_in(
    swarm: LocalSwarm, docker_client: docker.DockerClient, state: Path
) -> None:
    payload = registry_image(docker_client, log=lambda _: None)  # a small image at hand
    name = f"{NAME}-private-registry"
    try:
        registry = start_registry(
            docker_client,
            payload,
            state / NAME / "private-registry",
            name=name,
            network=f"{NAME}-swarm",
            ip=PRIVATE_IP,
            labels={SWARM_LABEL: NAME},
            credentials=(USER, PASSWORD),
        )
        with pytest.raises(InfraError, match="no basic auth credentials"):
            push_image(docker_client, payload, registry, "kapal-test/private", "1")
        digest = push_image(
            docker_client, payload, registry, "kapal-test/private", "1", (USER, PASSWORD)
        )
        reference = registry.reference("kapal-test/private", digest)
        with swarm.nodes[1].engine() as engine:
            with pytest.raises(APIError, match="no basic auth credentials"):
                engine.images.pull(reference)
            with pytest.raises(APIError, match=r"(?i)unauthorized"):
                engine.login(USER, "wrong", registry=registry.address)
            assert engine.login(USER, PASSWORD, registry=registry.address)["Status"] == (
                "Login Succeeded"
            )
            # The client now sends the login with each pull, as `docker login` makes the CLI do.
            pulled = engine.images.pull(reference)
        assert pulled.id == docker_client.images.get(payload).id
    finally:
        with contextlib.suppress(NotFound):
            docker_client.api.remove_container(name, force=True, v=True)


def test_down_leaves_nothing_behind(
    swarm: LocalSwarm, docker_client: docker.DockerClient, state: Path
) -> None:
    assert swarm_down(docker_client, state, name=NAME, log=lambda _: None)
    label = {"label": f"{SWARM_LABEL}={NAME}"}
    assert docker_client.containers.list(all=True, filters=label, ignore_removed=True) == []
    assert docker_client.networks.list(filters=label) == []
    assert not (state / NAME).exists()
    assert not swarm_down(docker_client, state, name=NAME, log=lambda _: None)
