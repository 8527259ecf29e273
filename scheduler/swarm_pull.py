"""An image pulled onto every node of a swarm before any task needs it.

A node pulls a service's image when a task first lands there: on a cold start, that
pull (seconds for a first function, whose base layers are new to the node) sits on the
request's path. So a version's image is spread at deploy time, as Knative caches images
on every node ahead: a global job (Swarm 20.10's `GlobalJob` mode) runs one short task
per node, and a task's first step is pulling the image. What the task then does does not
matter (`true`, which an image without it fails to run, after the pull all the same).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from docker import APIClient

log = logging.getLogger("kapal.scheduler.swarm")

# Task states after which a node has the image, or will not get it from this job.
DONE = frozenset({"complete", "failed", "rejected", "shutdown", "orphaned", "remove"})
POLL_S = 0.1

Post = Callable[[str, dict[str, Any]], Any]


def job_spec(name: str, reference: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """A global job that pulls `reference` on every node and exits at once."""
    return {
        "Name": name,
        "Labels": dict(labels),
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": reference,
                "Command": ["true"],
                "Labels": dict(labels),
                "ReadOnly": True,
                "CapabilityDrop": ["ALL"],
                "User": "65534:65534",
            },
            "Resources": {"Limits": {"MemoryBytes": 16 << 20, "NanoCPUs": 100_000_000}},
            "RestartPolicy": {"Condition": "none"},
        },
        "Mode": {"GlobalJob": {}},
    }


def spread(
    api: APIClient,
    post: Post,
    name: str,
    reference: str,
    labels: Mapping[str, str],
    timeout_s: float,
) -> tuple[int, float]:
    """Pull `reference` onto every node (waiting up to `timeout_s`), then remove the job;
    (nodes that have it, seconds taken)."""
    began = time.monotonic()
    created = post("/services/create", job_spec(name, reference, labels))
    service_id = str(created["ID"])
    pulled = 0
    try:
        deadline = began + timeout_s
        while time.monotonic() < deadline:
            tasks: list[dict[str, Any]] = api.tasks(filters={"service": service_id})  # type: ignore[no-untyped-call]
            states = [t["Status"]["State"] for t in tasks]
            if len(states) >= _up_nodes(api) and all(s in DONE for s in states):
                errors = [e for t in tasks if "pull" in (e := t["Status"].get("Err") or "")]
                pulled = len(states) - len(errors)
                for error in errors:
                    log.warning("image not pulled", extra={"image": reference, "error": error})
                break
            time.sleep(POLL_S)
        else:
            log.warning("image not on every node in time", extra={"image": reference})
    finally:
        api.remove_service(service_id)  # type: ignore[no-untyped-call]
    return pulled, time.monotonic() - began


def _up_nodes(api: APIClient) -> int:
    """Nodes a global job runs on: ready and available."""
    nodes: list[dict[str, Any]] = api.nodes()
    return sum(
        1
        for n in nodes
        if n["Status"]["State"] == "ready" and n["Spec"].get("Availability") == "active"
    )
