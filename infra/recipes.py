"""What the base images are made of, and the hashes that say when to remake them.

Pure: nothing here talks to Docker or the network, so the hashing is unit-tested.
"""

import hashlib
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from infra.errors import InfraError

OS_IMAGE = "kapal/os-python:bookworm"
RUNTIME_REPO = "kapal/runtime-python"
# Also kept on the image made last, for people who start a gateway by hand; Kapal's own
# set-up, tests and benchmarks name the image by its inputs (runtime_tag), so checkouts of
# different runtimes on one engine never swap each other's image mid-run.
RUNTIME_IMAGE = f"{RUNTIME_REPO}:latest"
# Base runtime images kept besides the current one (other checkouts may still use them).
RUNTIME_IMAGES_KEPT = 3
INPUTS_LABEL = "kapal.inputs"  # sha256 of everything an image was made from
BASE_LABEL = "kapal.base"  # marks Kapal's base images, so stale ones can be found

# Bump a version to force a rebuild when the recipe changes in a way its text does not show.
OS_RECIPE_VERSION = "os-python/1"
RUNTIME_RECIPE_VERSION = "runtime-python/1"

PULL_SOURCE = "python:3.11-slim"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_INCLUDE = ("python3", "ca-certificates")
IMPORT_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)

# The in-container runtime needs only aiohttp; its wheels are resolved on the host.
RUNTIME_REQUIREMENTS = ("aiohttp>=3.9,<4", "uvloop>=0.19,<1")
RUNTIME_PYTHON = "3.11"
RUNTIME_USER = "10001:10001"

_SKIPPED_DIRS = frozenset({"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"})
_SKIPPED_SUFFIXES = frozenset({".pyc", ".pyo"})

RUNTIME_DOCKERFILE = f"""\
FROM {OS_IMAGE}
COPY runtime/ /opt/kapal/runtime/
COPY site/ /opt/kapal/runtime/site/
RUN python3 -m compileall -q /opt/kapal/runtime \\
 && mkdir -p /opt/kapal/function /opt/kapal/deps
ENV PYTHONPATH=/opt/kapal/runtime:/opt/kapal/runtime/site:/opt/kapal/deps:/opt/kapal/function \\
    PYTHONUNBUFFERED=1 \\
    PYTHONDONTWRITEBYTECODE=1 \\
    HOME=/tmp
WORKDIR /opt/kapal/function
USER {RUNTIME_USER}
EXPOSE 8080
CMD ["python3", "-m", "kapal_runtime"]
"""


@dataclass(frozen=True)
class OsRecipe:
    """One OS layer: an image pulled when a registry answers, else made with debootstrap."""

    image: str
    # Bumped to force a rebuild when the recipe changes in a way its text does not show.
    version: str
    pull_source: str
    include: tuple[str, ...]
    changes: tuple[str, ...]


PYTHON_OS = OsRecipe(OS_IMAGE, OS_RECIPE_VERSION, PULL_SOURCE, DEBIAN_INCLUDE, IMPORT_CHANGES)

# Node.js gets an OS layer of its own rather than joining Python's: Python's images (and
# their hash) stay as they are, and neither runtime carries the other's interpreter.
# Debian's nodejs (18 in bookworm) brings libnode, libuv and ICU; no npm: dependencies are
# resolved on the host.
NODEJS_OS = OsRecipe(
    "kapal/os-nodejs:bookworm",
    "os-nodejs/1",
    "node:18-bookworm-slim",
    ("nodejs", "ca-certificates"),
    (
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        'CMD ["node"]',
    ),
)
NODEJS_RUNTIME_REPO = "kapal/runtime-nodejs"
NODEJS_RUNTIME_RECIPE_VERSION = "runtime-nodejs/1"
# The function's npm dependencies go to /opt/kapal/deps/node_modules (a layer of the
# function's image, or unpacked by /_/init); the link makes Node's own lookup, which walks
# up from /opt/kapal/function, find them for require() and import alike.
NODEJS_RUNTIME_DOCKERFILE = f"""\
FROM {NODEJS_OS.image}
COPY runtime/ /opt/kapal/runtime/
RUN mkdir -p /opt/kapal/function /opt/kapal/deps \\
 && ln -s deps/node_modules /opt/kapal/node_modules
ENV NODE_ENV=production \\
    HOME=/tmp
WORKDIR /opt/kapal/function
USER {RUNTIME_USER}
EXPOSE 8080
CMD ["node", "/opt/kapal/runtime/main.js"]
"""


def wheel_arch(machine: str | None = None) -> str:
    """The manylinux architecture name of this host (x86_64 or aarch64)."""
    machine = (machine or platform.machine()).lower()
    arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
    if machine not in arch:
        raise InfraError(f"unsupported CPU architecture {machine!r}: need x86_64 or aarch64")
    return arch[machine]


def runtime_files(runtime_dir: Path) -> Iterator[Path]:
    """The runtime's files that go into the image, in a stable order; caches left out."""
    for path in sorted(runtime_dir.rglob("*")):
        relative = path.relative_to(runtime_dir)
        if _SKIPPED_DIRS.intersection(relative.parts) or path.suffix in _SKIPPED_SUFFIXES:
            continue
        if path.is_file():
            yield path


def os_inputs_hash(arch: str, recipe: OsRecipe = PYTHON_OS) -> str:
    parts = [
        recipe.version,
        arch,
        recipe.pull_source,
        DEBIAN_SUITE,
        DEBIAN_MIRROR,
        *recipe.include,
        *recipe.changes,
    ]
    return _sha256_of_parts(parts)


def runtime_inputs_hash(runtime_dir: Path, arch: str) -> str:
    """Changes exactly when the runtime image would come out different."""
    digest = hashlib.sha256()
    head = [
        RUNTIME_RECIPE_VERSION,
        os_inputs_hash(arch),
        arch,
        RUNTIME_PYTHON,
        *RUNTIME_REQUIREMENTS,
        RUNTIME_DOCKERFILE,
    ]
    digest.update(_sha256_of_parts(head).encode())
    hash_files(digest, runtime_dir)
    return digest.hexdigest()


def nodejs_inputs_hash(runtime_dir: Path, arch: str) -> str:
    """runtime_inputs_hash for the Node.js runtime (no packages of its own to resolve)."""
    digest = hashlib.sha256()
    head = [
        NODEJS_RUNTIME_RECIPE_VERSION,
        os_inputs_hash(arch, NODEJS_OS),
        arch,
        NODEJS_RUNTIME_DOCKERFILE,
    ]
    digest.update(_sha256_of_parts(head).encode())
    hash_files(digest, runtime_dir)
    return digest.hexdigest()


def hash_files(digest: "hashlib._Hash", runtime_dir: Path) -> None:
    """Feed every file of `runtime_dir` (runtime_files), by relative name, to `digest`."""
    for path in runtime_files(runtime_dir):
        data = path.read_bytes()
        name = path.relative_to(runtime_dir).as_posix().encode()
        digest.update(b"%d:%s%d:" % (len(name), name, len(data)))
        digest.update(data)


def runtime_tag(inputs: str, repo: str = RUNTIME_REPO) -> str:
    """The tag of the runtime image made from `inputs` (a runtime_inputs_hash)."""
    return f"{repo}:{inputs[:16]}"


def pip_target_argv(
    python: str, target: Path, arch: str, requirements_file: Path | None
) -> list[str]:
    """pip resolving the runtime's wheels for the image's Python, run on the host."""
    argv = [
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--target",
        str(target),
        "--only-binary=:all:",
        "--no-compile",
        "--python-version",
        RUNTIME_PYTHON,
        "--implementation",
        "cp",
    ]
    for tag in ("manylinux2014", "manylinux_2_17", "manylinux_2_28"):
        argv += ["--platform", f"{tag}_{arch}"]
    argv += list(RUNTIME_REQUIREMENTS)
    if requirements_file is not None:
        argv += ["--requirement", str(requirements_file)]
    return argv


def _sha256_of_parts(parts: list[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode()
        digest.update(b"%d:" % len(data))
        digest.update(data)
    return digest.hexdigest()
