"""A local Docker Swarm on this machine: docker-in-docker nodes, made offline.

Each node is a container of an image built like the runtime's OS layer (debootstrap of
Debian's docker.io, `docker import`), running a dockerd of its own. The nodes sit on a
bridge with fixed addresses that only this machine reaches; the first one is the
manager. The host talks to every node's engine over TCP on that bridge (no TLS: nothing
but this machine can reach it). Everything carries the label `kapal.swarm=NAME`, so
`down` finds it from any process, and a node's `/var/lib/docker` is a folder of the
host's (overlay2 inside needs a real filesystem under it), removed with the node. A
registry of Kapal's own (infra/registry.py) sits on the same bridge: the host pushes
images to it, the nodes pull them from it.
"""

import contextlib
import hashlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import requests
from docker.errors import APIError, DockerException, NotFound
from docker.types import IPAMConfig, IPAMPool

from infra.errors import InfraError
from infra.host import Log
from infra.imagestore import build, image_labels, remove_other_tags
from infra.postgres import stop_embedded
from infra.recipes import BASE_LABEL, INPUTS_LABEL, OsRecipe, os_inputs_hash, wheel_arch
from infra.registry import REGISTRY_PORT, RunningRegistry, registry_image, start_registry
from infra.rootfs import ensure_os_image, remove_tree

SWARM_LABEL = "kapal.swarm"
NODE_LABEL = "kapal.swarm.node"
# The engine of Debian bookworm's docker.io; the SDK must not speak a newer API to it.
NODE_API_VERSION = "1.41"
NODE_API_PORT = 2375
SWARM_PORT = 2377

NODE_OS = OsRecipe(
    "kapal/os-swarm-node:bookworm",
    "os-swarm-node/1",
    "docker:20.10-dind",
    ("docker.io", "iptables", "ca-certificates", "procps", "iproute2"),
    (
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV container=docker",
        "VOLUME /var/lib/docker",
    ),
)
NODE_REPO = "kapal/swarm-node"

# dockerd as PID 1 of a node. /sys and the cgroup (v1) hierarchies come read-only into a
# container; the node's engine must write them, and see mounts it makes under / in the
# containers it starts. dockerd's pid files survive a `docker kill` in the node's volume
# and would stop a restarted node's engine from starting.
ENTRYPOINT = """\
#!/bin/sh
set -e
mount -o remount,rw /sys
for hierarchy in /sys/fs/cgroup/*; do
  # A plain remount of a cgroup v1 hierarchy is refused (busy); its bind mount's flag is not.
  mount -o remount,bind,rw "$hierarchy"
done
mountpoint -q /sys/kernel/security || mount -t securityfs none /sys/kernel/security || true
mount --make-rshared /
rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
exec dockerd "$@"
"""
NODE_DOCKERFILE = f"""\
FROM {NODE_OS.image}
COPY kapal-node /usr/local/bin/kapal-node
ENTRYPOINT ["/usr/local/bin/kapal-node"]
"""

# Fixed ranges, apart from what engines hand out by default (172.17-31.x, 192.168.x):
# the nodes' bridge, each node's own docker0, the bridges inside nodes, Swarm's overlays.
BRIDGE_SUBNET = "10.213.0.0/24"
BRIDGE_GATEWAY = "10.213.0.1"
NODE_BIP = "10.214.{index}.1/24"
NODE_POOL = "base=10.215.0.0/16,size=24"
# The swarm's registry on the bridge, before the nodes' addresses (10.213.0.11...).
REGISTRY_IP = "10.213.0.2"
SWARM_POOL = "10.216.0.0/16"
OVERLAY_SUBNET = "10.217.0.0/24"

READY_TIMEOUT_S = 60.0
# The data dir, in the swarm's folder, of a Postgres started for Kapal on the swarm
# (infra/swarm_kapal.py): stopped before the folder is removed.
POSTGRES_DIR = "postgres"


@dataclass(frozen=True)
class SwarmNode:
    """One node: its container on the host and its engine's address on the bridge."""

    name: str
    address: str
    manager: bool

    @property
    def api_url(self) -> str:
        return f"tcp://{self.address}:{NODE_API_PORT}"

    @contextlib.contextmanager
    def engine(self, timeout: int = 60) -> Iterator[docker.DockerClient]:
        """A client of this node's engine, closed after use."""
        client = docker.DockerClient(
            base_url=self.api_url, version=NODE_API_VERSION, timeout=timeout
        )
        try:
            yield client
        finally:
            client.close()


@dataclass(frozen=True)
class LocalSwarm:
    """A running local swarm: its nodes (the manager first), overlay network and registry."""

    name: str
    nodes: tuple[SwarmNode, ...]
    # Attachable overlay network that function tasks (and gateways) join.
    overlay: str
    # Images pushed from the host to `registry.push` are pulled by nodes from `registry.address`.
    registry: RunningRegistry

    @property
    def manager(self) -> SwarmNode:
        return self.nodes[0]


def node_image(client: docker.DockerClient, log: Log = print) -> str:
    """The node image, made when missing or when its recipe changed; its tag."""
    arch = wheel_arch()
    inputs = _node_inputs_hash(arch)
    tag = f"{NODE_REPO}:{inputs[:16]}"
    if (image_labels(client, tag) or {}).get(INPUTS_LABEL) == inputs:
        return tag
    ensure_os_image(client, arch, log, NODE_OS)
    with tempfile.TemporaryDirectory(prefix="kapal-swarm-node-") as tmp:
        context = Path(tmp)
        entrypoint = context / "kapal-node"
        entrypoint.write_text(ENTRYPOINT)
        entrypoint.chmod(0o755)
        (context / "Dockerfile").write_text(NODE_DOCKERFILE)
        build(client, context, tag, {INPUTS_LABEL: inputs, BASE_LABEL: "true"}, log)
    remove_other_tags(client, NODE_REPO, tag)
    return tag


def swarm_up(
    client: docker.DockerClient,
    state: Path,
    *,
    name: str = "kapal",
    nodes: int = 3,
    insecure_registries: tuple[str, ...] = (),
    log: Log = print,
) -> LocalSwarm:
    """Start `nodes` nodes and join them into a swarm with an overlay network, beside a
    registry they pull from (`insecure_registries` are more for their engines to trust).

    A swarm of that name left by an earlier run is removed first: this one is new.
    """
    if not 1 <= nodes <= 9:
        raise InfraError(f"a local swarm has 1 to 9 nodes, not {nodes}")
    image = node_image(client, log)
    registry_tag = registry_image(client, log)
    swarm_down(client, state, name=name, log=log)
    started = time.monotonic()
    bridge = f"{name}-swarm"
    client.networks.create(
        bridge,
        driver="bridge",
        ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=BRIDGE_SUBNET, gateway=BRIDGE_GATEWAY)]),
        labels={SWARM_LABEL: name},
    )
    members = tuple(
        SwarmNode(f"{name}-node-{i}", f"10.213.0.{10 + i}", manager=i == 1)
        for i in range(1, nodes + 1)
    )
    trusted = (f"{REGISTRY_IP}:{REGISTRY_PORT}", *insecure_registries)
    try:
        for index, node in enumerate(members, start=1):
            _start_node(client, image, node, index, bridge, state / name, name, trusted)
        # Started while the nodes' engines come up.
        registry = start_registry(
            client,
            registry_tag,
            state / name / "registry",
            name=f"{name}-registry",
            network=bridge,
            ip=REGISTRY_IP,
            labels={SWARM_LABEL: name},
        )
        for node in members:
            _wait_for_engine(node)
        overlay = _form_swarm(name, members)
    except BaseException:
        swarm_down(client, state, name=name, log=log)
        raise
    log(f"swarm {name}: {nodes} nodes and a registry ready in {time.monotonic() - started:.1f} s")
    return LocalSwarm(name, members, overlay, registry)


def swarm_down(
    client: docker.DockerClient, state: Path, *, name: str = "kapal", log: Log = print
) -> bool:
    """Remove the swarm's nodes (with every service on them), its registry, the Postgres
    started beside it, their folders and the bridge; True when there was one."""
    found = False
    for container in client.containers.list(
        all=True, filters={"label": f"{SWARM_LABEL}={name}"}, ignore_removed=True
    ):
        container.remove(force=True, v=True)
        found = True
    for network in client.networks.list(filters={"label": f"{SWARM_LABEL}={name}"}):
        network.remove()
        found = True
    folder = state / name
    if folder.exists():
        stop_embedded(folder / POSTGRES_DIR)
        remove_tree(folder)
        found = True
    if found:
        log(f"swarm {name}: removed")
    return found


def _node_inputs_hash(arch: str) -> str:
    digest = hashlib.sha256()
    for part in (os_inputs_hash(arch, NODE_OS), ENTRYPOINT, NODE_DOCKERFILE):
        digest.update(b"%d:%s" % (len(part), part.encode()))
    return digest.hexdigest()


def _start_node(
    client: docker.DockerClient,
    image: str,
    node: SwarmNode,
    index: int,
    bridge: str,
    folder: Path,
    swarm: str,
    insecure_registries: tuple[str, ...],
) -> None:
    data = folder / node.name
    data.mkdir(parents=True, exist_ok=True)
    api = client.api
    host_config = api.create_host_config(
        # --privileged fails here (CAP_SYS_RESOURCE is not in the host engine's bounding
        # set); everything else a nested engine needs, it gets.
        cap_add=["ALL"],
        cap_drop=["SYS_RESOURCE"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        device_cgroup_rules=["a *:* rwm"],
        binds={str(data): {"bind": "/var/lib/docker", "mode": "rw"}},
    )
    # What `--security-opt systempaths=unconfined` sends: nothing under /proc masked.
    host_config["MaskedPaths"] = []
    host_config["ReadonlyPaths"] = []
    command = [
        "--storage-driver=overlay2",
        "-H",
        "unix:///var/run/docker.sock",
        "-H",
        f"tcp://0.0.0.0:{NODE_API_PORT}",
        # Said explicitly, a TCP listener without TLS starts without a 15 s warning pause.
        "--tls=false",
        f"--bip={NODE_BIP.format(index=index)}",
        f"--default-address-pool={NODE_POOL}",
        *(f"--insecure-registry={registry}" for registry in insecure_registries),
    ]
    container = api.create_container(
        image,
        command=command,
        name=node.name,
        hostname=node.name,
        labels={SWARM_LABEL: swarm, NODE_LABEL: node.name},
        host_config=host_config,
        # The stubs say one endpoint; the engine takes a map of network name to endpoint.
        networking_config=api.create_networking_config(
            {bridge: api.create_endpoint_config(ipv4_address=node.address)}  # type: ignore[arg-type]
        ),
    )
    api.start(container["Id"])


def _wait_for_engine(node: SwarmNode) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            with node.engine(timeout=2) as engine:
                engine.ping()
            return
        except (DockerException, requests.RequestException) as err:
            if time.monotonic() > deadline:
                raise InfraError(f"the engine of {node.name} did not answer: {err}") from err
            time.sleep(0.1)


def _form_swarm(name: str, nodes: tuple[SwarmNode, ...]) -> str:
    manager = nodes[0]
    with manager.engine() as engine:
        engine.swarm.init(
            advertise_addr=manager.address,
            listen_addr=f"{manager.address}:{SWARM_PORT}",
            default_addr_pool=[SWARM_POOL],
            subnet_size=24,
        )
        token = engine.swarm.attrs["JoinTokens"]["Worker"]
    for node in nodes[1:]:
        with node.engine() as engine:
            engine.swarm.join(
                remote_addrs=[f"{manager.address}:{SWARM_PORT}"],
                join_token=token,
                listen_addr=f"{node.address}:{SWARM_PORT}",
                advertise_addr=node.address,
            )
    overlay = f"{name}-functions"
    with manager.engine() as engine:
        _wait_for_nodes(engine, len(nodes))
        engine.networks.create(
            overlay,
            driver="overlay",
            attachable=True,
            ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=OVERLAY_SUBNET)]),
            labels={SWARM_LABEL: name},
        )
    return overlay


def _wait_for_nodes(engine: docker.DockerClient, count: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            ready = [n for n in engine.nodes.list() if n.attrs["Status"]["State"] == "ready"]
        except (APIError, NotFound):
            ready = []
        if len(ready) >= count:
            return
        if time.monotonic() > deadline:
            raise InfraError(f"only {len(ready)} of {count} swarm nodes became ready")
        time.sleep(0.2)


__all__ = [
    "LocalSwarm",
    "SwarmNode",
    "node_image",
    "swarm_down",
    "swarm_up",
]
