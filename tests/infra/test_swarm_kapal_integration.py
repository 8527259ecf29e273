"""Kapal's gateways as a service of a local swarm, over a Postgres reached by TCP.

Run under `flock /tmp/kapal-swarm.lock`: the swarm's bridge and addresses are fixed, so
one local swarm runs at a time on a machine.
"""

import base64
import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from infra.gateway_image import GATEWAY_REPO, gateway_image
from infra.postgres import TcpAccess, postmaster_pid, serve_over_tcp
from infra.registry import push_image, registry_image
from infra.swarm import (
    BRIDGE_GATEWAY,
    POSTGRES_DIR,
    SWARM_LABEL,
    LocalSwarm,
    swarm_down,
    swarm_up,
)
from infra.swarm_kapal import (
    create_admin_key,
    deploy_gateways,
    gateway_service,
    remove_gateways,
    secret_key_name,
)

pytestmark = pytest.mark.integration

NAME = "swarm-stack"
NAMESPACE = "kst"
REPO_ROOT = Path(__file__).resolve().parents[2]
STACK = "kst-stack"


@dataclass(frozen=True)
class Deployment:
    swarm: LocalSwarm
    state: Path
    urls: list[str]
    admin_key: str
    runtime_image: str
    gateway_image: str
    database_url: str


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def deployment(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    state = tmp_path_factory.mktemp("swarm-kapal")
    runtime_image = os.environ["KAPAL_RUNTIME_IMAGE_PYTHON"]  # the docker_client fixture's
    image = gateway_image(docker_client, REPO_ROOT, quiet)
    swarm = swarm_up(docker_client, state, name=NAME, nodes=3, log=quiet)
    try:
        tcp = TcpAccess(BRIDGE_GATEWAY, 5432, secrets.token_urlsafe(16))
        database_url = serve_over_tcp(state / NAME / POSTGRES_DIR, tcp)
        urls = deploy_gateways(
            docker_client,
            swarm,
            image=image,
            runtime_images={"python": runtime_image},
            database_url=database_url,
            namespace=NAMESPACE,
            log=quiet,
        )
        key = create_admin_key(database_url)
        yield Deployment(swarm, state, urls, key, runtime_image, image, database_url)
    finally:
        swarm_down(docker_client, state, name=NAME, log=quiet)


def get(url: str, key: str | None = None) -> tuple[int, Any]:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def gateway_tasks(swarm: LocalSwarm) -> list[dict[str, Any]]:
    with swarm.manager.engine() as engine:
        tasks: list[dict[str, Any]] = engine.api.tasks(  # type: ignore[no-untyped-call]
            filters={"service": gateway_service(NAMESPACE), "desired-state": "running"}
        )
    return tasks


def test_two_gateways_run_on_two_nodes_and_answer_from_the_host(deployment: Deployment) -> None:
    tasks = gateway_tasks(deployment.swarm)
    assert len(tasks) == 2
    assert len({t["NodeID"] for t in tasks}) == 2
    hosts = {url.split("//")[1].split(":")[0] for url in deployment.urls}
    assert len(hosts) == 2
    assert hosts <= {node.address for node in deployment.swarm.nodes}
    for url in deployment.urls:
        assert get(f"{url}/healthz") == (200, {"status": "ok"})


def test_each_gateway_serves_the_management_api_with_the_admin_key(
    deployment: Deployment,
) -> None:
    for url in deployment.urls:
        assert get(f"{url}/v1/functions")[0] == 401
        # The key was inserted from the host; each gateway learns of it by notification.
        deadline = time.monotonic() + 30
        while (answer := get(f"{url}/v1/functions", deployment.admin_key))[0] == 401:
            assert time.monotonic() < deadline, f"{url} never took the admin key"
            time.sleep(0.2)
        assert answer == (200, {"functions": []})


def test_the_runtime_base_image_is_on_the_managers_engine_under_the_hosts_tag(
    deployment: Deployment, docker_client: docker.DockerClient
) -> None:
    with deployment.swarm.manager.engine() as engine:
        on_manager = engine.images.get(deployment.runtime_image)
    assert on_manager.id == docker_client.images.get(deployment.runtime_image).id
    assert deployment.runtime_image in on_manager.tags


def test_the_gateway_containers_run_read_only_unprivileged_limited_and_labelled(
    deployment: Deployment,
) -> None:
    seen = 0
    for node in deployment.swarm.nodes:
        with node.engine() as engine:
            containers = engine.containers.list(
                filters={"label": f"com.docker.swarm.service.name={gateway_service(NAMESPACE)}"},
                ignore_removed=True,
            )
            for container in containers:
                seen += 1
                attrs = container.attrs
                config, host = attrs["Config"], attrs["HostConfig"]
                assert config["User"] == "10001:10001"
                assert config["Labels"][SWARM_LABEL] == NAME
                assert host["ReadonlyRootfs"] is True
                assert host["CapDrop"] == ["ALL"]
                assert host["Init"] is True
                assert host["Memory"] > 0 and host["NanoCpus"] > 0 and host["PidsLimit"] > 0
                uid = container.exec_run(["python3", "-c", "import os; print(os.getuid())"])
                assert uid.output.decode().strip() == "10001"
                assert container.exec_run(["touch", "/opt/kapal/x"]).exit_code != 0
                assert container.exec_run(["touch", "/tmp/x"]).exit_code == 0
    assert seen == 2


def test_remove_gateways_removes_the_service_and_keeps_the_key_unless_told(
    deployment: Deployment,
) -> None:
    swarm = deployment.swarm
    assert remove_gateways(swarm, NAMESPACE, log=quiet)
    with swarm.manager.engine() as engine:
        assert engine.services.list() == []
        for node in swarm.nodes:
            with node.engine() as on_node:
                assert (
                    on_node.containers.list(
                        all=True, filters={"label": SWARM_LABEL}, ignore_removed=True
                    )
                    == []
                )
        # Gateways deployed again on this database need the key secrets were sealed with.
        assert [s.name for s in engine.secrets.list()] == [secret_key_name(NAMESPACE)]
        assert not remove_gateways(swarm, NAMESPACE, forget_key=True, log=quiet)
        assert engine.secrets.list() == []


def wait_for(what: str, check: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.25)
    return result


def answers(url: str, key: str | None = None) -> tuple[int, Any] | None:
    try:
        return get(url, key)
    except (OSError, ValueError):
        return None


def test_the_stack_file_runs_a_gateway_on_the_manager_over_its_socket(
    deployment: Deployment, docker_client: docker.DockerClient
) -> None:
    swarm = deployment.swarm
    tag = deployment.gateway_image.rpartition(":")[2]
    gateway = swarm.registry.reference(
        GATEWAY_REPO,
        push_image(docker_client, deployment.gateway_image, swarm.registry, GATEWAY_REPO, tag),
    )
    registry = registry_image(docker_client, quiet)
    registry_ref = swarm.registry.reference(
        "kapal/registry",
        push_image(docker_client, registry, swarm.registry, "kapal/registry", "stack"),
    )
    node = docker_client.containers.get(f"{NAME}-node-1")
    docker_gid = node.exec_run(["stat", "-c", "%g", "/var/run/docker.sock"]).output.decode()
    with swarm.manager.engine() as engine:
        manager = engine.nodes.list(filters={"role": "manager"})[0]
        spec = manager.attrs["Spec"]
        spec.setdefault("Labels", {})["kapal-registry"] = "true"
        manager.update(spec)
        engine.secrets.create(
            name="kapal_secret_key",
            data=base64.b64encode(secrets.token_bytes(32)),
            labels={SWARM_LABEL: NAME},
        )
    env = {
        "PATH": os.environ["PATH"],
        "DOCKER_HOST": swarm.manager.api_url,
        "KAPAL_GATEWAY_IMAGE": gateway,
        "KAPAL_REGISTRY_IMAGE": registry_ref,
        "KAPAL_REGISTRY": swarm.registry.address,
        "KAPAL_DATABASE_URL": deployment.database_url,
        "KAPAL_DOCKER_GID": docker_gid.strip(),
        "KAPAL_NAMESPACE": STACK,
        "KAPAL_FUNCTIONS_SUBNET": "10.219.0.0/24",
        "KAPAL_RUNTIME_IMAGE_PYTHON": deployment.runtime_image,
    }
    deploy = ["docker", "stack", "deploy", "--resolve-image", "never"]
    subprocess.run(
        [*deploy, "-c", str(REPO_ROOT / "infra" / "kapal-stack.yml"), STACK],
        env=env,
        check=True,
        capture_output=True,
    )
    try:
        url = f"http://{swarm.manager.address}:8080"
        assert wait_for("the stack's gateway", lambda: answers(f"{url}/healthz")) == (
            200,
            {"status": "ok"},
        )
        # The same database: the admin key made for the service's gateways works here too.
        assert answers(f"{url}/v1/functions", deployment.admin_key) == (200, {"functions": []})
        with swarm.manager.engine() as engine:
            service = engine.services.get(f"{STACK}_gateway").attrs["Spec"]
            container = service["TaskTemplate"]["ContainerSpec"]
            assert container["User"] == f"10001:{docker_gid.strip()}"
            assert container["ReadOnly"] is True
            assert container["CapabilityDrop"] == ["ALL"]
            assert container["Init"] is True
            assert {m["Target"]: m["Type"] for m in container["Mounts"]} == {
                "/var/run/docker.sock": "bind",
                "/tmp": "tmpfs",
            }
            placement = service["TaskTemplate"]["Placement"]
            assert placement["MaxReplicas"] == 1
            assert placement["Constraints"] == ["node.role == manager"]
            assert service["EndpointSpec"]["Ports"][0]["PublishMode"] == "host"
            network = engine.networks.get(f"{STACK}-functions").attrs
            assert network["Attachable"] is True
            assert network["IPAM"]["Config"][0]["Subnet"] == "10.219.0.0/24"

            def registry_running() -> bool:
                tasks = engine.api.tasks(  # type: ignore[no-untyped-call]
                    filters={"service": f"{STACK}_registry", "desired-state": "running"}
                )
                return any(t["Status"]["State"] == "running" for t in tasks)

            wait_for("the stack's registry", registry_running)
    finally:
        remove = ["docker", "stack", "rm", STACK]
        subprocess.run(remove, env=env, capture_output=True, check=False)

    def stack_gone() -> bool:
        label = {"label": f"com.docker.stack.namespace={STACK}"}
        for node in swarm.nodes:
            with node.engine() as engine:
                if engine.containers.list(all=True, filters=label, ignore_removed=True):
                    return False
        # `stack rm` removes the networks at once, while tasks still stop on them: again.
        return subprocess.run(remove, env=env, capture_output=True, check=False).returncode == 0

    wait_for("the stack's containers and networks to go", stack_gone)
    with swarm.manager.engine() as engine:
        assert engine.services.list() == []
        assert [n.name for n in engine.networks.list(names=[f"{STACK}-functions"])] == []


def test_swarm_down_leaves_no_node_or_postgres(
    deployment: Deployment, docker_client: docker.DockerClient
) -> None:
    pgdata = deployment.state / NAME / POSTGRES_DIR
    assert postmaster_pid(pgdata) is not None
    assert swarm_down(docker_client, deployment.state, name=NAME, log=quiet)
    assert postmaster_pid(pgdata) is None
    label = {"label": f"{SWARM_LABEL}={NAME}"}
    assert docker_client.containers.list(all=True, filters=label, ignore_removed=True) == []
    assert docker_client.networks.list(filters=label) == []
    assert not (deployment.state / NAME).exists()
