"""Builds one image per function version: FROM the runtime's base, deps layer, code last.

Python dependencies are resolved on the host (containers here cannot verify the package
index's certificate) and copied into the build context; the build itself runs with
networking off.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker.errors
from docker import APIClient

from scheduler import npm
from scheduler.errors import BuildFailed

log = logging.getLogger("kapal.scheduler.build")

PIP_PLATFORM_TAGS = ("manylinux2014", "manylinux_2_17", "manylinux_2_28", "linux")
DOCKERFILE = """\
FROM {base}
COPY deps/ /opt/kapal/deps/
COPY function/ /opt/kapal/function/
"""

Progress = Callable[[str], None]


def image_repository(namespace: str, function: str) -> str:
    return f"{namespace}-fn/{function}"


def image_tag(namespace: str, function: str, version: int) -> str:
    return f"{image_repository(namespace, function)}:{version}"


def _pip_target_args(target: Path, requirements: Path) -> list[str]:
    machine = platform.machine()
    args = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile"]
    args += ["--disable-pip-version-check", "--target", str(target), "-r", str(requirements)]
    args += ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]
    for tag in PIP_PLATFORM_TAGS:
        args += ["--platform", f"{tag}_{machine}"]
    return args


async def _run(args: list[str], timeout_s: float) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"timed out after {timeout_s:.0f}s"
    return proc.returncode or 0, out.decode(errors="replace")


async def resolve_requirements(requirements: Path, target: Path, progress: Progress) -> None:
    """Install a function's requirements.txt into `target`, for the container's platform."""
    progress(f"resolving {requirements.name} on the host")
    code, out = await _run(_pip_target_args(target, requirements), timeout_s=600)
    if code != 0:
        # Pure-Python packages published only as sdists: build them for the host, which
        # runs the same Python minor version and libc family as the runtime image.
        progress("no binary wheels for every requirement; building on the host")
        await asyncio.to_thread(shutil.rmtree, target, True)
        args = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile"]
        args += ["--disable-pip-version-check", "--target", str(target), "-r", str(requirements)]
        code, out = await _run(args, timeout_s=600)
    if code != 0:
        lines = [ln for ln in out.splitlines() if ln.strip() and "is ignored" not in ln]
        raise BuildFailed("installing requirements.txt failed: " + " | ".join(lines[-6:]))


def _prepare_context(ctx: Path, code_dir: Path, base: str) -> bool:
    """Lay out the build context; True when the function has requirements to resolve."""
    shutil.copytree(code_dir, ctx / "function", symlinks=False)
    (ctx / "deps").mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(base=base))
    (ctx / ".dockerignore").write_text("Dockerfile\n")
    requirements = ctx / "function" / "requirements.txt"
    return requirements.is_file() and bool(requirements.read_text().strip())


def _npm_dependencies(code_dir: Path) -> dict[str, str]:
    try:
        return npm.dependencies(code_dir)
    except npm.InvalidPackageJson as e:
        raise BuildFailed(str(e)) from None


class ImageBuilder:
    def __init__(self, api: APIClient, namespace: str, base_images: dict[str, str]):
        self.api = api
        self.namespace = namespace
        self.base_images = base_images

    async def build(
        self,
        function: str,
        version: int,
        runtime: str,
        code_dir: Path,
        progress: Progress | None = None,
    ) -> str:
        """Build the image of one version from an unpacked code folder; returns its tag."""
        say: Progress = progress or (lambda line: None)
        base = self.base_images.get(runtime)
        if base is None:
            raise BuildFailed(f"unknown runtime {runtime!r}")
        tag = image_tag(self.namespace, function, version)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="kapal-build-") as tmp:
            ctx = Path(tmp)
            has_requirements = await asyncio.to_thread(_prepare_context, ctx, code_dir, base)
            if runtime == "nodejs":
                if await asyncio.to_thread(_npm_dependencies, ctx / "function"):
                    await npm.resolve_dependencies(ctx / "function", ctx / "deps", say)
            elif has_requirements:
                await resolve_requirements(ctx / "function" / "requirements.txt", ctx / "deps", say)
            labels = {
                "kapal.managed": "true",
                "kapal.namespace": self.namespace,
                "kapal.function": function,
                "kapal.version": str(version),
            }
            say(f"building image {tag} from {base}")
            await asyncio.to_thread(self._build, ctx, tag, labels, say)
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

    def _build(self, ctx: Path, tag: str, labels: dict[str, str], say: Progress) -> None:
        try:
            stream = self.api.build(
                path=str(ctx),
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
