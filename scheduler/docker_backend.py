"""Container backend on a Docker engine, through the Docker SDK.

The SDK is blocking, so every call runs on a dedicated thread pool: the event loop
never waits on the engine. Pausing goes through the container's cgroup freezer when this
host allows it, else through the engine (see scheduler.docker_pause).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import docker
import docker.errors
from docker import APIClient

from scheduler import engine_images, firewall, freezer, lease, netns
from scheduler.backend import EVENTS, Running
from scheduler.docker_pause import ContainerPauses
from scheduler.errors import BackendError, StartFailed
from scheduler.forks import WORKERS_MAX, ZYGOTE_PORT, forkable
from scheduler.models import PREWARM_NAME, RUNTIME_PORT, FunctionSpec

log = logging.getLogger("kapal.scheduler.docker")

T = TypeVar("T")
# The user function code runs as (the runtime image's USER); so does an image function
# whose image would run as root.
RUNTIME_UID = 10001
# Processes and threads one instance may have (each forked worker brings its own).
PIDS_LIMIT = 512
LABEL_MANAGED = "kapal.managed"
LABEL_NAMESPACE = "kapal.namespace"
LABEL_FUNCTION = "kapal.function"
LABEL_VERSION = "kapal.version"
LABEL_INSTANCE = "kapal.instance"
LABEL_RUNTIME = "kapal.runtime"
# The port its server listens on (an image function's own; Kapal's runtimes: 8080).
LABEL_PORT = "kapal.port"
# On a network: the lock file its namespace's live gateways hold (see scheduler.lease).
LABEL_LEASE = "kapal.lease"


def instance_name(namespace: str, function: str, version: int, instance_id: str) -> str:
    """A container's name; it also says what the container serves (see `identity`)."""
    return f"{namespace}-{function}-{version}-{instance_id}"


def identity(namespace: str, labels: dict[str, str], name: str) -> tuple[str, int]:
    """(function, version) a container serves.

    Labels are fixed at creation, so a prewarmed container (labelled as such) that was
    specialized is renamed instead: its name then says which function it serves.
    """
    function = labels.get(LABEL_FUNCTION, "")
    version = int(labels.get(LABEL_VERSION, "0") or 0)
    if function == PREWARM_NAME:
        rest = name.lstrip("/").removeprefix(f"{namespace}-")
        parts = rest.rsplit("-", 2)
        if len(parts) == 3 and parts[0] != PREWARM_NAME and parts[1].isdigit():
            return parts[0], int(parts[1])
    return function, version


def instance_labels(namespace: str, spec: FunctionSpec, instance_id: str) -> dict[str, str]:
    return {
        LABEL_MANAGED: "true",
        LABEL_NAMESPACE: namespace,
        LABEL_FUNCTION: spec.name,
        LABEL_VERSION: str(spec.version),
        LABEL_INSTANCE: instance_id,
        LABEL_RUNTIME: spec.runtime,
        LABEL_PORT: str(spec.port),
    }


def runs_as_root(user: str) -> bool:
    """Whether an image's USER (`name`, `uid`, `uid:gid`; empty: root) is root."""
    return user.split(":", 1)[0] in ("", "root", "0")


def address_port(labels: dict[str, str]) -> int:
    """The port a container's server listens on, from its labels."""
    port = labels.get(LABEL_PORT, "")
    return int(port) if port.isdigit() else RUNTIME_PORT


SECRETS_MOUNT = "/run/secrets"
# Instances do not talk to each other: only the gateway (the host) talks to them.
NETWORK_OPTIONS = {"com.docker.network.bridge.enable_icc": "false"}


def internal_network_name(network: str) -> str:
    """The network of functions without outbound access (no route out of the host)."""
    return f"{network}-internal"


def bridge_interface(net: dict[str, Any]) -> str:
    """The host interface of a bridge network, as `docker network inspect` describes it."""
    options = net.get("Options") or {}
    return str(options.get("com.docker.network.bridge.name") or f"br-{net['Id'][:12]}")


def container_config(
    spec: FunctionSpec,
    namespace: str,
    network: str,
    instance_id: str,
    secrets_root: Path | None = None,
    runtime_env: dict[str, str] | None = None,
    image_user: str = "",
) -> dict[str, Any]:
    """The create/host config of one function instance: labelled, limited, locked down.

    `runtime_env`: the platform's runtime settings (log caps), the same for every instance.
    `image_user`: an image function's image's USER; an image that would run as root runs
    as RUNTIME_UID instead (it can read the function's secrets then).
    """
    env = {
        **spec.env,
        **(runtime_env or {}),
        "KAPAL_FUNCTION": spec.name,
        "KAPAL_VERSION": str(spec.version),
        "KAPAL_HANDLER": spec.handler,
        "KAPAL_TIMEOUT_S": str(spec.limits.timeout_s),
        # The runtime turns away requests past this ("busy"), whichever gateway sends them.
        "KAPAL_CONCURRENCY": "0" if spec.name == PREWARM_NAME else str(spec.scaling.concurrency),
    }
    if spec.style is not None:
        env["KAPAL_STYLE"] = spec.style
    if forkable(spec):
        # PID 1 is a zygote: under a burst the pool forks more workers in the container.
        env["KAPAL_ZYGOTE_PORT"] = str(ZYGOTE_PORT)
        env["KAPAL_WORKERS_MAX"] = str(WORKERS_MAX)
    if spec.from_image:  # no Kapal runtime inside: only who it is
        env = {**spec.env, "KAPAL_FUNCTION": spec.name, "KAPAL_VERSION": str(spec.version)}
    memory = spec.limits.memory_mb * 1024 * 1024
    tmpfs = {"/tmp": "rw,nosuid,nodev,size=64m"}
    if spec.name == PREWARM_NAME:
        # The code arrives later, in /_/init: its folders must be writable by the runtime.
        owned = f"rw,nosuid,nodev,uid={RUNTIME_UID},gid={RUNTIME_UID},mode=0755"
        tmpfs["/opt/kapal/function"] = f"{owned},size=256m"
        tmpfs["/opt/kapal/deps"] = f"{owned},size=256m"
    binds = {}
    if spec.secrets and secrets_root is not None:
        # Files the gateway wrote (0400, the runtime's uid) on a host tmpfs; read-only here.
        binds[str(secrets_root / spec.name)] = {"bind": SECRETS_MOUNT, "mode": "ro"}
    if not spec.network.outbound:
        network = internal_network_name(network)
    config: dict[str, Any] = {
        "image": spec.image,
        "name": instance_name(namespace, spec.name, spec.version, instance_id),
        "labels": instance_labels(namespace, spec, instance_id),
        "environment": env,
        "host_config": {
            "network_mode": network,
            "mem_limit": memory,
            "memswap_limit": memory,
            "nano_cpus": int(spec.limits.cpus * 1e9),
            "pids_limit": PIDS_LIMIT,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "read_only": True,
            "tmpfs": tmpfs,
            "log_config": {"type": "json-file", "config": {"max-size": "10m", "max-file": "2"}},
            "restart_policy": {"Name": "no"},
            "binds": binds or None,
        },
    }
    if spec.from_image and runs_as_root(image_user):
        config["user"] = f"{RUNTIME_UID}:{RUNTIME_UID}"
    return config


class DockerBackend:
    # Starts and stops each instance itself (see scheduler.backend.ReplicaBackend).
    replicated: ClassVar[bool] = False

    def __init__(
        self,
        namespace: str,
        network: str,
        client: docker.DockerClient | None = None,
        *,
        secrets_root: Path | None = None,
        isolate_host: bool = True,
        runtime_env: dict[str, str] | None = None,
        freeze_cgroups: bool = True,
        netns_image: str | None = None,
    ):
        self.runtime_env = runtime_env or {}
        # Network namespaces made ahead, held by containers of `netns_image` (`sleep`);
        # None: each instance has the engine build its network.
        self.namespace = namespace
        self.network = network
        self.internal_network = internal_network_name(network)
        self.secrets_root = secrets_root
        self.isolate_host = isolate_host
        self.client = client or docker.from_env(max_pool_size=32)
        self.api: APIClient = self.client.api
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="kapal-docker")
        self.lease = lease.NamespaceLease(namespace)
        self._image_users: dict[str, str] = {}
        # The engine's CPUs (a container's CPU limit cannot exceed them), once asked.
        self._ncpu: int | None = None
        self.pauses = ContainerPauses(self.api, freezer.Freezer() if freeze_cgroups else None)
        self.spares: netns.Spares | None = None
        if netns_image is not None:
            labels = {
                LABEL_MANAGED: "true",
                LABEL_NAMESPACE: namespace,
                LABEL_LEASE: str(self.lease.path),
            }
            self.spares = netns.Spares(
                self.api, netns_image, labels, RUNTIME_UID, self._run, self._remove_quietly
            )

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        except docker.errors.DockerException as e:
            raise BackendError(str(e)) from e

    async def ensure_network(self) -> None:
        """Both function networks exist, without inter-container traffic, host guarded.

        First, what gateways killed before they cleaned up left on this host goes: the
        networks of namespaces no live gateway holds (when no container is on them), and
        the firewall rules of bridges that no longer exist.
        """

        def ensure() -> None:
            self.lease.hold()
            self._remove_abandoned_networks()
            if self.isolate_host:
                try:
                    firewall.unguard_missing()
                except firewall.FirewallError as e:
                    log.warning("stale firewall rules not checked", extra={"error": str(e)})
            for name, internal in ((self.network, False), (self.internal_network, True)):
                found = self.api.networks(names=[name])  # a substring match: check exactly
                if not any(n["Name"] == name for n in found):
                    self.api.create_network(
                        name,
                        driver="bridge",
                        internal=internal,
                        options=NETWORK_OPTIONS,
                        labels={
                            LABEL_MANAGED: "true",
                            LABEL_NAMESPACE: self.namespace,
                            LABEL_LEASE: str(self.lease.path),
                        },
                        check_duplicate=True,
                    )
                if self.isolate_host:
                    net = self.api.inspect_network(name)
                    try:
                        firewall.guard(bridge_interface(net))
                    except firewall.FirewallError as e:
                        log.warning(
                            "functions can reach services on the host: no firewall rule",
                            extra={"network": name, "error": str(e)},
                        )

        await self._run(ensure)
        if self.spares is not None:
            self.spares.refill_soon(self.network)

    def _remove_abandoned_networks(self) -> None:
        """Networks of other namespaces whose gateways are all gone, and that nothing uses.

        Only networks that name their lease are judged (older ones are left alone).
        """
        for net in self.api.networks(filters={"label": f"{LABEL_MANAGED}=true"}):
            labels = net.get("Labels") or {}
            path = labels.get(LABEL_LEASE)
            if not path or labels.get(LABEL_NAMESPACE) == self.namespace:
                continue
            with lease.abandoned(Path(path)) as free:
                if not free:
                    continue
                for holder in self._unjoined_holders(labels.get(LABEL_NAMESPACE, "")):
                    self._remove_quietly(holder)
                try:
                    if self.api.inspect_network(net["Id"]).get("Containers"):
                        continue  # its containers still run: they stay isolated
                    self.api.remove_network(net["Id"])
                except docker.errors.APIError as e:  # gone meanwhile, or in use after all
                    log.debug(
                        "network not removed", extra={"network": net["Name"], "error": str(e)}
                    )
                    continue
                log.info("abandoned network removed", extra={"network": net["Name"]})
                if self.isolate_host:
                    try:
                        firewall.unguard(bridge_interface(net))
                    except firewall.FirewallError:
                        pass

    async def remove_network(self) -> None:
        if self.spares is not None:
            self.spares.stop()

        def remove() -> None:
            if self.spares is not None:
                self.spares.remove_ready()
            if not self.lease.last():
                log.info("network kept: another gateway of this namespace runs")
                return
            for holder in self._unjoined_holders(self.namespace):  # killed gateways' spares
                self._remove_quietly(holder)
            for name in (self.network, self.internal_network):
                for net in self.api.networks(names=[name]):
                    if net["Name"] != name:
                        continue
                    try:
                        self.api.remove_network(net["Id"])
                    except docker.errors.NotFound:
                        pass
                    if self.isolate_host:
                        firewall.unguard(bridge_interface(net))

        await self._run(remove)

    async def start(self, spec: FunctionSpec, instance_id: str) -> Running:
        # Prewarmed containers start ahead of need: the spare namespaces are for requests.
        spares = self.spares if spec.name != PREWARM_NAME else None
        network = self.network if spec.network.outbound else self.internal_network

        def start() -> Running:
            cfg = container_config(
                spec,
                self.namespace,
                self.network,
                instance_id,
                self.secrets_root,
                self.runtime_env,
                self._image_user(spec.image) if spec.from_image else "",
            )
            holder = spares.take(network) if spares is not None else None
            if holder is not None:
                cfg = netns.joined(cfg, holder)
            elif spares is not None:
                log.debug("no spare network namespace ready", extra={"network": network})
            cid = ""
            try:
                host_config = self.api.create_host_config(**cfg["host_config"])
                try:
                    created = self.api.create_container(
                        cfg["image"],
                        name=cfg["name"],
                        labels=cfg["labels"],
                        environment=cfg["environment"],
                        host_config=host_config,
                        user=cfg.get("user"),
                    )
                except docker.errors.ImageNotFound as e:
                    message = f"image {spec.image} is missing: redeploy the function"
                    raise StartFailed(message) from e
                cid = created["Id"]
                self.api.start(cid)
                if holder is not None:
                    ip = holder.ip  # known already: no inspect (its pid: at its first pause)
                else:
                    info = self.api.inspect_container(cid)
                    ip = info["NetworkSettings"]["Networks"][network]["IPAddress"]
                    self.pauses.started(cid, info["State"].get("Pid") or 0)
            except BaseException:
                if cid:
                    self._remove_quietly(cid)
                if holder is not None:
                    self._remove_quietly(holder.id)
                raise
            return Running(cid, f"{ip}:{spec.port}", spec.name, spec.version, cfg["labels"])

        if spares is None:
            return await self._run(start)
        spares.starting()
        try:
            return await self._run(start)
        finally:
            spares.started()
            spares.refill_soon(network)

    def _image_user(self, image: str) -> str:
        """The USER an image runs as (pinned images never change: asked once)."""
        user = self._image_users.get(image)
        if user is None:
            try:
                info = self.api.inspect_image(image)  # type: ignore[no-untyped-call]
            except docker.errors.ImageNotFound as e:
                raise StartFailed(f"image {image} is missing: redeploy the function") from e
            user = self._image_users[image] = str((info.get("Config") or {}).get("User") or "")
        return user

    def _remove_quietly(self, cid: str) -> None:
        try:
            self.api.remove_container(cid, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as e:
            log.warning("remove failed", extra={"container": cid, "error": str(e)})

    async def remove(self, container_id: str, grace_s: float = 0.0) -> None:
        def remove() -> None:
            try:
                labels = self.api.inspect_container(container_id)["Config"].get("Labels") or {}
            except docker.errors.NotFound:
                self.pauses.removed(container_id)
                return
            # A forced removal kills a frozen container too; a graceful stop needs it thawed.
            self.pauses.thaw_quietly(container_id, look=grace_s > 0)
            if grace_s > 0:
                with contextlib.suppress(docker.errors.DockerException):  # gone: removed below
                    self.api.stop(container_id, timeout=max(1, int(grace_s)))
            self._remove_quietly(container_id)
            self.pauses.removed(container_id)
            holder = labels.get(netns.LABEL_NETNS)
            if holder:  # its network namespace was its alone
                self._remove_quietly(holder)

        await self._run(remove)

    async def resize(self, container_id: str, spec: FunctionSpec, workers: int) -> None:
        """Limits for `workers` instances of `spec` in one container (forked workers share
        their container's cgroup): memory and pids times `workers`, CPUs too up to the
        engine's."""

        def update() -> None:
            if self._ncpu is None:
                self._ncpu = int(self.client.info().get("NCPU") or 1)
            memory = spec.limits.memory_mb * 1024 * 1024 * workers
            cpus = min(spec.limits.cpus * workers, float(self._ncpu))
            resources = {
                "Memory": memory,
                "MemorySwap": memory,
                "NanoCpus": int(cpus * 1e9),
                "PidsLimit": PIDS_LIMIT * workers,
            }
            # The SDK's update_container knows neither NanoCpus nor PidsLimit.
            api = self.api
            url = f"{api.base_url}/v{api.api_version}/containers/{container_id}/update"
            answer = api.post(url, json=resources, timeout=30)
            if not answer.ok:
                raise BackendError(f"limits not updated: {answer.status_code} {answer.text[:200]}")

        await self._run(update)

    async def pause(self, container_id: str) -> None:
        await self._run(self.pauses.pause, container_id)

    async def unpause(self, container_id: str) -> None:
        # One write to a kernel file, not an engine call: on the loop, so the waiting
        # request does not also wait for a thread.
        if not self.pauses.thaw_now(container_id):
            await self._run(self.pauses.unpause, container_id)

    async def claim(self, container_id: str, spec: FunctionSpec, instance_id: str) -> None:
        name = instance_name(self.namespace, spec.name, spec.version, instance_id)
        await self._run(self.api.rename, container_id, name)

    def _running(
        self, cid: str, name: str, labels: dict[str, str], nets: dict[str, Any], state: str
    ) -> Running:
        net = nets.get(self.network) or nets.get(self.internal_network) or {}
        # One that joined a holder's network namespace has no network of its own.
        ip = net.get("IPAddress") or labels.get(netns.LABEL_IP, "")
        up = state in ("running", "paused")
        function, version = identity(self.namespace, labels, name)
        return Running(
            cid,
            f"{ip}:{address_port(labels)}" if ip and up else "",
            function,
            version,
            labels,
            paused=state == "paused",
        )

    async def inspect(self, container_id: str) -> Running | None:
        def inspect() -> Running | None:
            try:
                info = self.api.inspect_container(container_id)
            except docker.errors.NotFound:
                return None
            labels = info["Config"].get("Labels") or {}
            if labels.get(LABEL_NAMESPACE) != self.namespace or netns.is_holder(labels):
                return None
            status = self.pauses.status(info["Id"], info["State"])
            nets = (info.get("NetworkSettings") or {}).get("Networks") or {}
            return self._running(info["Id"], info.get("Name", ""), labels, nets, status)

        return await self._run(inspect)

    async def oom_killed(self, container_id: str, wait_s: float = 2.0) -> bool:
        """Whether the kernel killed the container for passing its memory limit.

        Waits (up to `wait_s`) for the engine to see the container stop: a request can
        fail a moment before the engine records the exit.
        """

        def check() -> bool:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    state = self.api.inspect_container(container_id)["State"]
                except docker.errors.NotFound:
                    return False
                if state.get("OOMKilled") or not state.get("Running"):
                    return bool(state.get("OOMKilled"))
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)

        return await self._run(check)

    async def list_managed(self) -> list[Running]:
        def list_() -> list[Running]:
            found = self.api.containers(
                all=True,
                filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_NAMESPACE}={self.namespace}"]},
            )
            self.pauses.keep_only({c["Id"] for c in found})
            return [
                self._running(
                    c["Id"],
                    (c.get("Names") or [""])[0],
                    c.get("Labels") or {},
                    (c.get("NetworkSettings") or {}).get("Networks") or {},
                    self.pauses.listed(c["Id"], c.get("State", "")),
                )
                for c in found
                if not netns.is_holder(c.get("Labels") or {})
            ]

        return await self._run(list_)

    def watch(self, on_event: Callable[[str, str], None]) -> Callable[[], None]:
        """Call `on_event(container_id, action)` on the loop for each container event.

        Returns a function that stops watching. The engine's event stream is read on a
        thread of its own.
        """
        loop = asyncio.get_running_loop()
        stream = self.api.events(
            decode=True,
            filters={
                "type": "container",
                "event": list(EVENTS),
                "label": [f"{LABEL_MANAGED}=true", f"{LABEL_NAMESPACE}={self.namespace}"],
            },
        )

        def read() -> None:
            try:
                for event in stream:
                    cid, action = event.get("id", ""), event.get("Action", "")
                    if netns.is_holder((event.get("Actor") or {}).get("Attributes") or {}):
                        if action in ("die", "oom", "destroy"):
                            self._pool.submit(self._kill_joined, cid)
                        continue
                    loop.call_soon_threadsafe(on_event, cid, action)
            except Exception as e:  # the stream closes when we stop, or the engine goes
                log.debug("event stream ended", extra={"error": str(e)})

        thread = threading.Thread(target=read, name="kapal-docker-events", daemon=True)
        thread.start()
        return stream.close

    def _kill_joined(self, holder: str) -> None:
        """A holder went: its instance has no network left, so it dies too (and is
        replaced like any instance that died)."""
        for c in self.api.containers(filters={"label": f"{netns.LABEL_NETNS}={holder}"}):
            try:
                self.api.kill(c["Id"])
            except docker.errors.DockerException as e:  # gone meanwhile
                log.debug("not killed", extra={"container": c["Id"], "error": str(e)})

    async def remove_function(self, function: str) -> None:
        """Remove every container serving `function` (a deleted function)."""
        found = [c for c in await self.list_managed() if c.function == function]
        await asyncio.gather(*(self.remove(c.id) for c in found))

    def follow_logs(self, container_id: str, stream: str, since_s: float) -> Any:
        """One stream (stdout or stderr) of a container's engine log from `since_s` on,
        followed and timestamped: a blocking iterator of entries with `close()`."""
        return self.api.logs(
            container_id,
            stdout=stream == "stdout",
            stderr=stream == "stderr",
            stream=True,
            follow=True,
            timestamps=True,
            since=since_s if since_s > 0 else None,
        )

    async def publish(self, image: str, function: str, version: int) -> str:
        """Where instances get a function version's image: on one engine, where it was
        built (a swarm's backend pushes it to a registry instead)."""
        return image

    async def unpublish(self, function: str) -> None:
        """Nothing was published beyond this engine (see `publish`)."""

    async def remove_images(self, repository: str) -> None:
        """Remove every tag of a function's image repository from the engine."""
        await self._run(engine_images.remove_repository, self.api, repository)

    async def remove_image(self, tag: str) -> None:
        await self._run(engine_images.remove_tag, self.api, tag)

    async def image_exists(self, tag: str) -> bool:
        return await self._run(engine_images.exists, self.api, tag)

    def _unjoined_holders(self, namespace: str) -> list[str]:
        """Holders of `namespace` no instance joined: spares, here or left by a gateway."""
        return netns.unjoined(self.api, [f"{LABEL_MANAGED}=true", f"{LABEL_NAMESPACE}={namespace}"])

    def close(self) -> None:
        if self.spares is not None:
            self.spares.stop()
            self.spares.remove_ready()
        self.lease.release()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
