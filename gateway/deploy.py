"""Deploying a function version: validate, unpack, build, record, route. All or nothing.

An image function has no code: its image is pulled and pinned while the deploy is
checked (a failed pull creates nothing), and nothing is built.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import archive
from gateway.catalog import Catalog
from gateway.errors import FunctionExists, FunctionNotFound, InvalidArchive, InvalidSpec
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.store import FunctionStore, VersionDetail
from gateway.vault import Secrets
from gateway.wire import DeploySpec
from scheduler import npm
from scheduler.builder import ImageBuilder, image_repository
from scheduler.depcache import Entry
from scheduler.docker_backend import DockerBackend
from scheduler.errors import ImagePushFailed, SchedulerError
from scheduler.images import ImageResolver, RegistryAuth, ResolvedImage
from scheduler.models import FunctionConfig, FunctionSpec
from scheduler.pydeps import read_requirements

log = logging.getLogger("kapal.gateway.deploy")


BuildEvent = Callable[[str, int, str, str, str], None]
# A deploy's progress as the stream sends it: {"event": "build", "line": ...}, ...
DeployEvent = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Plan:
    """A deploy checked and unpacked, not yet built."""

    name: str
    spec: DeploySpec
    root: Path
    code: bytes
    digest: str
    has_dependencies: bool
    create: bool
    # An image function's image, pulled and pinned (its id is then `digest`).
    image: ResolvedImage | None = None


@dataclass(frozen=True)
class Deployed:
    version: int
    # False: the spec and code were those of the current version; nothing was built.
    created: bool


def _same(current: VersionDetail, plan: Plan) -> bool:
    # The image is compared through the digest: a version's is the resolved one.
    fields = set(FunctionConfig.model_fields) - {"image"}
    return current.code_sha256 == plan.digest and current.spec.model_dump(
        include=fields
    ) == plan.spec.model_dump(include=fields)


class Deployer:
    def __init__(
        self,
        settings: Settings,
        store: FunctionStore,
        builder: ImageBuilder,
        backend: DockerBackend,
        images: ImageResolver,
        secrets: Secrets,
        catalog: Catalog,
        metrics: Metrics,
        event: BuildEvent | None = None,
    ) -> None:
        # Puts what a build did in the function's log: (function, version, instance, text, level).
        self.event = event
        self.catalog = catalog
        self.metrics = metrics
        self.secrets = secrets
        self.settings = settings
        self.store = store
        self.builder = builder
        self.backend = backend
        self.images = images
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @asynccontextmanager
    async def plan(
        self, name: str, spec_in: DeploySpec, code: bytes, *, create: bool
    ) -> AsyncIterator[Plan]:
        """Check a deploy before anything is built: the code unpacks and has its handler,
        its secrets exist, the function exists (or not, for a create). The unpacked folder
        lasts as long as the block. An image function's image is pulled and pinned."""
        if spec_in.image is not None:
            await self.secrets.check(spec_in.secrets)
            self._check_exists(name, await self.store.exists(name), create)
            resolved = await self.images.resolve(spec_in.image, await self._auth(spec_in))
            with tempfile.TemporaryDirectory(prefix="kapal-code-") as tmp:
                yield Plan(name, spec_in, Path(tmp), b"", resolved.id, False, create, resolved)
            return
        limits = archive.Limits(self.settings.max_code_files, self.settings.max_unpacked_bytes)
        with tempfile.TemporaryDirectory(prefix="kapal-code-") as tmp:
            root = await asyncio.to_thread(archive.unpack, code, Path(tmp), limits)
            if spec_in.runtime == "nodejs":
                archive.check_node_handler(root, spec_in.handler)
            else:
                archive.check_handler(root, spec_in.handler)
            # Kept in Postgres: what the image was built from, and what a prewarmed
            # container is specialized with.
            packed = await asyncio.to_thread(archive.pack, root)
            digest = await asyncio.to_thread(archive.digest, root)
            # Refused requirement lines are a 422 before anything is built.
            python = spec_in.runtime == "python"
            has_dependencies = python and bool(await asyncio.to_thread(read_requirements, root))
            if spec_in.runtime == "nodejs":
                try:
                    has_dependencies = bool(npm.dependencies(root))
                except npm.InvalidPackageJson as e:
                    raise InvalidArchive(str(e)) from None
            await self.secrets.check(spec_in.secrets)
            self._check_exists(name, await self.store.exists(name), create)
            yield Plan(name, spec_in, root, packed, digest, has_dependencies, create)

    async def _auth(self, spec: DeploySpec) -> RegistryAuth | None:
        """The registry credentials an image function names, from the vault."""
        if spec.registry_auth is None:
            return None
        found = await self.secrets.store.values([spec.registry_auth])
        if spec.registry_auth not in found:
            raise InvalidSpec(f"registry_auth: unknown secret {spec.registry_auth!r}")
        return RegistryAuth.parse(found[spec.registry_auth], spec.registry_auth)

    @staticmethod
    def _check_exists(name: str, exists: bool, create: bool) -> None:
        if create and exists:
            raise FunctionExists(f"function {name} already exists; PUT to update it")
        if not create and not exists:
            raise FunctionNotFound(f"function {name} not found")

    async def deploy(
        self, plan: Plan, *, skip_unchanged: bool = False, on_event: DeployEvent | None = None
    ) -> Deployed:
        """Build and record a new version of what `plan` checked. With `skip_unchanged`,
        a spec and code equal to the current version's build nothing. `on_event` hears
        each step (from any thread)."""
        name, spec_in = plan.name, plan.spec
        say: DeployEvent = on_event or (lambda event: None)
        async with self._locks[name]:
            current = await self.store.current(name)
            self._check_exists(name, current is not None, plan.create)
            if skip_unchanged and current is not None and _same(current, plan):
                say({"event": "unchanged", "version": current.spec.version})
                return Deployed(current.spec.version, created=False)
            version = await self.store.next_version(name)
            say({"event": "started", "function": name, "version": version})
            started = time.monotonic()

            output: list[str] = []

            def progress(line: str) -> None:
                output.append(line)
                say({"event": "build", "line": line})
                log.debug("build", extra={"function": name, "version": version, "step": line})

            if plan.image is not None:  # an image function: nothing to build
                image = plan.image.pinned
                self._built(name, version, [], f"image {spec_in.image} pinned as {image}")
                say({"event": "resolved", "image": image})
            else:
                image = await self._build(plan, version, output, progress, say)
            image = await self._publish(name, version, image, say)
            spec = FunctionSpec(
                **spec_in.model_dump(include=set(FunctionConfig.model_fields) - {"image"}),
                name=name,
                version=version,
                image=image,
                has_dependencies=plan.has_dependencies,
            )
            base = None if current is None else current.spec.version
            try:
                await self.store.add_version(spec, plan.code, plan.digest, base=base)
            except BaseException:
                if plan.image is None:  # never a user's image
                    await self.backend.remove_image(image)
                raise
            # Every gateway hears of it (catalog notification); this one at once.
            await self.catalog.reload_functions()
            log.info(
                "deployed",
                extra={
                    "function": name,
                    "version": version,
                    "image": image,
                    "seconds": round(time.monotonic() - started, 3),
                },
            )
            return Deployed(version, created=True)

    async def _build(
        self,
        plan: Plan,
        version: int,
        output: list[str],
        progress: Callable[[str], None],
        say: DeployEvent,
    ) -> str:
        started = time.monotonic()

        def dependencies(entry: Entry) -> None:
            line = (
                f"dependencies: reused (cached, sha {entry.key[:12]})"
                if entry.reused
                else f"dependencies: resolved in {entry.seconds:.1f} s (sha {entry.key[:12]})"
            )
            output.append(line)
            say(
                {
                    "event": "dependencies",
                    "reused": entry.reused,
                    "sha256": entry.key,
                    "bytes": entry.size,
                    "seconds": round(entry.seconds, 3),
                    "line": line,
                }
            )

        try:
            image = await self.builder.build(
                plan.name, version, plan.spec.runtime, plan.root, progress, dependencies
            )
        except Exception as e:
            self.metrics.build_took(time.monotonic() - started, False)
            self._built(plan.name, version, output, f"image build failed: {e}", "error")
            raise
        seconds = time.monotonic() - started
        self.metrics.build_took(seconds, True)
        self._built(plan.name, version, output, f"image {image} built in {seconds:.1f} s")
        say({"event": "built", "image": image, "seconds": round(seconds, 3)})
        return image

    async def _publish(self, name: str, version: int, image: str, say: DeployEvent) -> str:
        """The image where instances pull it from (a swarm's nodes: the registry, by
        digest); the deploy fails, with nothing recorded, when it cannot get there."""
        started = time.monotonic()
        try:
            published = await self.backend.publish(image, name, version)
        except SchedulerError as e:
            self._built(name, version, [], f"image push failed: {e}", "error")
            raise ImagePushFailed(f"image of {name} version {version} not pushed: {e}") from None
        if published != image:
            seconds = time.monotonic() - started
            self._built(name, version, [], f"image pushed as {published} in {seconds:.1f} s")
            say({"event": "pushed", "image": published, "seconds": round(seconds, 3)})
        return published

    async def rollback(self, name: str, version: int | None) -> int:
        """Serve an earlier version again (its image is kept); pools roll over to it as to
        a new version, draining what serves now."""
        async with self._locks[name]:
            to = await self.store.rollback(name, version)
            await self.catalog.reload_functions()
        log.info("rolled back", extra={"function": name, "version": to})
        return to

    async def split(self, name: str, weights: dict[int, int]) -> dict[int, int]:
        """Split traffic between versions (their images are kept); pools of versions
        joining start, those leaving drain, as for a rollback."""
        async with self._locks[name]:
            split = await self.store.set_traffic(name, weights)
            await self.catalog.reload_functions()
        log.info("traffic split", extra={"function": name, "traffic": split})
        return split

    def _built(
        self, name: str, version: int, output: list[str], what: str, level: str = "info"
    ) -> None:
        if self.event is not None:
            self.event(name, version, "", "\n".join([what, *output[-200:]]), level)

    async def delete(self, name: str) -> None:
        async with self._locks[name]:
            await self.store.delete(name)
            await self.catalog.reload_functions()
            # Its pool stops what it knows of (a specialized prewarm container among them,
            # perhaps not yet renamed for it), then whatever else the engine has of it.
            await self.catalog.scheduler.removed(name)
            # Whoever deletes stops what runs (other gateways only forget it), then the
            # images can go.
            await self.backend.remove_function(name)
            await self.backend.remove_images(image_repository(self.settings.namespace, name))
            await self.backend.unpublish(name)
        self._locks.pop(name, None)
