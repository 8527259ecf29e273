"""The OS layers (Python or Node.js on Debian), pulled when a registry answers, else made offline.

Offline means a Debian root filesystem made with debootstrap from the Debian mirror,
trimmed, and imported with `docker import` (streamed: the tarball is never held whole).
"""

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

import docker
import requests
from docker.errors import DockerException

from infra import host
from infra.errors import InfraError
from infra.imagestore import api_timeout, build, image_id, image_labels, remove_if_unused
from infra.recipes import (
    BASE_LABEL,
    DEBIAN_MIRROR,
    DEBIAN_SUITE,
    INPUTS_LABEL,
    PYTHON_OS,
    OsRecipe,
    os_inputs_hash,
)

PULL_TIMEOUT = 20
IMPORT_TIMEOUT = 900
_CHUNK = 1 << 20
# Per-package lines of debootstrap ("I: Unpacking libc6..."); the rest is worth showing.
_PACKAGE_LINE = re.compile(r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) [a-z0-9]")
_TRIMMED = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/log",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
)


def ensure_os_image(
    client: docker.DockerClient, arch: str, log: host.Log = print, recipe: OsRecipe = PYTHON_OS
) -> str:
    """`recipe.image` (`kapal/os-python:bookworm`, ...), made unless its recipe hash label
    matches; its image id."""
    inputs = os_inputs_hash(arch, recipe)
    current = image_id(client, recipe.image)
    if (
        current is not None
        and (image_labels(client, recipe.image) or {}).get(INPUTS_LABEL) == inputs
    ):
        return current
    labels = {INPUTS_LABEL: inputs, BASE_LABEL: "true"}
    new = _from_registry(client, recipe, labels, log) or _from_debootstrap(
        client, recipe, labels, log
    )
    remove_if_unused(client, current, new, log)
    return new


def _from_registry(
    client: docker.DockerClient, recipe: OsRecipe, labels: dict[str, str], log: host.Log
) -> str | None:
    repository, tag = recipe.pull_source.split(":")
    log(f"os layer: trying docker pull {recipe.pull_source}")
    try:
        with api_timeout(client, PULL_TIMEOUT):
            client.api.pull(repository, tag=tag)
    except (DockerException, requests.RequestException) as err:
        log(f"os layer: pull failed ({_first_line(err)}); building from Debian packages")
        return None
    with tempfile.TemporaryDirectory(prefix="kapal-os-") as context:
        (Path(context) / "Dockerfile").write_text(f"FROM {recipe.pull_source}\n")
        return build(client, Path(context), recipe.image, labels, log)


def _from_debootstrap(
    client: docker.DockerClient, recipe: OsRecipe, labels: dict[str, str], log: host.Log
) -> str:
    host.ensure_commands({"debootstrap": "debootstrap"}, log)
    if not host.is_root():
        raise InfraError("debootstrap needs root: run this as root, or make the image elsewhere")
    workdir = Path(tempfile.mkdtemp(prefix="kapal-rootfs-"))
    rootfs = workdir / "rootfs"
    try:
        started = time.monotonic()
        _debootstrap(rootfs, recipe.include, workdir / "debootstrap.log", log)
        log(f"os layer: debootstrap took {time.monotonic() - started:.0f} s; trimming")
        _trim(rootfs)
        log("os layer: importing the root filesystem")
        new = import_rootfs(client, rootfs, recipe.image, recipe.changes, labels)
        log(f"os layer: imported {recipe.image} ({new[:19]})")
        return new
    finally:
        remove_tree(workdir)


def _debootstrap(rootfs: Path, include: tuple[str, ...], log_file: Path, log: host.Log) -> None:
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(include)}",
        DEBIAN_SUITE,
        str(rootfs),
        DEBIAN_MIRROR,
    ]
    log(f"os layer: {' '.join(argv)}")
    with log_file.open("w") as full_log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        for line in process.stdout:
            full_log.write(line)
            if not _PACKAGE_LINE.match(line):
                log(f"  {line.rstrip()}")
        code = process.wait()
    if code != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
        raise InfraError(f"debootstrap failed with exit code {code}:\n{tail}")


def _trim(rootfs: Path) -> None:
    """Drop what a function never needs: package lists, docs, logs, most locales."""
    for relative in _TRIMMED:
        _empty_dir(rootfs / relative)
    for backup in [*rootfs.glob("var/cache/debconf/*-old"), *rootfs.glob("var/lib/dpkg/*-old")]:
        backup.unlink()
    locales = rootfs / "usr/share/locale"
    if locales.is_dir():
        for entry in locales.iterdir():
            if entry.is_dir() and not entry.name.startswith("C"):
                shutil.rmtree(entry)
    # Byte code outside the interpreter's own library; the stdlib's is kept, since
    # compiling it at every cold start costs more than the bytes do.
    for cache in list(rootfs.rglob("__pycache__")):
        if not cache.relative_to(rootfs).as_posix().startswith("usr/lib/python3"):
            shutil.rmtree(cache)


def _empty_dir(path: Path) -> None:
    """Remove the files below `path`, keeping the directories (packages expect them)."""
    if path.is_dir():
        for entry in path.rglob("*"):
            if entry.is_file() or entry.is_symlink():
                entry.unlink()


def import_rootfs(
    client: docker.DockerClient,
    rootfs: Path,
    image: str,
    changes: Sequence[str],
    labels: Mapping[str, str],
) -> str:
    """`docker import` a root filesystem folder as `image` (streamed); its image id."""
    changes = [*changes, *(f"LABEL {key}={value}" for key, value in labels.items())]
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    assert tar.stdout is not None
    try:
        repository, tag = image.split(":")
        with api_timeout(client, IMPORT_TIMEOUT):
            client.api.import_image(
                src=_chunks(tar.stdout),
                stream_src=True,
                repository=repository,
                tag=tag,
                changes=changes,
            )
    finally:
        tar.stdout.close()
        code = tar.wait()
    if code != 0:
        raise InfraError(f"tar of the root filesystem failed with exit code {code}")
    new = image_id(client, image)
    if new is None:
        raise InfraError(f"docker import did not produce {image}")
    return new


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk


def remove_tree(workdir: Path) -> None:
    """Delete a folder made by root (a root filesystem, a node's engine data), never
    through a mount left inside it."""
    mounts = _mounts_below(workdir)
    for mount in sorted(mounts, reverse=True):
        subprocess.run(["umount", "--lazy", mount], check=False)
    if _mounts_below(workdir):
        raise InfraError(f"mounts remain below {workdir}; unmount them, then delete it by hand")
    shutil.rmtree(workdir, ignore_errors=True)


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path) + "/"
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target.startswith(prefix):
            found.append(target)
    return found


def _first_line(err: Exception) -> str:
    text = str(getattr(err, "explanation", None) or err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
