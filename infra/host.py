"""Facts about this host and the Debian packages it is missing."""

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from infra.errors import InfraError

Log = Callable[[str], None]

_apt_updated = False


def is_root() -> bool:
    return os.geteuid() == 0


def is_debian() -> bool:
    return Path("/etc/debian_version").exists() and shutil.which("apt-get") is not None


def missing_packages(wanted: Mapping[str, str]) -> list[str]:
    """Debian packages to install for the `command -> package` pairs not on PATH."""
    missing = {pkg for cmd, pkg in wanted.items() if shutil.which(cmd) is None}
    return sorted(missing)


def ensure_commands(wanted: Mapping[str, str], log: Log = print) -> None:
    """Install the Debian package of every command in `wanted` that is not on PATH."""
    packages = missing_packages(wanted)
    if not packages:
        return
    if not (is_root() and is_debian()):
        raise InfraError(
            f"missing commands {sorted(wanted)}: install the packages {packages} "
            "(apt-get install needs root on Debian), then run again"
        )
    _apt_install(packages, log)


def _apt_install(packages: list[str], log: Log) -> None:
    global _apt_updated
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        log("apt-get update")
        _run(["apt-get", "update", "-q"], env)
        _apt_updated = True
    log(f"apt-get install -y {' '.join(packages)}")
    _run(["apt-get", "install", "-y", "-q", *packages], env)


def _run(argv: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise InfraError(f"{' '.join(argv)} failed with exit code {result.returncode}")
