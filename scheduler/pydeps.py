"""A Python function's requirements.txt: checked, keyed, and resolved on the host.

Containers here cannot verify the package index's certificate, so pip runs on the host,
for the runtime image's platform (CPython 3.11, manylinux wheels of this machine's
architecture), into a folder the image's dependency layer is copied from. The folder is
kept in the dependency cache under the hash of what decides its content: the
requirements, the target platform, and how it is made.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import platform
import re
import shutil
import sys
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from scheduler.errors import RequirementsUnresolvable

Progress = Callable[[str], None]

# Bump when how a folder is made changes in a way the inputs do not show: old entries are
# then never reused (and age out of the cache).
RESOLVER_VERSION = "pip-target/2"
RESOLVE_TIMEOUT_S = 600.0
# Debian bookworm, which the runtime image is made of, has glibc 2.36.
RUNTIME_GLIBC_MINOR = 36

_MISSING = re.compile(r"No matching distribution found for (\S+)")
_INVALID = re.compile(r"Invalid requirement: (.+)")
# pip expands ${NAME} from the host's environment in requirements files.
_ENV_REFERENCE = re.compile(r"\$\{")


def _platform_tags(machine: str) -> tuple[str, ...]:
    manylinux = [f"manylinux_2_{minor}" for minor in range(RUNTIME_GLIBC_MINOR, 16, -1)]
    legacy = ["manylinux2014", "manylinux2010", "manylinux1", "linux"]
    return tuple(f"{tag}_{machine}" for tag in [*manylinux, *legacy])


@dataclass(frozen=True)
class Target:
    """The platform a function's dependencies must run on: the runtime image's."""

    python_version: str = "3.11"
    implementation: str = "cp"
    machine: str = field(default_factory=platform.machine)

    @property
    def platforms(self) -> tuple[str, ...]:
        return _platform_tags(self.machine)

    def describe(self) -> str:
        return f"CPython {self.python_version} on manylinux {self.machine}"


def requirement_lines(text: str) -> list[str]:
    """The requirement lines that matter, comments and blank lines left out, continuations
    joined (so a reformatted file keeps its key)."""
    joined = re.sub(r"\\\r?\n", " ", text)
    lines = []
    for raw in joined.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if line:
            lines.append(" ".join(line.split()))
    return lines


def read_requirements(code_dir: Path) -> list[str]:
    """The checked requirement lines of a code folder (none without requirements.txt)."""
    path = code_dir / "requirements.txt"
    if not path.is_file():
        return []
    lines = requirement_lines(path.read_text(errors="replace"))
    check(lines)
    return lines


def check(lines: list[str]) -> None:
    """Refuse what would make pip read or send what is on the host: options (`-r`, `-c`,
    `-e`, `--index-url`, ...), local paths and file URLs, environment references."""
    for number, line in enumerate(lines, 1):
        problem = None
        if line.startswith("-"):
            problem = "pip options are not accepted, only requirements"
        elif line.startswith((".", "/", "~")) or "file:" in line.lower():
            problem = "local paths are not accepted: the code is resolved on the build host"
        elif _ENV_REFERENCE.search(line):
            problem = "environment references (${...}) are not accepted"
        elif " --" in line and not all(opt.startswith("hash") for opt in line.split(" --")[1:]):
            problem = "per-requirement options other than --hash are not accepted"
        if problem is not None:
            raise RequirementsUnresolvable(f"requirements.txt line {number} ({line!r}): {problem}")


def cache_key(lines: list[str], target: Target) -> str:
    """What a resolved folder depends on; equal keys, interchangeable folders."""
    inputs = {
        "requirements": lines,
        "python": target.python_version,
        "implementation": target.implementation,
        "platforms": target.platforms,
        "resolver": RESOLVER_VERSION,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def pip_args(requirements: Path, into: Path, cache: Path, target: Target | None) -> list[str]:
    """pip installing `requirements` into `into`; binary wheels for `target`, or (None)
    for this host, building source packages."""
    args = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile"]
    args += ["--disable-pip-version-check", "--no-input", "--cache-dir", str(cache)]
    args += ["--target", str(into), "-r", str(requirements)]
    if target is not None:
        args += ["--only-binary=:all:", "--python-version", target.python_version]
        args += ["--implementation", target.implementation]
        for tag in target.platforms:
            args += ["--platform", tag]
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
    except BaseException:
        # Cancelled (the gateway stops): pip must not go on writing into a folder that
        # is being removed.
        with suppress(ProcessLookupError):
            proc.kill()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


def _failure(out: str, target: Target) -> RequirementsUnresolvable:
    """pip's failure as the deploy's error, naming the requirement when pip does."""
    if missing := _MISSING.findall(out):
        names = ", ".join(dict.fromkeys(missing))
        return RequirementsUnresolvable(
            f"requirements.txt: cannot resolve {names}: no such package or version for "
            f"{target.describe()} (as a wheel or a source package)"
        )
    if invalid := _INVALID.findall(out):
        return RequirementsUnresolvable(f"requirements.txt: invalid requirement {invalid[0]}")
    lines = [ln for ln in out.splitlines() if ln.strip() and "is ignored" not in ln]
    return RequirementsUnresolvable(
        "requirements.txt: installing the requirements failed: " + " | ".join(lines[-6:])
    )


async def resolve(
    requirements: Path, into: Path, pip_cache: Path, target: Target, progress: Progress
) -> None:
    """Install `requirements` into the empty folder `into`, for `target`."""
    progress(f"resolving requirements.txt on the host for {target.describe()}")
    args = pip_args(requirements, into, pip_cache, target)
    code, out = await _run(args, RESOLVE_TIMEOUT_S)
    if code != 0:
        # Pure-Python packages published only as sdists: built on the host, which runs
        # the same Python minor version and libc family as the runtime image.
        progress("no binary wheels for every requirement; building on the host")
        await asyncio.to_thread(_empty, into)
        code, out = await _run(pip_args(requirements, into, pip_cache, None), RESOLVE_TIMEOUT_S)
    if code != 0:
        raise _failure(out, target)
    if sys.version_info[:2] == tuple(int(p) for p in target.python_version.split(".")):
        # Byte-code made once here, not at every cold start: the image's file system is
        # read-only. Unchecked: the files' times may change on their way into the image.
        compile_args = [sys.executable, "-m", "compileall", "-q", "-q"]
        compile_args += ["--invalidation-mode", "unchecked-hash", str(into)]
        await _run(compile_args, RESOLVE_TIMEOUT_S)


def _empty(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
