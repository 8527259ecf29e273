"""A local swarm of docker-in-docker nodes, made on the real engine and taken down again."""

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from infra.recipes import OS_IMAGE
from infra.swarm import SWARM_LABEL, LocalSwarm, load_image, swarm_down, swarm_up

pytestmark = pytest.mark.integration

NAME = "kapal-test"


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("swarm-state")


@pytest.fixture(scope="module")
def swarm(docker_client: docker.DockerClient, state: Path) -> Iterator[LocalSwarm]:
    made = swarm_up(docker_client, state, name=NAME, nodes=3, log=lambda _: None)
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


def test_a_service_spreads_over_the_nodes_and_answers_on_each(
    swarm: LocalSwarm, docker_client: docker.DockerClient
) -> None:
    # The image goes to every node by hand here; Kapal's own images come from a registry.
    docker_client.images.get(OS_IMAGE)  # made by the session's base-image set-up
    load_image(swarm, docker_client, OS_IMAGE)
    with swarm.manager.engine() as engine:
        service = engine.services.create(
            OS_IMAGE,
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
    assert len({t["NodeID"] for t in tasks}) >= 2
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


def test_down_leaves_nothing_behind(
    swarm: LocalSwarm, docker_client: docker.DockerClient, state: Path
) -> None:
    assert swarm_down(docker_client, state, name=NAME, log=lambda _: None)
    label = {"label": f"{SWARM_LABEL}={NAME}"}
    assert docker_client.containers.list(all=True, filters=label) == []
    assert docker_client.networks.list(filters=label) == []
    assert not (state / NAME).exists()
    assert not swarm_down(docker_client, state, name=NAME, log=lambda _: None)
