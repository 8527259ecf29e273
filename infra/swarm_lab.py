"""A whole Kapal on a local swarm: for `swarm up --kapal`, tests and benchmarks.

Beside the swarm (infra.swarm): Postgres over TCP on its bridge, function images in the
swarm's registry or in one of their own that needs a password (so nodes pull with
credentials), the gateways as a Swarm service (infra.swarm_kapal) and an admin key.
`swarm_lab` makes all of it for one block and removes it after, even when it fails.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker

from infra.gateway_image import gateway_image
from infra.host import Log
from infra.postgres import TcpAccess, serve_over_tcp
from infra.registry import REGISTRY_PORT, RunningRegistry, registry_image, start_registry
from infra.swarm import BRIDGE_GATEWAY, POSTGRES_DIR, SWARM_LABEL, LocalSwarm, swarm_down, swarm_up
from infra.swarm_kapal import create_admin_key, deploy_gateways

# A function registry with credentials, on the swarm bridge (the swarm's own is .2).
FUNCTIONS_REGISTRY_IP = "10.213.0.3"
POSTGRES_PORT = 5432


@dataclass(frozen=True)
class SwarmLab:
    swarm: LocalSwarm
    # Base URL of each gateway replica (http://NODE:PORT), reached from this host.
    urls: list[str]
    admin_key: str
    database_url: str
    # Where function images go (`credentials` guard it when set).
    registry: RunningRegistry
    credentials: tuple[str, str] | None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def node_names(self) -> dict[str, str]:
        """Node ID -> hostname (the node's container name on this host)."""
        with self.swarm.manager.engine() as engine:
            return {str(n.id): n.attrs["Description"]["Hostname"] for n in engine.nodes.list()}


def start_kapal(
    client: docker.DockerClient,
    swarm: LocalSwarm,
    folder: Path,
    repo_root: Path,
    *,
    namespace: str,
    runtime_images: Mapping[str, str],
    gateways: int = 2,
    credentials: tuple[str, str] | None = None,
    gateway_constraints: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log: Log = print,
) -> SwarmLab:
    """Kapal on a running local swarm, its state in `folder` (the swarm's): Postgres over
    TCP, function images in the swarm's registry (or, with `credentials`, a registry of
    their own that asks for them), `gateways` gateway replicas and an admin key.
    `swarm_down` removes it all with the swarm."""
    registry = swarm.registry
    told = dict(env or {})
    if credentials is not None:
        registry = start_registry(
            client,
            registry_image(client, log),
            folder / "functions-registry",
            name=f"{swarm.name}-functions-registry",
            network=f"{swarm.name}-swarm",
            ip=FUNCTIONS_REGISTRY_IP,
            labels={SWARM_LABEL: swarm.name},
            credentials=credentials,
        )
        told["KAPAL_REGISTRY"] = registry.address
        told["KAPAL_REGISTRY_USER"], told["KAPAL_REGISTRY_PASSWORD"] = credentials
    tcp = TcpAccess(BRIDGE_GATEWAY, POSTGRES_PORT, secrets.token_urlsafe(24))
    database_url = serve_over_tcp(folder / POSTGRES_DIR, tcp)
    # Before the gateways start: they load the keys there are then (one made later reaches
    # them only with the next catalog refresh).
    key = create_admin_key(database_url)
    urls = deploy_gateways(
        client,
        swarm,
        image=gateway_image(client, repo_root, log),
        runtime_images=runtime_images,
        database_url=database_url,
        namespace=namespace,
        replicas=gateways,
        env=told,
        constraints=gateway_constraints,
        log=log,
    )
    return SwarmLab(swarm, urls, key, database_url, registry, credentials)


@contextlib.contextmanager
def swarm_lab(
    client: docker.DockerClient,
    state: Path,
    repo_root: Path,
    *,
    name: str,
    namespace: str,
    runtime_images: Mapping[str, str],
    nodes: int = 3,
    gateways: int = 2,
    credentials: tuple[str, str] | None = None,
    gateway_constraints: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log: Log = print,
) -> Iterator[SwarmLab]:
    """Kapal (`start_kapal`) on a new local swarm of `nodes` nodes; all of it removed
    (nodes, registries, Postgres, folders) when the block ends."""
    trusted = (f"{FUNCTIONS_REGISTRY_IP}:{REGISTRY_PORT}",) if credentials is not None else ()
    swarm = swarm_up(client, state, name=name, nodes=nodes, insecure_registries=trusted, log=log)
    try:
        yield start_kapal(
            client,
            swarm,
            state / name,
            repo_root,
            namespace=namespace,
            runtime_images=runtime_images,
            gateways=gateways,
            credentials=credentials,
            gateway_constraints=gateway_constraints,
            env=env,
            log=log,
        )
    finally:
        swarm_down(client, state, name=name, log=log)
