"""Container backend on a Docker Swarm: one replicated service per function version.

Pools do not start or stop single instances here: they set a version's replica count
(`set_replicas`) and Swarm places the tasks on its nodes; gateways route to the tasks'
addresses on an attachable overlay network, found from the manager's task list. What
each service is (labels, limits, hardening, secrets) is `scheduler.swarm_spec`.

A replica-count change sends the service's stored Spec back with only the count changed:
docker-py's `Service.scale()` re-sends a spec with defaults filled in, which Swarm takes
for a new task template, replacing every task. Swarm has no per-task events, so `watch`
polls the namespace's tasks (`scheduler.swarm_tasks`).

Images: a version's image, built on the manager's engine, is pushed to the registry as
`REGISTRY/kapal-fn/NAME:VERSION` and services name it by digest, which every node pulls.

The SDK is blocking, so every engine call runs on a thread pool of this backend's own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import docker
import docker.errors
import requests
from docker import APIClient
from docker.auth import encode_header
from docker.types import IPAMConfig, IPAMPool

from scheduler import engine_images, swarm_pull, swarm_spec
from scheduler.backend import Running
from scheduler.docker_backend import (
    LABEL_FUNCTION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_NAMESPACE,
    LABEL_VERSION,
    address_port,
    internal_network_name,
)
from scheduler.errors import BackendError, StartFailed
from scheduler.models import FunctionSpec
from scheduler.registry_api import RegistryAPI
from scheduler.swarm_secrets import ensure_secrets, remove_unused_secrets
from scheduler.swarm_spec import LABEL_NODE
from scheduler.swarm_tasks import TaskLogs, follow_task_logs, watch_tasks

log = logging.getLogger("kapal.scheduler.swarm")

T = TypeVar("T")
# Pushing an image of a few hundred MB can take minutes; other calls answer in ms.
ENGINE_TIMEOUT_S = 600
# Exit status of a process killed by SIGKILL (the kernel's OOM killer sends that).
SIGKILL_EXIT = 137
# How long an overlay being removed may take to go (its last tasks stopping).
NETWORK_GONE_S = 60.0
# How the manager refuses a service on an overlay being removed.
MISSING_NETWORK = re.compile(r"network (\S+) not found")
NOT_SCALED = "swarm services are scaled by replica count"
# After a scale-up, tasks are looked for this often until they all run (or HURRY_S has
# passed): a request waits for the first one, and a 0.5 s poll would add 0.25 s on average.
HURRY_POLL_S = 0.02
HURRY_S = 30.0
# How long a deploy waits for its image to be on every node.
PULL_TIMEOUT_S = 120.0
# Labels the jobs that spread an image (not services of a function version).
LABEL_PULL = "kapal.pull"


class SwarmBackend:
    # Pools set a replica count here; they never start or stop one instance.
    replicated: ClassVar[bool] = True

    def __init__(
        self,
        namespace: str,
        network: str,
        *,
        manager_url: str | None = None,
        registry: str,
        registry_auth: tuple[str, str] | None = None,
        secrets_root: Path | None = None,
        runtime_env: dict[str, str] | None = None,
        api_version: str = "1.41",
        poll_s: float = 0.5,
        overlay_subnet: str | None = None,
    ) -> None:
        self.namespace = namespace
        self.network = network
        self.internal_network = internal_network_name(network)
        self.registry = registry
        self.registry_auth = registry_auth
        self.secrets_root = secrets_root
        self.runtime_env = runtime_env or {}
        self.poll_s = poll_s
        self.overlay_subnet = overlay_subnet
        if manager_url is None:
            self.client = docker.from_env(
                version=api_version, timeout=ENGINE_TIMEOUT_S, max_pool_size=32
            )
        else:
            self.client = docker.DockerClient(
                base_url=manager_url,
                version=api_version,
                timeout=ENGINE_TIMEOUT_S,
                max_pool_size=32,
            )
        # The manager's engine: deploys build function images on it, then `publish` them.
        self.api: APIClient = self.client.api
        self.registry_api = RegistryAPI(registry, registry_auth)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="kapal-swarm")
        self._locks: dict[str, asyncio.Lock] = {}
        # Service ID -> its labels (fixed at creation, so kept once seen).
        self._service_labels: dict[str, dict[str, str]] = {}
        self._image_users: dict[str, str] = {}
        self._stops: list[Callable[[], None]] = []
        # Services scaled up whose tasks are not all running yet: name -> (count, until).
        self._hurry: dict[str, tuple[int, float]] = {}

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        except docker.errors.DockerException as e:
            raise BackendError(str(e)) from e

    def _filters(self, **labels: str) -> dict[str, list[str]]:
        found = [f"{LABEL_MANAGED}=true", f"{LABEL_NAMESPACE}={self.namespace}"]
        return {"label": found + [f"{k}={v}" for k, v in labels.items()]}

    def _auth_headers(self) -> dict[str, str]:
        """X-Registry-Auth for service create/update: nodes pull with it."""
        if self.registry_auth is None:
            return {}
        user, password = self.registry_auth
        auth = {"username": user, "password": password, "serveraddress": self.registry}
        return {"X-Registry-Auth": encode_header(auth).decode()}

    def _post(self, path: str, body: dict[str, Any], params: dict[str, Any] | None = None) -> Any:
        """POST a JSON body to the manager as is (the SDK's helpers rewrite specs)."""
        url = f"{self.api.base_url}/v{self.api.api_version}{path}"
        response = self.api.post(
            url,
            data=json.dumps(body),
            params=params,
            headers={"Content-Type": "application/json", **self._auth_headers()},
        )
        try:
            response.raise_for_status()
        except requests.HTTPError as e:
            docker.errors.create_api_error_from_http_exception(e)
        return response.json() if response.content else None

    # The SDK's Swarm calls are untyped: typed once here.
    def _services(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        return list(self.api.services(filters=filters))  # type: ignore[no-untyped-call]

    def _all_tasks(self) -> list[dict[str, Any]]:
        return list(self.api.tasks())  # type: ignore[no-untyped-call]

    def _inspect_task(self, task_id: str) -> dict[str, Any]:
        return dict(self.api.inspect_task(task_id))  # type: ignore[no-untyped-call]

    def _inspect_service(self, service_id: str) -> dict[str, Any]:
        return dict(self.api.inspect_service(service_id))  # type: ignore[no-untyped-call]

    def _remove_service(self, service_id: str) -> None:
        self.api.remove_service(service_id)  # type: ignore[no-untyped-call]

    # -- the overlay networks --------------------------------------------------------------

    async def ensure_network(self) -> None:
        """The attachable overlays functions and gateways share exist: `network`, and its
        internal twin (no route out) for functions whose outbound access is cut. Gateways
        join both."""
        await self._run(self._ensure_networks)

    def _ensure_networks(self) -> None:
        for name, internal in ((self.network, False), (self.internal_network, True)):
            if self._network_exists(name):
                continue
            ipam = None
            if self.overlay_subnet is not None and not internal:
                ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=self.overlay_subnet)])
            try:
                self.api.create_network(
                    name,
                    driver="overlay",
                    attachable=True,
                    internal=internal,
                    ipam=ipam,
                    labels={LABEL_MANAGED: "true", LABEL_NAMESPACE: self.namespace},
                    check_duplicate=True,
                )
            except docker.errors.APIError:
                if not self._network_exists(name):  # not another gateway's just now
                    raise

    def _renew_network(self, name: str) -> None:
        """Make overlay `name` again once a removal under way has finished.

        A removed overlay that tasks still used is listed until they are gone, yet no
        service can join it any more ("network ... not found"): wait for it to go, then
        make it anew.
        """
        deadline = time.monotonic() + NETWORK_GONE_S
        while self._network_exists(name):
            if time.monotonic() > deadline:
                raise BackendError(f"network {name} is being removed and stays")
            time.sleep(0.2)
        self._ensure_networks()

    def _network_exists(self, name: str) -> bool:
        # A substring match: check names exactly.
        return any(n["Name"] == name for n in self.api.networks(names=[name]))

    async def remove_network(self) -> None:
        """Remove the overlays this namespace made when it has no service left."""

        def remove() -> None:
            if self._services(filters=self._filters()):
                log.info("network kept: services of this namespace remain")
                return
            for net in self.api.networks(filters=self._filters()):
                if net["Name"] not in (self.network, self.internal_network):
                    continue  # a swarm's own overlay is not labelled as ours: left alone
                try:
                    self.api.remove_network(net["Id"])
                except docker.errors.APIError as e:
                    # A manager lists a removed overlay for a moment, then says 500 "not found".
                    if "not found" not in str(e):
                        raise

        await self._run(remove)

    # -- images through the registry ------------------------------------------------------

    async def publish(self, image: str, function: str, version: int) -> str:
        """Push `image` (on the manager's engine) as REGISTRY/kapal-fn/NAME:VERSION; the
        reference by digest that services name."""
        repository = f"{self.registry}/{swarm_spec.registry_repository(self.namespace, function)}"

        def push() -> str:
            self.api.tag(image, repository, str(version))
            digest = None
            for event in self.api.push(
                repository, str(version), stream=True, decode=True, auth_config=self._auth_config()
            ):
                if "error" in event:
                    raise BackendError(f"pushing {image} to {repository}: {event['error']}")
                aux = event.get("aux")
                if isinstance(aux, dict) and "Digest" in aux:
                    digest = str(aux["Digest"])
            if digest is None:
                raise BackendError(f"pushing {image} to {repository} reported no digest")
            return f"{repository}@{digest}"

        reference = await self._run(push)
        # On every node before a task needs it: no pull on a cold start's path.
        job = swarm_spec.service_name(self.namespace, f"pull-{function}", version)
        nodes, seconds = await self._run(
            swarm_pull.spread,
            self.api,
            self._post,
            job,
            reference,
            {LABEL_PULL: self.namespace},
            PULL_TIMEOUT_S,
        )
        log.info(
            "image on the nodes",
            extra={"image": reference, "nodes": nodes, "seconds": round(seconds, 2)},
        )
        return reference

    async def unpublish(self, function: str) -> None:
        """Delete every tag of the function's repository, in the registry and on the
        manager's engine."""
        repository = swarm_spec.registry_repository(self.namespace, function)

        def delete() -> None:
            deleted = self.registry_api.delete_repository(repository)
            log.info("registry tags deleted", extra={"function": function, "tags": deleted})

        await self._run(delete)
        await self.remove_images(f"{self.registry}/{repository}")

    # -- services --------------------------------------------------------------------------

    async def set_replicas(self, spec: FunctionSpec, replicas: int) -> None:
        """Make `spec`'s service run `replicas` tasks (created on first use)."""
        name = swarm_spec.service_name(self.namespace, spec.name, spec.version)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            await self._run(self._set_replicas, spec, name, replicas)

    def _set_replicas(self, spec: FunctionSpec, name: str, replicas: int) -> None:
        for attempt in (1, 2):
            found = self._service(name)
            if found is None:
                if replicas == 0:
                    return  # nothing runs, nothing to make
                try:
                    self._create(spec, replicas)
                    self._hurry[name] = (replicas, time.monotonic() + HURRY_S)
                    return
                except docker.errors.APIError as e:
                    if e.status_code != 409 or attempt == 2:
                        raise
                    continue  # another gateway created it just now: update that one
            stored = found["Spec"]
            before = swarm_spec.replicas_of(stored)
            if before == replicas:
                return
            if replicas > (before or 0):
                self._hurry[name] = (replicas, time.monotonic() + HURRY_S)
            try:
                self._post(
                    f"/services/{found['ID']}/update",
                    swarm_spec.with_replicas(stored, replicas),
                    params={"version": found["Version"]["Index"]},
                )
                return
            except docker.errors.APIError as e:
                # Someone else changed it since we read it: read it again, once.
                if "out of sequence" not in str(e) or attempt == 2:
                    raise

    def _service(self, name: str) -> dict[str, Any] | None:
        for service in self._services(filters={"name": name}):
            if service["Spec"]["Name"] == name:  # the name filter matches prefixes
                return dict(service)
        return None

    def _create(self, spec: FunctionSpec, replicas: int) -> None:
        image_user = self._image_user(spec.image) if spec.from_image else ""
        body = swarm_spec.service_spec(
            spec,
            self.namespace,
            self.network,
            replicas,
            secrets=ensure_secrets(self.api, self.namespace, self.secrets_root, spec),
            runtime_env=self.runtime_env,
            image_user=image_user,
        )
        try:
            created = self._post("/services/create", body)
        except docker.errors.APIError as e:
            gone = MISSING_NETWORK.search(str(e))
            if gone is None or gone[1] not in (self.network, self.internal_network):
                raise
            self._renew_network(gone[1])
            created = self._post("/services/create", body)
        log.info(
            "service created",
            extra={"service": body["Name"], "id": created["ID"], "replicas": replicas},
        )

    def _image_user(self, image: str) -> str:
        """The USER an image runs as, from the manager's engine (pulled when missing)."""
        user = self._image_users.get(image)
        if user is None:
            try:
                info = self.api.inspect_image(image)  # type: ignore[no-untyped-call]
            except docker.errors.ImageNotFound:
                try:
                    self.api.pull(image, auth_config=self._auth_config())
                    info = self.api.inspect_image(image)  # type: ignore[no-untyped-call]
                except docker.errors.APIError as e:
                    raise StartFailed(f"image {image} cannot be had: {e}") from e
            user = self._image_users[image] = str((info.get("Config") or {}).get("User") or "")
        return user

    def _auth_config(self) -> dict[str, str] | None:
        """The registry credentials as the engine takes them for a push or a pull."""
        if self.registry_auth is None:
            return None
        return {"username": self.registry_auth[0], "password": self.registry_auth[1]}

    async def remove_version(self, function: str, version: int) -> None:
        """Remove a version's service (its tasks get SIGTERM and their grace period) and
        the secrets no other service uses."""
        await self._remove_services(
            function, {LABEL_FUNCTION: function, LABEL_VERSION: str(version)}
        )

    async def remove_function(self, function: str) -> None:
        """Remove every service of `function` and its secrets (a deleted function)."""
        await self._remove_services(function, {LABEL_FUNCTION: function})

    async def _remove_services(self, function: str, labels: dict[str, str]) -> None:
        def remove() -> None:
            for service in self._services(filters=self._filters(**labels)):
                try:
                    self._remove_service(service["ID"])
                except docker.errors.NotFound:
                    pass
                log.info("service removed", extra={"service": service["Spec"]["Name"]})
            self._remove_unused_secrets(function)

        await self._run(remove)

    def _remove_unused_secrets(self, function: str) -> None:
        mine = self._filters(**{LABEL_FUNCTION: function})
        remove_unused_secrets(self.api, mine, self._services(filters=mine))

    # -- tasks -------------------------------------------------------------------------------

    def _tasks(self) -> list[tuple[dict[str, Any], dict[str, str]]]:
        """Every task of this namespace's services, with its service's labels."""
        services = self._services(filters=self._filters())
        labels = {s["ID"]: dict(s["Spec"].get("Labels") or {}) for s in services}
        self._service_labels = labels  # replaced whole: removed services drop out
        if not labels:
            return []
        return [
            (task, labels[task["ServiceID"]])
            for task in self._all_tasks()
            if task.get("ServiceID") in labels
        ]

    def _running(self, task: dict[str, Any], labels: dict[str, str]) -> Running | None:
        """A task as pools see it; None unless it runs and has its overlay address."""
        if not swarm_spec.task_runs(task):
            return None
        networks = (self.network, self.internal_network)
        address = swarm_spec.task_address(task, networks, address_port(labels))
        if not address:
            return None
        task_id = str(task["ID"])
        return Running(
            task_id,
            address,
            labels.get(LABEL_FUNCTION, ""),
            int(labels.get(LABEL_VERSION, "0") or 0),
            {**labels, LABEL_INSTANCE: task_id[:12], LABEL_NODE: str(task.get("NodeID", ""))},
        )

    async def list_managed(self) -> list[Running]:
        """The running tasks of this namespace's services."""

        def list_() -> list[Running]:
            found = (self._running(task, labels) for task, labels in self._tasks())
            return [running for running in found if running is not None]

        return await self._run(list_)

    async def inspect(self, task_id: str) -> Running | None:
        """That task as it is now; None when it is gone, not ours or not running."""

        def inspect() -> Running | None:
            try:
                task = self._inspect_task(task_id)
                labels = self._service_labels.get(task["ServiceID"])
                if labels is None:
                    service = self._inspect_service(task["ServiceID"])
                    labels = dict(service["Spec"].get("Labels") or {})
                    self._service_labels[task["ServiceID"]] = labels
            except docker.errors.NotFound:
                return None
            if labels.get(LABEL_NAMESPACE) != self.namespace:
                return None
            return self._running(task, labels)

        return await self._run(inspect)

    def watch(self, on_event: Callable[[str, str], None]) -> Callable[[], None]:
        """Call `on_event(task_id, action)` on the loop as tasks change: "start" when one
        runs with an address (every running task at the first look too, so none started
        before the caller listed them is missed), "die" when one stops running or is
        meant to stop, "destroy" when it is gone. Returns a function that stops watching.
        Swarm has no task events: see `swarm_tasks.watch_tasks`."""

        def look() -> tuple[set[str], set[str]]:
            tasks = self._tasks()
            up = [(t, labels) for t, labels in tasks if self._running(t, labels)]
            if self._hurry:
                self._hurried(up)
            return {str(t["ID"]) for t, _ in up}, {str(t["ID"]) for t, _ in tasks}

        def interval() -> float:
            return HURRY_POLL_S if self._hurry else self.poll_s

        stop = watch_tasks(self.api, look, on_event, interval)
        self._stops.append(stop)
        return stop

    def _hurried(self, up: list[tuple[dict[str, Any], dict[str, str]]]) -> None:
        """Stop hurrying for services whose tasks all run now (or that waited too long)."""
        running: dict[str, int] = {}
        for _, labels in up:
            name = swarm_spec.service_name(
                self.namespace, labels.get(LABEL_FUNCTION, ""), int(labels.get(LABEL_VERSION) or 0)
            )
            running[name] = running.get(name, 0) + 1
        now = time.monotonic()
        for name, (wanted, until) in list(self._hurry.items()):
            if running.get(name, 0) >= wanted or now > until:
                self._hurry.pop(name, None)

    async def oom_killed(self, task_id: str, wait_s: float = 2.0) -> bool:
        """Whether a task was most likely killed for its memory (best effort).

        Swarm keeps no OOMKilled flag: a task that ended with SIGKILL's status while it
        was meant to run, or whose error names OOM, counts. Waits (up to `wait_s`) for
        the manager to see the task end.
        """

        def check() -> bool:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    task = self._inspect_task(task_id)
                except docker.errors.NotFound:
                    return False
                status = task.get("Status") or {}
                if status.get("State") != "running":
                    text = f"{status.get('Err', '')} {status.get('Message', '')}".lower()
                    code = (status.get("ContainerStatus") or {}).get("ExitCode")
                    killed = code == SIGKILL_EXIT and task.get("DesiredState") == "running"
                    return "oom" in text or killed
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)

        return await self._run(check)

    def follow_logs(self, task_id: str, stream: str, since_s: float) -> TaskLogs:
        """One stream (stdout or stderr) of a task's log from `since_s` on, followed and
        timestamped: a blocking iterator of entries with `close()`."""
        return follow_task_logs(self.api, task_id, stream, since_s)

    async def remove(self, task_id: str, grace_s: float = 0.0) -> None:
        """Nothing: Swarm cannot stop one task of a service and keep the others (a lower
        replica count is how tasks go, and Swarm picks which)."""
        log.debug("single task not removed (swarm)", extra={"task": task_id[:12]})

    async def start(self, spec: FunctionSpec, instance_id: str) -> Running:
        raise BackendError(NOT_SCALED)

    async def pause(self, task_id: str) -> None:
        raise BackendError(NOT_SCALED)

    async def unpause(self, task_id: str) -> None:
        raise BackendError(NOT_SCALED)

    async def claim(self, task_id: str, spec: FunctionSpec, instance_id: str) -> None:
        raise BackendError(NOT_SCALED)

    # -- images on the manager's engine ---------------------------------------------------

    async def remove_images(self, repository: str) -> None:
        """Remove every tag of a function's image repository from the engine."""
        await self._run(engine_images.remove_repository, self.api, repository)

    async def remove_image(self, tag: str) -> None:
        await self._run(engine_images.remove_tag, self.api, tag)

    async def image_exists(self, tag: str) -> bool:
        return await self._run(engine_images.exists, self.api, tag)

    def close(self) -> None:
        for stop in self._stops:
            stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
