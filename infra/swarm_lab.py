"""A whole Kapal on a local swarm, made and removed in one block: for tests and benchmarks.

The swarm (infra.swarm), Postgres over TCP on its bridge, a registry of its own for
function images (with a password when asked, so nodes pull with credentials), the
gateways as a Swarm service (infra.swarm_kapal) and an admin key. Everything goes at the
end of the block, even when it fails half way.
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

# The function registry's address on the swarm bridge (the swarm's own is 10.213.0.2).
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
    """Kapal on a new local swarm of `nodes` nodes, `gateways` gateway replicas; removed
    (nodes, registries, Postgres, folders) when the block ends."""
    functions_registry = f"{FUNCTIONS_REGISTRY_IP}:{REGISTRY_PORT}"
    image = gateway_image(client, repo_root, log)
    swarm = swarm_up(
        client, state, name=name, nodes=nodes, insecure_registries=(functions_registry,), log=log
    )
    try:
        registry = start_registry(
            client,
            registry_image(client, log),
            state / name / "functions-registry",
            name=f"{name}-functions-registry",
            network=f"{name}-swarm",
            ip=FUNCTIONS_REGISTRY_IP,
            labels={SWARM_LABEL: name},
            credentials=credentials,
        )
        tcp = TcpAccess(BRIDGE_GATEWAY, POSTGRES_PORT, secrets.token_urlsafe(24))
        database_url = serve_over_tcp(state / name / POSTGRES_DIR, tcp)
        told = {"KAPAL_REGISTRY": registry.address, **(env or {})}
        if credentials is not None:
            told["KAPAL_REGISTRY_USER"], told["KAPAL_REGISTRY_PASSWORD"] = credentials
        urls = deploy_gateways(
            client,
            swarm,
            image=image,
            runtime_images=runtime_images,
            database_url=database_url,
            namespace=namespace,
            replicas=gateways,
            env=told,
            constraints=gateway_constraints,
            log=log,
        )
        key = create_admin_key(database_url)
        yield SwarmLab(swarm, urls, key, database_url, registry, credentials)
    finally:
        swarm_down(client, state, name=name, log=log)
