"""Function images on an engine: the calls both backends make on the engine they build on
(blocking; each backend runs them on its own thread pool)."""

from __future__ import annotations

import docker.errors
from docker import APIClient


def remove_repository(api: APIClient, repository: str) -> None:
    """Remove every tag of an image repository."""
    for image in api.images(name=repository):
        for tag in image.get("RepoTags") or []:
            remove_tag(api, tag)


def remove_tag(api: APIClient, tag: str) -> None:
    try:
        api.remove_image(tag, force=True)
    except docker.errors.NotFound:
        pass


def exists(api: APIClient, tag: str) -> bool:
    try:
        api.inspect_image(tag)  # type: ignore[no-untyped-call]
        return True
    except docker.errors.ImageNotFound:
        return False
