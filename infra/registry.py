"""A container registry that Kapal runs itself: Debian's `docker-registry`, no pull needed.

The image is the distribution project's registry binary from Debian's package plus the
shared libraries `ldd` names, imported as a root filesystem (about 23 MB) and cached under
a tag naming its inputs, like the base images. A running registry sits on a Docker network
at a fixed address, which that network's engines (the swarm's nodes) pull from, and
publishes its port on 127.0.0.1 only, which the host's engine pushes to: engines treat
loopback registries as insecure, so neither side needs TLS.
"""

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import ImageNotFound

from infra import host
from infra.errors import InfraError
from infra.imagestore import api_timeout, image_labels, remove_other_tags
from infra.recipes import BASE_LABEL, INPUTS_LABEL
from infra.rootfs import import_rootfs

# Commands a registry needs on the host (command -> Debian package): the registry itself,
# and htpasswd for its bcrypt password files.
REGISTRY_TOOLS = {"docker-registry": "docker-registry", "htpasswd": "apache2-utils"}

REGISTRY_REPO = "kapal/registry"
# Bumped to force a rebuild when the recipe changes in a way its text does not show.
REGISTRY_RECIPE_VERSION = "registry/1"
REGISTRY_PORT = 5000
BINARY = "/usr/bin/docker-registry"
CONFIG_DIR = "/etc/docker-registry"
STORAGE = "/var/lib/registry"
# Not root: the registry needs no privilege, and its storage folder is chowned to this.
REGISTRY_UID = 10001
IMPORT_CHANGES = (
    f'ENTRYPOINT ["{BINARY}", "serve", "{CONFIG_DIR}/config.yml"]',
    f"EXPOSE {REGISTRY_PORT}",
    f"USER {REGISTRY_UID}:{REGISTRY_UID}",
)
READY_TIMEOUT_S = 30.0
PUSH_TIMEOUT = 600


def registry_config(addr: str, storage: str, htpasswd: str | None = None) -> str:
    """A registry's config.yml: filesystem storage, deletes enabled (so tags can be
    removed), no auth or htpasswd auth. Debian's own turns htpasswd on and stores
    elsewhere, so Kapal always writes its own."""
    auth = (
        "" if htpasswd is None else f"auth:\n  htpasswd:\n    realm: kapal\n    path: {htpasswd}\n"
    )
    return (
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {addr}\n"
        f"{auth}"
    )


IMAGE_CONFIG = registry_config(f":{REGISTRY_PORT}", STORAGE)


@dataclass(frozen=True)
class RunningRegistry:
    """A registry container and the two names of its address."""

    container: str
    # host:port that the members of its network pull from (listed as insecure in them).
    address: str
    # 127.0.0.1:PORT that the host's engine pushes to.
    push: str

    def reference(self, name: str, digest: str) -> str:
        """What a service names to pull `name` at `digest` from this registry."""
        return f"{self.address}/{name}@{digest}"


def registry_image(client: docker.DockerClient, log: host.Log = print) -> str:
    """The registry image, made when missing or when its inputs changed; its tag."""
    host.ensure_commands({"docker-registry": REGISTRY_TOOLS["docker-registry"]}, log)
    files = {BINARY: Path(shutil.which("docker-registry") or BINARY).resolve()}
    files.update({library: Path(library) for library in shared_libraries(files[BINARY])})
    inputs = _inputs_hash(files)
    tag = f"{REGISTRY_REPO}:{inputs[:16]}"
    if (image_labels(client, tag) or {}).get(INPUTS_LABEL) == inputs:
        return tag
    log(f"registry: making {tag} from {files[BINARY]}")
    with tempfile.TemporaryDirectory(prefix="kapal-registry-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        for inside, source in files.items():
            target = rootfs / inside.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)  # follows symlinks: the file itself goes in
        config = rootfs / CONFIG_DIR.lstrip("/") / "config.yml"
        config.parent.mkdir(parents=True)
        config.write_text(IMAGE_CONFIG)
        (rootfs / STORAGE.lstrip("/")).mkdir(parents=True)
        (rootfs / "tmp").mkdir()
        (rootfs / "tmp").chmod(0o1777)
        import_rootfs(
            client, rootfs, tag, IMPORT_CHANGES, {INPUTS_LABEL: inputs, BASE_LABEL: "true"}
        )
    remove_other_tags(client, REGISTRY_REPO, tag)
    return tag


def shared_libraries(binary: Path) -> list[str]:
    """The absolute paths of the libraries `binary` loads, its loader included."""
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    if "not a dynamic executable" in result.stdout + result.stderr:
        return []
    if result.returncode != 0:
        raise InfraError(f"ldd {binary} failed: {result.stderr.strip()}")
    return parse_ldd(result.stdout)


def parse_ldd(output: str) -> list[str]:
    """The paths in ldd's output; the vDSO is the kernel's, not a file."""
    paths = []
    for line in output.splitlines():
        _, arrow, right = line.partition("=>")
        path = (right if arrow else line).strip().split(" (")[0].strip()
        if path == "not found":
            raise InfraError(f"a library is missing: {line.strip()}")
        if path.startswith("/"):
            paths.append(path)
    return paths


def start_registry(
    client: docker.DockerClient,
    image: str,
    folder: Path,
    *,
    name: str,
    network: str,
    ip: str,
    labels: Mapping[str, str],
    credentials: tuple[str, str] | None = None,
) -> RunningRegistry:
    """Run a registry container `name` at `ip` on `network`, storing under `folder`, and
    wait until it answers. With `credentials` (user, password) every request needs them."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    binds: dict[str, Mapping[str, str]] = {str(data): {"bind": STORAGE, "mode": "rw"}}
    if host.is_root():
        os.chown(data, REGISTRY_UID, REGISTRY_UID)
        user = f"{REGISTRY_UID}:{REGISTRY_UID}"
    else:  # cannot chown: run as the owner of the folder instead
        user = f"{os.getuid()}:{os.getgid()}"
    if credentials is not None:
        config = folder / "config"
        config.mkdir(exist_ok=True)
        (config / "htpasswd").write_bytes(htpasswd_entry(*credentials))
        (config / "config.yml").write_text(
            registry_config(f":{REGISTRY_PORT}", STORAGE, f"{CONFIG_DIR}/htpasswd")
        )
        binds[str(config)] = {"bind": CONFIG_DIR, "mode": "ro"}
    api = client.api
    host_config = api.create_host_config(
        binds=binds,
        # Loopback only: nothing but this machine reaches it.
        port_bindings={REGISTRY_PORT: ("127.0.0.1",)},
        read_only=True,
        tmpfs={"/tmp": "rw,noexec,nosuid,size=64m"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        mem_limit="256m",
        pids_limit=256,
        nano_cpus=1_000_000_000,
    )
    container = api.create_container(
        image,
        name=name,
        user=user,
        labels=dict(labels),
        ports=[REGISTRY_PORT],
        host_config=host_config,
        # The stubs say one endpoint; the engine takes a map of network name to endpoint.
        networking_config=api.create_networking_config(
            {network: api.create_endpoint_config(ipv4_address=ip)}  # type: ignore[arg-type]
        ),
    )
    api.start(container["Id"])
    ports = api.inspect_container(container["Id"])["NetworkSettings"]["Ports"]
    port = ports[f"{REGISTRY_PORT}/tcp"][0]["HostPort"]
    registry = RunningRegistry(name, f"{ip}:{REGISTRY_PORT}", f"127.0.0.1:{port}")
    _wait_until_serving(client, registry)
    return registry


def push_image(
    client: docker.DockerClient,
    image: str,
    registry: RunningRegistry,
    name: str,
    tag: str,
    credentials: tuple[str, str] | None = None,
) -> str:
    """Push a local image to `registry` as `name:tag`; the digest it got (sha256:...)."""
    repository = f"{registry.push}/{name}"
    local = client.images.get(image)
    local.tag(repository, tag)
    auth = None if credentials is None else {"username": credentials[0], "password": credentials[1]}
    digest: str | None = None
    try:
        with api_timeout(client, PUSH_TIMEOUT):
            for event in client.api.push(
                repository, tag, stream=True, decode=True, auth_config=auth
            ):
                if "error" in event:
                    raise InfraError(f"pushing {image} to {repository}: {event['error']}")
                aux = event.get("aux")
                if isinstance(aux, dict) and "Digest" in aux:
                    digest = str(aux["Digest"])
    finally:
        # The push names hold the registry's loopback port, which dies with it. Removing
        # the last name of an image would remove the image: kept then.
        if local.tags:
            pushed = [f"{repository}:{tag}", *([f"{repository}@{digest}"] if digest else [])]
            for ref in pushed:
                with contextlib.suppress(ImageNotFound):
                    client.images.remove(ref, noprune=True)
    if digest is None:
        raise InfraError(f"pushing {image} to {repository} reported no digest")
    return digest


def _wait_until_serving(client: docker.DockerClient, registry: RunningRegistry) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            urllib.request.urlopen(f"http://{registry.push}/v2/", timeout=1).close()
            return
        except urllib.error.HTTPError as err:
            if err.code == 401:  # serving, and asking for credentials
                return
        except OSError:
            pass
        state = client.api.inspect_container(registry.container)["State"]
        if not state["Running"] or time.monotonic() > deadline:
            logs = client.api.logs(registry.container, tail=20).decode(errors="replace")
            raise InfraError(f"the registry {registry.container} did not start: {logs}")
        time.sleep(0.05)


def htpasswd_entry(user: str, password: str) -> bytes:
    """A line of an htpasswd file (bcrypt, as the registry requires) for `user`."""
    host.ensure_commands({"htpasswd": REGISTRY_TOOLS["htpasswd"]})
    # The password goes through stdin (-i), never onto a command line others can read.
    try:
        result = subprocess.run(
            ["htpasswd", "-niB", user], input=password.encode(), capture_output=True, check=True
        )
    except subprocess.CalledProcessError as err:
        raise InfraError(f"htpasswd failed: {err.stderr.decode(errors='replace')}") from err
    return result.stdout


def _inputs_hash(files: Mapping[str, Path]) -> str:
    digest = hashlib.sha256()
    for part in (REGISTRY_RECIPE_VERSION, IMAGE_CONFIG, *IMPORT_CHANGES):
        digest.update(b"%d:%s" % (len(part), part.encode()))
    for inside, source in sorted(files.items()):
        digest.update(b"%d:%s" % (len(inside), inside.encode()))
        digest.update(hashlib.sha256(source.read_bytes()).digest())
    return digest.hexdigest()


__all__ = [
    "REGISTRY_TOOLS",
    "RunningRegistry",
    "htpasswd_entry",
    "parse_ldd",
    "push_image",
    "registry_config",
    "registry_image",
    "start_registry",
]
