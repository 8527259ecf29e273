"""The few image operations of the engine that the base image recipes need."""

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import docker
from docker.errors import APIError, ImageNotFound

from infra.errors import InfraError
from infra.host import Log


def image_labels(client: docker.DockerClient, ref: str) -> Mapping[str, str] | None:
    """The labels of a local image, or None when there is no such image."""
    try:
        return client.images.get(ref).labels
    except ImageNotFound:
        return None


def image_id(client: docker.DockerClient, ref: str) -> str | None:
    try:
        return client.images.get(ref).id
    except ImageNotFound:
        return None


def remove_if_unused(
    client: docker.DockerClient, old_id: str | None, new_id: str, log: Log
) -> None:
    """Remove a replaced image unless containers or child images still use it."""
    if old_id is None or old_id == new_id:
        return
    try:
        client.api.remove_image(old_id, force=False, noprune=False)
    except APIError as err:
        if err.status_code != 409:  # 409: in use by a container or by a child image
            raise
        log(f"kept the replaced image {old_id[:19]}: still in use")
    else:
        log(f"removed the replaced image {old_id[:19]}")


def remove_other_tags(client: docker.DockerClient, repository: str, keep: str) -> None:
    """Untag a repository's images made from older recipes, except `keep`."""
    for image in client.images.list(name=repository):
        for ref in image.tags:
            if ref != keep:
                with contextlib.suppress(APIError):  # in use by a container of another checkout
                    client.images.remove(ref)


@contextlib.contextmanager
def api_timeout(client: docker.DockerClient, seconds: int) -> Iterator[None]:
    """Give the engine calls inside more (or less) time than the client's default."""
    before = client.api.timeout
    client.api.timeout = seconds
    try:
        yield
    finally:
        client.api.timeout = before


def build(
    client: docker.DockerClient, context: Path, tag: str, labels: Mapping[str, str], log: Log
) -> str:
    """Build `context` with networking off, logging the engine's output; the new image id."""
    image: str | None = None
    with api_timeout(client, 600):
        stream = client.api.build(
            path=str(context),
            tag=tag,
            labels=dict(labels),
            network_mode="none",
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        )
        for event in stream:
            if "error" in event:
                raise InfraError(f"building {tag} failed: {str(event['error']).strip()}")
            text = str(event.get("stream", "")).rstrip()
            if text:
                log(f"  {text}")
            aux = event.get("aux")
            if isinstance(aux, dict) and "ID" in aux:
                image = str(aux["ID"])
    built = image or image_id(client, tag)
    if built is None:
        raise InfraError(f"building {tag} produced no image")
    return built
