"""Deploying a function version: validate, unpack, build, record, route. All or nothing."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from gateway import archive
from gateway.catalog import Catalog
from gateway.errors import FunctionExists, FunctionNotFound
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.store import FunctionStore
from gateway.vault import Secrets
from gateway.wire import DeploySpec
from scheduler.builder import ImageBuilder, image_repository
from scheduler.docker_backend import DockerBackend
from scheduler.models import FunctionConfig, FunctionSpec

log = logging.getLogger("kapal.gateway.deploy")


BuildEvent = Callable[[str, int, str, str, str], None]


class Deployer:
    def __init__(
        self,
        settings: Settings,
        store: FunctionStore,
        builder: ImageBuilder,
        backend: DockerBackend,
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
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def deploy(self, name: str, spec_in: DeploySpec, code: bytes, *, create: bool) -> None:
        limits = archive.Limits(self.settings.max_code_files, self.settings.max_unpacked_bytes)
        with tempfile.TemporaryDirectory(prefix="kapal-code-") as tmp:
            root = await asyncio.to_thread(archive.unpack, code, Path(tmp), limits)
            archive.check_handler(root, spec_in.handler)
            # Kept in Postgres: what the image was built from, and what a prewarmed
            # container is specialized with.
            code = await asyncio.to_thread(archive.pack, root)
            requirements = root / "requirements.txt"
            has_dependencies = requirements.is_file() and bool(requirements.read_text().strip())
            await self.secrets.check(spec_in.secrets)
            async with self._locks[name]:
                exists = await self.store.exists(name)
                if create and exists:
                    raise FunctionExists(f"function {name} already exists; PUT to update it")
                if not create and not exists:
                    raise FunctionNotFound(f"function {name} not found")
                version = await self.store.next_version(name)
                started = time.monotonic()

                output: list[str] = []

                def progress(line: str) -> None:
                    output.append(line)
                    log.debug("build", extra={"function": name, "version": version, "step": line})

                try:
                    image = await self.builder.build(name, version, spec_in.runtime, root, progress)
                except Exception as e:
                    self.metrics.build_took(time.monotonic() - started, False)
                    self._built(name, version, output, f"image build failed: {e}", "error")
                    raise
                seconds = time.monotonic() - started
                self.metrics.build_took(seconds, True)
                self._built(name, version, output, f"image {image} built in {seconds:.1f} s")
                spec = FunctionSpec(
                    **spec_in.model_dump(include=set(FunctionConfig.model_fields)),
                    name=name,
                    version=version,
                    image=image,
                    has_dependencies=has_dependencies,
                )
                try:
                    sha = hashlib.sha256(code).hexdigest()
                    await self.store.add_version(spec, code, sha, create=create)
                except BaseException:
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
        self._locks.pop(name, None)
