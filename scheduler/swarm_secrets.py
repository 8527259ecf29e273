"""A function's secrets as Swarm secrets, made from the files the gateway wrote.

The Docker backend binds the host folder SECRETS_ROOT/FUNCTION into each container; a
swarm task runs on whichever node Swarm picks, where that folder does not exist, so each
secret becomes a Swarm secret that the manager hands to the task's node (encrypted in the
raft log and in transit, a file on a tmpfs in the task). Swarm secrets are immutable:
each one's name ends in a hash of its value (`swarm_spec.secret_name`), so a new value is
a new secret and a running version keeps the value it started with.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import docker.errors
from docker import APIClient

from scheduler.errors import StartFailed
from scheduler.models import FunctionSpec
from scheduler.swarm_spec import SecretRef, secret_labels, secret_name

log = logging.getLogger("kapal.scheduler.swarm")


def ensure_secrets(
    api: APIClient, namespace: str, secrets_root: Path | None, spec: FunctionSpec
) -> tuple[SecretRef, ...]:
    """The Swarm secrets of `spec`'s secret files, made when missing."""
    if not spec.secrets:
        return ()
    if secrets_root is None:
        raise StartFailed(f"function {spec.name} has secrets but no secrets folder is set")
    refs = []
    for file in spec.secrets:
        try:
            value = (secrets_root / spec.name / file).read_bytes()
        except OSError as e:
            raise StartFailed(f"secret {file} of {spec.name} is not at hand: {e}") from e
        name = secret_name(namespace, spec.name, file, value)
        # The name filter matches prefixes: check names exactly.
        found = [s for s in api.secrets(filters={"name": name}) if s["Spec"]["Name"] == name]
        if found:
            secret_id = str(found[0]["ID"])
        else:
            labels = secret_labels(namespace, spec.name)
            try:
                secret_id = str(api.create_secret(name, value, labels=labels)["ID"])
            except docker.errors.APIError as e:
                if e.status_code != 409:
                    raise
                # Made by another gateway just now.
                secret_id = str(api.inspect_secret(name)["ID"])
        refs.append(SecretRef(file, secret_id, name))
    return tuple(refs)


def remove_unused_secrets(
    api: APIClient, filters: dict[str, Any], services: list[dict[str, Any]]
) -> None:
    """Remove the secrets `filters` selects that none of `services` uses."""
    used = {
        ref["SecretID"]
        for service in services
        for ref in service["Spec"]["TaskTemplate"]["ContainerSpec"].get("Secrets") or []
    }
    for secret in api.secrets(filters=filters):
        if secret["ID"] in used:
            continue
        try:
            api.remove_secret(secret["ID"])
        except docker.errors.APIError as e:  # gone, or used by a service made meanwhile
            log.debug("secret kept", extra={"secret": secret["Spec"]["Name"], "error": str(e)})
