"""A user's image for an image function, resolved at deploy time to what it is now.

A reference that names a registry (`host[:port]/path[:tag]`) is always pulled, with the
function's credentials if it has any, so a deploy runs what the registry serves now. A
reference without a registry is an image of the local engine (Docker Hub cannot be
reached here); it is pulled only when the engine does not have it. Either way the version
gets the image pinned: `repository@sha256:...` when the registry gave a digest, else the
image's own id, so a re-tag upstream or on the engine never changes a deployed version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docker.errors
import requests
from docker import APIClient

from scheduler.errors import ImageUnavailable

log = logging.getLogger("kapal.scheduler.images")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RegistryAuth:
    username: str
    password: str

    @classmethod
    def parse(cls, value: str, secret: str) -> RegistryAuth:
        """`username:password`, as a registry secret holds it."""
        username, sep, password = value.strip("\r\n").partition(":")
        if not sep or not username:
            raise ImageUnavailable(
                f"registry_auth: secret {secret!r} must hold 'username:password'"
            )
        return cls(username, password)


@dataclass(frozen=True)
class ResolvedImage:
    # What instances run: repository@sha256:... or the image id (sha256:...).
    pinned: str
    # The image's id (its config's digest): the same content gives the same id.
    id: str


def registry_of(reference: str) -> str | None:
    """The registry host a reference names, as the engine reads it; None: no registry."""
    first, slash, _ = reference.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def repository_of(reference: str) -> str:
    """The reference without its tag or digest."""
    name = reference.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


class ImageResolver:
    def __init__(self, api: APIClient) -> None:
        self.api = api

    async def resolve(
        self, reference: str, auth: RegistryAuth | None, progress: Progress | None = None
    ) -> ResolvedImage:
        """Pull (when needed) and pin `reference`; ImageUnavailable says why it cannot run."""
        say: Progress = progress or (lambda line: None)
        return await asyncio.to_thread(self._resolve, reference, auth, say)

    def _resolve(self, reference: str, auth: RegistryAuth | None, say: Progress) -> ResolvedImage:
        local = registry_of(reference) is None
        info = self._inspect(reference) if local and auth is None else None
        if info is None:
            self._pull(reference, auth, say)
            info = self._inspect(reference)
            if info is None:
                raise ImageUnavailable(f"image {reference}: pulled, yet the engine lacks it")
        image_id = str(info["Id"])
        repository = repository_of(reference)
        pinned = next(
            (
                str(d)
                for d in info.get("RepoDigests") or []
                if str(d).split("@", 1)[0] == repository
            ),
            None,
        )
        if local or pinned is None:
            pinned = image_id
        say(f"image {reference} is {pinned}")
        return ResolvedImage(pinned, image_id)

    def _inspect(self, reference: str) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = self.api.inspect_image(reference)  # type: ignore[no-untyped-call]
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.DockerException as e:
            raise ImageUnavailable(f"image {reference}: {e}") from e
        return info

    def _pull(self, reference: str, auth: RegistryAuth | None, say: Progress) -> None:
        say(f"pulling {reference}" + (f" as {auth.username}" if auth else ""))
        config = None if auth is None else {"username": auth.username, "password": auth.password}
        try:
            for chunk in self.api.pull(reference, stream=True, decode=True, auth_config=config):
                if "error" in chunk:
                    raise ImageUnavailable(f"image {reference}: {str(chunk['error']).strip()}")
                status = str(chunk.get("status", ""))
                if status and "id" not in chunk:  # per-layer progress is left out
                    say(status)
        except docker.errors.APIError as e:
            raise ImageUnavailable(f"image {reference}: {e.explanation or e}") from e
        except (docker.errors.DockerException, requests.RequestException) as e:
            # A registry that stops answering ends the pull at the client's read timeout.
            raise ImageUnavailable(f"image {reference}: {e}") from e
