"""Kapal on a local swarm: its gateways as a Swarm service, and what they need there.

The gateway image goes through the swarm's registry and runs as the service
NAMESPACE-gateway, at most one replica per node, each answering on its node's address
(a host-mode published port: no routing mesh on these kernels). A gateway drives the
manager's engine over TCP and builds function images there FROM the runtime base image,
so that image is put on the manager under the very tag this host has. What a gateway is
told is the same whichever backend it runs (KAPAL_BACKEND can be overridden in `env`).
"""

import asyncio
import base64
import contextlib
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import docker
from docker.errors import APIError, NotFound
from docker.types import (
    ContainerSpec,
    Mount,
    Placement,
    Resources,
    RestartPolicy,
    SecretReference,
    ServiceMode,
    TaskTemplate,
)

from infra.errors import InfraError
from infra.gateway_image import GATEWAY_PORT, GATEWAY_REPO
from infra.host import Log
from infra.recipes import RUNTIME_USER
from infra.registry import push_image
from infra.swarm import NODE_API_PORT, SWARM_LABEL, LocalSwarm

# What a Kapal-made service or secret is, beside the swarm it belongs to.
ROLE_LABEL = "kapal.role"
SECRET_KEY_FILE = "/run/secrets/kapal-secret-key"
READY_TIMEOUT_S = 120.0
GONE_TIMEOUT_S = 60.0
PULL_TIMEOUT = 600
GATEWAY_MEMORY = 512 * 1024 * 1024
GATEWAY_NANO_CPUS = 1_000_000_000
GATEWAY_PIDS = 512


def gateway_service(namespace: str) -> str:
    return f"{namespace}-gateway"


def gateway_env(
    swarm: LocalSwarm, runtime_images: Mapping[str, str], database_url: str, namespace: str
) -> dict[str, str]:
    """What every gateway of the swarm is told, before the caller's own `env`."""
    manager = f"tcp://{swarm.manager.address}:{NODE_API_PORT}"
    env = {
        "KAPAL_BACKEND": "swarm",
        "KAPAL_SWARM_MANAGER": manager,
        # A docker backend (and docker.from_env) finds the manager's engine here too.
        "DOCKER_HOST": manager,
        "KAPAL_SWARM_NETWORK": swarm.overlay,
        "KAPAL_REGISTRY": swarm.registry.address,
        "KAPAL_DATABASE_URL": database_url,
        "KAPAL_NAMESPACE": namespace,
        # No iptables in a gateway container, and the host it would guard is a node.
        "KAPAL_ISOLATE_HOST": "false",
        "KAPAL_PREWARM_PYTHON": "0",
        "KAPAL_PAUSE_STANDBYS": "false",
        # Every replica must seal and open secrets with one key: a swarm secret's.
        "KAPAL_SECRET_KEY_FILE": SECRET_KEY_FILE,
    }
    for runtime, tag in runtime_images.items():
        env[f"KAPAL_RUNTIME_IMAGE_{runtime.upper()}"] = tag
    return env


def deploy_gateways(
    client: docker.DockerClient,
    swarm: LocalSwarm,
    *,
    image: str,
    runtime_images: Mapping[str, str],
    database_url: str,
    namespace: str,
    replicas: int = 2,
    port: int = GATEWAY_PORT,
    env: Mapping[str, str] | None = None,
    constraints: Sequence[str] = (),
    log: Log = print,
) -> list[str]:
    """Run `replicas` gateways of `image` on the swarm, one per node at most (and only on
    nodes `constraints` allow, e.g. `node.hostname!=NAME`); the base URL (http://NODE:port)
    of each, once every one answers GET /healthz from this host."""
    if not 1 <= replicas <= len(swarm.nodes):
        raise InfraError(f"{replicas} gateways do not fit {len(swarm.nodes)} nodes, one per node")
    repository, _, tag = image.rpartition(":")
    reference = swarm.registry.reference(
        GATEWAY_REPO, push_image(client, image, swarm.registry, GATEWAY_REPO, tag)
    )
    for runtime_image in runtime_images.values():
        share_with_manager(client, swarm, runtime_image, log)
    name = gateway_service(namespace)
    labels = {SWARM_LABEL: swarm.name, ROLE_LABEL: "gateway"}
    with swarm.manager.engine() as engine:
        if engine.api.services(filters={"name": name}):  # type: ignore[no-untyped-call]
            raise InfraError(f"the service {name} exists: remove_gateways first")
        secret = _secret_key(engine, secret_key_name(namespace), labels)
        internal = _internal_overlay(engine, swarm, labels)
        container = ContainerSpec(
            reference,
            env={**gateway_env(swarm, runtime_images, database_url, namespace), **(env or {})},
            user=RUNTIME_USER,
            labels=labels,
            read_only=True,
            mounts=[Mount("/tmp", "", type="tmpfs", tmpfs_size=256 * 1024 * 1024)],
            secrets=[secret],
            cap_drop=["ALL"],
            # PID 1 that forwards SIGTERM: the gateway drains instead of being killed.
            init=True,
            stop_grace_period=15_000_000_000,
        )
        resources = Resources(cpu_limit=GATEWAY_NANO_CPUS, mem_limit=GATEWAY_MEMORY)
        resources["Limits"]["Pids"] = GATEWAY_PIDS
        template = TaskTemplate(
            container,
            resources=resources,
            restart_policy=RestartPolicy(condition="any", delay=1_000_000_000),
            placement=Placement(constraints=list(constraints) or None, maxreplicas=1),
            # Functions without outbound access run on the internal twin: gateways reach
            # them there (a service joins its networks when it is made).
            networks=[swarm.overlay, internal],
        )
        engine.api.create_service(  # type: ignore[no-untyped-call]
            template,
            name=name,
            labels=labels,
            mode=ServiceMode("replicated", replicas=replicas),
            # No IPVS here: no VIP; each replica answers on its own node's port.
            endpoint_spec={
                "Mode": "dnsrr",
                "Ports": [
                    {
                        "Protocol": "tcp",
                        "TargetPort": GATEWAY_PORT,
                        "PublishedPort": port,
                        "PublishMode": "host",
                    }
                ],
            },
        )
        log(f"gateways: service {name} of {repository} created, waiting for {replicas}")
        urls = _wait_until_answering(engine, name, replicas, port)
    log(f"gateways: {', '.join(urls)} answer")
    return urls


def share_with_manager(
    client: docker.DockerClient, swarm: LocalSwarm, image: str, log: Log = print
) -> None:
    """Put this host's `image` on the manager's engine under the same name, through the
    swarm's registry (function images are built there FROM that name)."""
    repository, _, tag = image.rpartition(":")
    push_image(client, image, swarm.registry, repository, tag)
    pulled = f"{swarm.registry.address}/{repository}"
    with swarm.manager.engine(timeout=PULL_TIMEOUT) as engine:
        engine.images.pull(pulled, tag=tag).tag(repository, tag)
        # The image keeps its own name; the registry's is of no use on the manager.
        engine.images.remove(f"{pulled}:{tag}", noprune=True)
    log(f"gateways: {image} is on the manager's engine")


def remove_gateways(
    swarm: LocalSwarm, namespace: str, *, forget_key: bool = False, log: Log = print
) -> bool:
    """Remove the gateway service once its containers are gone; True when there was one.

    The secrets key stays unless `forget_key`: gateways deployed again on the same
    database need it to open the secrets sealed so far (swarm_down removes it anyway).
    """
    name = gateway_service(namespace)
    found = False
    with swarm.manager.engine() as engine:
        with contextlib.suppress(NotFound):
            engine.api.remove_service(name)  # type: ignore[no-untyped-call]
            found = True
        if found:
            _wait_until_gone(swarm, name)
        if forget_key:
            with contextlib.suppress(NotFound):
                engine.api.remove_secret(secret_key_name(namespace))
    if found:
        log(f"gateways: service {name} removed")
    return found


def secret_key_name(namespace: str) -> str:
    """The swarm secret holding the secrets key of `namespace`'s gateways."""
    return f"{namespace}-secret-key"


def create_admin_key(database_url: str, name: str = "swarm-admin") -> str:
    """A new admin API key in the gateways' database, made from this host (the schema is
    migrated first, as a gateway would); the gateways learn of it by notification."""
    # Imported here, as `up` does: the rest of infra works before the gateway can import.
    from gateway import db
    from gateway.keys import KeyStore, Scope

    async def create() -> str:
        pool = await db.connect(database_url)
        try:
            _, token = await KeyStore(pool).create(name, frozenset({Scope.ADMIN}))
        finally:
            await pool.close()
        return token

    return asyncio.run(create())


def _secret_key(
    engine: docker.DockerClient, name: str, labels: Mapping[str, str]
) -> SecretReference:
    """The swarm secret holding the secrets key, made once: kept across redeploys, since
    what is sealed in the database needs the same key."""
    found = [s for s in engine.api.secrets(filters={"name": name}) if s["Spec"]["Name"] == name]
    if found:
        secret_id = found[0]["ID"]
    else:
        key = base64.b64encode(secrets.token_bytes(32))
        secret_id = engine.api.create_secret(name, key, labels=dict(labels))["ID"]
    uid, _, gid = RUNTIME_USER.partition(":")
    return SecretReference(
        secret_id, name, filename=SECRET_KEY_FILE.rpartition("/")[2], uid=uid, gid=gid, mode=0o400
    )


def _internal_overlay(
    engine: docker.DockerClient, swarm: LocalSwarm, labels: Mapping[str, str]
) -> str:
    """The overlay without a route out beside the swarm's (named as the swarm backend
    names it), made when missing."""
    name = f"{swarm.overlay}-internal"  # scheduler.docker_backend.internal_network_name
    if not any(n["Name"] == name for n in engine.api.networks(names=[name])):
        engine.api.create_network(
            name, driver="overlay", attachable=True, internal=True, labels=dict(labels)
        )
    return name


def _wait_until_answering(
    engine: docker.DockerClient, service: str, replicas: int, port: int
) -> list[str]:
    addresses = {n.id: n.attrs["Status"]["Addr"] for n in engine.nodes.list()}
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        tasks: list[dict[str, Any]] = engine.api.tasks(  # type: ignore[no-untyped-call]
            filters={"service": service, "desired-state": "running"}
        )
        running = [t for t in tasks if t["Status"]["State"] == "running"]
        urls = sorted(f"http://{addresses[t['NodeID']]}:{port}" for t in running)
        if len(urls) == replicas and all(_healthy(url) for url in urls):
            return urls
        if time.monotonic() > deadline:
            raise InfraError(
                f"{len(running)} of {replicas} gateways running, not all answering, after "
                f"{READY_TIMEOUT_S:.0f} s: {_task_errors(tasks)}; {_last_logs(engine, service)}"
            )
        time.sleep(0.25)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _task_errors(tasks: list[dict[str, Any]]) -> str:
    errors = {t["Status"].get("Err") or t["Status"]["State"] for t in tasks}
    return ", ".join(sorted(errors)) or "no task"


def _last_logs(engine: docker.DockerClient, service: str) -> str:
    try:
        logs = engine.api.service_logs(service, stdout=True, stderr=True, tail="20")
        data = logs if isinstance(logs, bytes) else b"".join(logs)
        return data.decode(errors="replace")
    except APIError as err:
        return f"(no logs: {err})"


def _wait_until_gone(swarm: LocalSwarm, service: str) -> None:
    """Until no node has a container of `service` (each one had its stop grace)."""
    deadline = time.monotonic() + GONE_TIMEOUT_S
    label: dict[str, str | list[str] | bool] = {"label": f"com.docker.swarm.service.name={service}"}
    for node in swarm.nodes:
        with node.engine() as engine:
            while engine.containers.list(all=True, filters=label, ignore_removed=True):
                if time.monotonic() > deadline:
                    raise InfraError(f"the containers of {service} did not go")
                time.sleep(0.2)


__all__ = [
    "create_admin_key",
    "deploy_gateways",
    "gateway_env",
    "gateway_service",
    "remove_gateways",
    "secret_key_name",
    "share_with_manager",
]
