"""What a function version is on a Docker Swarm: pure service specs and names, no engine.

One replicated service per function version. Its task template is the hardening of
`docker_backend.container_config` (which stays the one owner of labels, environment,
limits and the user) mapped onto the Swarm API of Docker 20.10 (API 1.41):

- read-only root, every capability dropped (ContainerSpec.CapabilityDrop, API 1.41),
  pids/memory/CPU limits (Resources.Limits.Pids is API 1.41 too), tmpfs /tmp;
- Init: a PID 1 that forwards SIGTERM (without it a task waits out its whole grace);
- StopGracePeriod: the function's timeout plus 5 s, so in-flight requests finish when a
  scale-down or a removal stops a task;
- RestartPolicy any, no delay: a replacement starts as soon as Swarm notices a node is
  down (0.5 s after, not 5 s);
- EndpointSpec dnsrr: these kernels have no IPVS, so no VIPs; gateways route to task IPs;
- Placement spread over node.id: replicas land on several nodes;
- no-new-privileges: NOT set. ContainerSpec.Privileges has no NoNewPrivileges before
  API 1.46 (Docker 27); a 20.10 manager ignores it. `dockerd --no-new-privileges` on the
  nodes sets it engine-wide; without it the task still runs non-root, with no
  capabilities at all, on a read-only root, so a setuid binary gains nothing to use.

Secrets are Swarm secrets, not the host folder the Docker backend binds: see
`scheduler.swarm_secrets`.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any

from scheduler.docker_backend import (
    LABEL_FUNCTION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_NAMESPACE,
    RUNTIME_UID,
    container_config,
)
from scheduler.models import FunctionSpec

# Swarm object names are DNS labels (services) or at most 64 long (secrets).
MAX_SERVICE_NAME = 63
MAX_SECRET_NAME = 64
# What the drain of a stopping task gets beyond the function's own timeout.
STOP_GRACE_EXTRA_S = 5
TMP_BYTES = 64 * 1024 * 1024
PREWARM_DIR_BYTES = 256 * 1024 * 1024
SECRET_MODE = 0o400
# Where a task runs (a label of the tasks `list_managed` reports).
LABEL_NODE = "kapal.node"


def registry_repository(namespace: str, function: str) -> str:
    """The registry repository of a function's images (the default namespace's are short)."""
    if namespace == "kapal":
        return f"kapal-fn/{function}"
    return f"kapal-fn/{namespace}-{function}"


def _bounded(name: str, limit: int) -> str:
    """`name`, or when too long a prefix of it plus a hash of the whole (still unique)."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{name[: limit - 13].rstrip('-_.')}-{digest}"


def service_name(namespace: str, function: str, version: int) -> str:
    return _bounded(f"{namespace}-{function}-{version}", MAX_SERVICE_NAME)


def secret_name(namespace: str, function: str, name: str, value: bytes) -> str:
    """A Swarm secret's name: whose it is and a hash of its value."""
    digest = hashlib.sha256(value).hexdigest()[:12]
    return _bounded(f"{namespace}-{function}-{name}", MAX_SECRET_NAME - 13) + f"-{digest}"


@dataclass(frozen=True)
class SecretRef:
    """A Swarm secret a task gets as the file /run/secrets/`file`."""

    file: str
    secret_id: str
    secret_name: str


def secret_labels(namespace: str, function: str) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_NAMESPACE: namespace, LABEL_FUNCTION: function}


def service_spec(
    spec: FunctionSpec,
    namespace: str,
    network: str,
    replicas: int,
    *,
    secrets: tuple[SecretRef, ...] = (),
    runtime_env: dict[str, str] | None = None,
    image_user: str = "",
) -> dict[str, Any]:
    """The body of `POST /services/create` for one function version."""
    config = container_config(
        spec, namespace, network, "", None, runtime_env, image_user=image_user
    )
    host = config["host_config"]
    # Tasks come and go under one service: the instance is the task, not a label.
    labels = {k: v for k, v in config["labels"].items() if k != LABEL_INSTANCE}
    mounts: list[dict[str, Any]] = [
        {"Type": "tmpfs", "Target": "/tmp", "TmpfsOptions": {"SizeBytes": TMP_BYTES}}
    ]
    for target in sorted(set(host["tmpfs"]) - {"/tmp"}):
        # A prewarmed runtime's code folders: Swarm's tmpfs takes no owner, so the
        # runtime's user can write them only through the mode.
        mounts.append(
            {
                "Type": "tmpfs",
                "Target": target,
                "TmpfsOptions": {"SizeBytes": PREWARM_DIR_BYTES, "Mode": 0o1777},
            }
        )
    container: dict[str, Any] = {
        "Image": spec.image,
        "Labels": labels,
        "Env": [f"{k}={v}" for k, v in config["environment"].items()],
        "ReadOnly": True,
        "CapabilityDrop": ["ALL"],
        "Init": True,
        "StopGracePeriod": int((spec.limits.timeout_s + STOP_GRACE_EXTRA_S) * 1e9),
        "Mounts": mounts,
    }
    if config.get("user"):
        container["User"] = config["user"]
    if secrets:
        container["Secrets"] = [
            {
                "File": {
                    "Name": ref.file,
                    "UID": str(RUNTIME_UID),
                    "GID": str(RUNTIME_UID),
                    "Mode": SECRET_MODE,
                },
                "SecretID": ref.secret_id,
                "SecretName": ref.secret_name,
            }
            for ref in secrets
        ]
    return {
        "Name": service_name(namespace, spec.name, spec.version),
        "Labels": labels,
        "TaskTemplate": {
            "ContainerSpec": container,
            "Resources": {
                "Limits": {
                    "NanoCPUs": host["nano_cpus"],
                    "MemoryBytes": host["mem_limit"],
                    "Pids": host["pids_limit"],
                }
            },
            "RestartPolicy": {"Condition": "any", "Delay": 0, "MaxAttempts": 0},
            "Placement": {"Preferences": [{"Spread": {"SpreadDescriptor": "node.id"}}]},
            # Every version of a function answers to one more name on the overlay.
            # container_config's choice: the internal overlay when outbound is cut.
            "Networks": [{"Target": host["network_mode"], "Aliases": [f"{namespace}-{spec.name}"]}],
            "LogDriver": {
                "Name": "json-file",
                "Options": host["log_config"]["config"],
            },
        },
        "Mode": {"Replicated": {"Replicas": replicas}},
        "EndpointSpec": {"Mode": "dnsrr"},
    }


def replicas_of(stored: dict[str, Any]) -> int | None:
    """The replica count of a stored service Spec (None: not a replicated service)."""
    replicated = (stored.get("Mode") or {}).get("Replicated")
    if replicated is None:
        return None
    return int(replicated.get("Replicas", 1))


def with_replicas(stored: dict[str, Any], replicas: int) -> dict[str, Any]:
    """The stored Spec with only its replica count changed.

    What goes back to `/services/ID/update` must be the stored Spec itself: anything
    else in the task template differing (a default filled in) is a new template, and
    Swarm replaces every task.
    """
    updated = copy.deepcopy(stored)
    updated.setdefault("Mode", {}).setdefault("Replicated", {})["Replicas"] = replicas
    return updated


def task_address(task: dict[str, Any], networks: tuple[str, ...], port: int) -> str:
    """host:port of a task on one of `networks` ("" when it has no address there yet)."""
    for attachment in task.get("NetworksAttachments") or []:
        if ((attachment.get("Network") or {}).get("Spec") or {}).get("Name") not in networks:
            continue
        for address in attachment.get("Addresses") or []:
            return f"{address.split('/', 1)[0]}:{port}"
    return ""


def task_runs(task: dict[str, Any]) -> bool:
    """A task that runs and is meant to keep running."""
    return (task.get("Status") or {}).get("State") == "running" and task.get(
        "DesiredState"
    ) == "running"


def task_changes(
    running: set[str], seen: set[str], now_running: set[str], now_seen: set[str]
) -> list[tuple[str, str]]:
    """What `watch` reports between two looks at the tasks: (task ID, action) for each task
    that came to run ("start"), stopped running or is meant to stop ("die"), or is gone
    ("destroy"; a running task that vanished at once also "die"s first)."""
    return [
        *((task_id, "start") for task_id in sorted(now_running - running)),
        *((task_id, "die") for task_id in sorted(running - now_running)),
        *((task_id, "destroy") for task_id in sorted(seen - now_seen)),
    ]
