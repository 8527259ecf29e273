"""Builds one image per function version: FROM the runtime's base, deps layer, code last.

Dependencies are resolved on the host (containers here cannot verify the package index's
certificate) into the dependency cache, and sent to the engine with the code as the
build context; the build itself runs with networking off. Requirements that did not
change give the same cached folder, so the dependency layer comes from Docker's build
cache and only the code layer is new.
"""

from __future__ import annotations

import asyncio
import io
import logging
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

import docker.errors
from docker import APIClient

from scheduler import npm, pydeps
from scheduler.depcache import DependencyCache, Entry, trim_files
from scheduler.errors import BuildFailed

log = logging.getLogger("kapal.scheduler.build")

DOCKERFILE = """\
FROM {base}
COPY deps/ /opt/kapal/deps/
COPY function/ /opt/kapal/function/
"""

Progress = Callable[[str], None]
# Told which dependency folder a build uses, before the image is built.
OnDependencies = Callable[[Entry], None]


def image_repository(namespace: str, function: str) -> str:
    return f"{namespace}-fn/{function}"


def image_tag(namespace: str, function: str, version: int) -> str:
    return f"{image_repository(namespace, function)}:{version}"


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def build_context(base: str, code_dir: Path, deps_dir: Path | None) -> IO[bytes]:
    """The build context as a tar file, the cached dependency folder read in place."""
    context = tempfile.TemporaryFile(prefix="kapal-context-")
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = DOCKERFILE.format(base=base).encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size, info.mode = len(dockerfile), 0o644
        tar.addfile(info, io.BytesIO(dockerfile))
        if deps_dir is None:
            empty = tarfile.TarInfo("deps")
            empty.type, empty.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(empty)
        else:
            tar.add(deps_dir, arcname="deps", filter=_root_owned)
        tar.add(code_dir, arcname="function", filter=_root_owned)
    context.seek(0)
    return context


def _npm_dependencies(code_dir: Path) -> dict[str, str]:
    try:
        return npm.dependencies(code_dir)
    except npm.InvalidPackageJson as e:
        raise BuildFailed(str(e)) from None


class ImageBuilder:
    def __init__(
        self,
        api: APIClient,
        namespace: str,
        base_images: dict[str, str],
        dependencies: DependencyCache,
        python_target: pydeps.Target | None = None,
    ):
        self.api = api
        self.namespace = namespace
        self.base_images = base_images
        self.dependencies = dependencies
        self.python_target = python_target or pydeps.Target()
        # pip's own cache of downloaded and built wheels, beside the resolved folders.
        self.pip_cache = dependencies.root / "pip"

    async def build(
        self,
        function: str,
        version: int,
        runtime: str,
        code_dir: Path,
        progress: Progress | None = None,
        on_dependencies: OnDependencies | None = None,
    ) -> str:
        """Build the image of one version from an unpacked code folder; returns its tag."""
        say: Progress = progress or (lambda line: None)
        base = self.base_images.get(runtime)
        if base is None:
            raise BuildFailed(f"unknown runtime {runtime!r}")
        tag = image_tag(self.namespace, function, version)
        started = time.monotonic()
        labels = {
            "kapal.managed": "true",
            "kapal.namespace": self.namespace,
            "kapal.function": function,
            "kapal.version": str(version),
        }
        async with self._dependencies(runtime, code_dir, say) as deps:
            if deps is not None:
                labels["kapal.deps"] = deps.key
                if on_dependencies is not None:
                    on_dependencies(deps)
            say(f"building image {tag} from {base}")
            deps_dir = None if deps is None else deps.path
            await asyncio.to_thread(self._build, base, code_dir, deps_dir, tag, labels, say)
        log.info(
            "image built",
            extra={
                "function": function,
                "version": version,
                "image": tag,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return tag

    @asynccontextmanager
    async def _dependencies(
        self, runtime: str, code_dir: Path, say: Progress
    ) -> AsyncIterator[Entry | None]:
        """The cached folder of the function's dependencies, held while the image is
        built; None when it has none."""
        packages = (
            await asyncio.to_thread(_npm_dependencies, code_dir) if runtime == "nodejs" else {}
        )
        if packages:
            async with self._node_dependencies(code_dir, say) as entry:
                yield entry
            return
        lines = pydeps.read_requirements(code_dir) if runtime == "python" else []
        if lines:
            async with self._python_dependencies(code_dir, lines, say) as entry:
                yield entry
        else:
            yield None

    @asynccontextmanager
    async def _python_dependencies(
        self, code_dir: Path, lines: list[str], say: Progress
    ) -> AsyncIterator[Entry]:
        requirements = code_dir / "requirements.txt"
        key = pydeps.cache_key(lines, self.python_target)

        async def make(into: Path) -> None:
            await pydeps.resolve(requirements, into, self.pip_cache, self.python_target, say)
            await asyncio.to_thread(trim_files, self.pip_cache, self.dependencies.max_bytes)

        async with self.dependencies.use(key, make) as entry:
            yield entry

    @asynccontextmanager
    async def _node_dependencies(self, code_dir: Path, say: Progress) -> AsyncIterator[Entry]:
        """package.json's dependencies as a node_modules folder, resolved once per key."""

        async def make(into: Path) -> None:
            await npm.resolve_dependencies(code_dir, into, say)

        async with self.dependencies.use(npm.cache_key(code_dir), make) as entry:
            yield entry

    def _build(
        self,
        base: str,
        code_dir: Path,
        deps_dir: Path | None,
        tag: str,
        labels: dict[str, str],
        say: Progress,
    ) -> None:
        try:
            with build_context(base, code_dir, deps_dir) as context:
                stream = self.api.build(
                    fileobj=context,
                    custom_context=True,
                    tag=tag,
                    labels=labels,
                    network_mode="none",
                    rm=True,
                    forcerm=True,
                    decode=True,
                )
                for chunk in stream:
                    if "error" in chunk:
                        raise BuildFailed(f"image build failed: {chunk['error'].strip()}")
                    line = str(chunk.get("stream", "")).strip()
                    if line:
                        say(line)
        except docker.errors.DockerException as e:
            raise BuildFailed(f"image build failed: {e}") from e
