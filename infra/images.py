"""Kapal's base runtime images; function images are built FROM these tags."""

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
from docker.errors import APIError

from infra.errors import InfraError
from infra.host import Log
from infra.imagestore import build, image_labels
from infra.recipes import (
    BASE_LABEL,
    INPUTS_LABEL,
    NODEJS_OS,
    NODEJS_RUNTIME_DOCKERFILE,
    NODEJS_RUNTIME_REPO,
    RUNTIME_DOCKERFILE,
    RUNTIME_IMAGE,
    RUNTIME_IMAGES_KEPT,
    RUNTIME_REPO,
    RUNTIME_REQUIREMENTS,
    nodejs_inputs_hash,
    pip_target_argv,
    runtime_files,
    runtime_inputs_hash,
    runtime_tag,
    wheel_arch,
)
from infra.rootfs import ensure_os_image

RUNTIME_NAME = "python"
NODEJS_NAME = "nodejs"


def ensure_base_images(
    client: docker.DockerClient, repo_root: Path, log: Log = print
) -> dict[str, str]:
    """Make every base runtime image whose inputs changed; runtime name -> image tag.

    The tag names the inputs, so a checkout always gets the runtime it holds, even while
    another checkout on the same engine builds a different one.
    """
    return {
        RUNTIME_NAME: _ensure_python(client, repo_root, log),
        NODEJS_NAME: _ensure_nodejs(client, repo_root, log),
    }


def _ensure_python(client: docker.DockerClient, repo_root: Path, log: Log) -> str:
    runtime_dir = repo_root / "runtimes" / "python"
    if not (runtime_dir / "kapal_runtime").is_dir():
        raise InfraError(
            f"{runtime_dir / 'kapal_runtime'} is missing: the Python runtime is needed"
        )
    arch = wheel_arch()
    inputs = runtime_inputs_hash(runtime_dir, arch)
    tag = runtime_tag(inputs)
    if (image_labels(client, tag) or {}).get(INPUTS_LABEL) == inputs:
        return tag
    started = time.monotonic()
    ensure_os_image(client, arch, log)
    log(f"runtime layer: building {tag}")
    with tempfile.TemporaryDirectory(prefix="kapal-runtime-") as tmp:
        context = Path(tmp)
        _copy_runtime(runtime_dir, context / "runtime")
        install_site(context / "site", arch, runtime_dir / "requirements.txt", log)
        (context / "Dockerfile").write_text(RUNTIME_DOCKERFILE)
        build(client, context, tag, {INPUTS_LABEL: inputs, BASE_LABEL: "true"}, log)
    client.images.get(tag).tag(RUNTIME_IMAGE)
    _prune_runtime_images(client, RUNTIME_REPO, keep=tag, log=log)
    log(f"runtime layer: {tag} ready in {time.monotonic() - started:.1f} s")
    return tag


def _ensure_nodejs(client: docker.DockerClient, repo_root: Path, log: Log) -> str:
    """The Node.js runtime: plain files on Debian's nodejs, nothing to resolve."""
    runtime_dir = repo_root / "runtimes" / "nodejs"
    if not (runtime_dir / "main.js").is_file():
        raise InfraError(f"{runtime_dir / 'main.js'} is missing: the Node.js runtime is needed")
    arch = wheel_arch()
    inputs = nodejs_inputs_hash(runtime_dir, arch)
    tag = runtime_tag(inputs, NODEJS_RUNTIME_REPO)
    if (image_labels(client, tag) or {}).get(INPUTS_LABEL) == inputs:
        return tag
    started = time.monotonic()
    ensure_os_image(client, arch, log, NODEJS_OS)
    log(f"runtime layer: building {tag}")
    with tempfile.TemporaryDirectory(prefix="kapal-runtime-") as tmp:
        context = Path(tmp)
        _copy_runtime(runtime_dir, context / "runtime")
        (context / "Dockerfile").write_text(NODEJS_RUNTIME_DOCKERFILE)
        build(client, context, tag, {INPUTS_LABEL: inputs, BASE_LABEL: "true"}, log)
    latest = f"{NODEJS_RUNTIME_REPO}:latest"
    client.images.get(tag).tag(latest)
    _prune_runtime_images(client, NODEJS_RUNTIME_REPO, keep=tag, log=log)
    log(f"runtime layer: {tag} ready in {time.monotonic() - started:.1f} s")
    return tag


def _prune_runtime_images(client: docker.DockerClient, repo: str, keep: str, log: Log) -> None:
    """Untag the oldest runtime images of `repo` past RUNTIME_IMAGES_KEPT; the engine
    removes each one whose last tag went, unless a container or a function image uses it."""
    latest = f"{repo}:latest"
    images = client.images.list(name=repo, filters={"label": BASE_LABEL})
    images.sort(key=lambda image: str(image.attrs.get("Created", "")), reverse=True)
    for image in images[RUNTIME_IMAGES_KEPT + 1 :]:
        if keep in image.tags or latest in image.tags:
            continue
        for ref in image.tags:
            try:
                client.images.remove(ref, noprune=False)
            except APIError as err:
                if err.status_code != 409:  # 409: a container still runs it
                    raise
                log(f"kept {ref}: still in use")
            else:
                log(f"removed the old runtime image {ref}")


def _copy_runtime(runtime_dir: Path, target: Path) -> None:
    for path in runtime_files(runtime_dir):
        destination = target / path.relative_to(runtime_dir)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)


def install_site(
    site: Path, arch: str, requirements: Path, log: Log, what: str = "runtime layer"
) -> None:
    """Resolve an image's wheels on the host: inside a build there is no network."""
    extra = requirements if requirements.is_file() else None
    wanted = " ".join(RUNTIME_REQUIREMENTS) + (f" -r {extra.name}" if extra else "")
    log(f"{what}: pip install --target site {wanted} (cp311, manylinux {arch})")
    site.mkdir()
    argv = pip_target_argv(sys.executable, site, arch, extra)
    result = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    # This host's pip warns about every configured index location it skips; noise.
    noise = [line for line in (result.stdout + result.stderr).splitlines() if "is ignored" in line]
    output = [line for line in (result.stdout + result.stderr).splitlines() if line not in noise]
    if result.returncode != 0:
        raise InfraError(f"pip could not resolve the {what}'s packages:\n" + "\n".join(output))
    installed = sorted(p.name for p in site.glob("*.dist-info"))
    log(f"{what}: site has {', '.join(n.removesuffix('.dist-info') for n in installed)}")
