"""A Node.js function's npm dependencies: read from its package.json, resolved on the host.

`npm install --omit=dev --ignore-scripts` runs on the host (containers here cannot reach
the registry, and builds run with networking off) into a folder of the dependency cache,
keyed by what decides the result (cache_key), which becomes the image's dependency layer
(/opt/kapal/deps/node_modules, found through the runtime image's /opt/kapal/node_modules
link). Install scripts are not run: they would run on the host, as the gateway's user.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from scheduler.errors import BuildFailed

NPM_TIMEOUT_S = 600
# Bumped when the way dependencies are resolved changes (cached folders then differ).
RESOLVER_VERSION = "npm/1"
# What npm needs from the function's folder to resolve exactly what it declares.
MANIFESTS = ("package.json", "package-lock.json", "npm-shrinkwrap.json", ".npmrc")


class InvalidPackageJson(ValueError):
    """package.json is not what npm could read; says why."""


def dependencies(code_dir: Path) -> dict[str, str]:
    """The `dependencies` of the function's package.json ({} when it has none or no file)."""
    path = code_dir / "package.json"
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidPackageJson(f"package.json is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise InvalidPackageJson("package.json must hold a JSON object")
    deps = manifest.get("dependencies") or {}
    if not isinstance(deps, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in deps.items()
    ):
        raise InvalidPackageJson("package.json dependencies must map names to version strings")
    return deps


def cache_key(code_dir: Path) -> str:
    """What a resolved node_modules depends on: the dependencies and overrides of
    package.json, the lock files and .npmrc (not the rest: a code-only change, or a new
    version number, reuses the folder)."""
    manifest = json.loads((code_dir / "package.json").read_text(encoding="utf-8"))
    inputs = {
        "resolver": RESOLVER_VERSION,
        "dependencies": manifest.get("dependencies"),
        "optional": manifest.get("optionalDependencies"),
        "overrides": manifest.get("overrides"),
        "files": {
            name: (code_dir / name).read_text(encoding="utf-8", errors="replace")
            for name in MANIFESTS[1:]
            if (code_dir / name).is_file()
        },
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def npm_argv(npm: str) -> list[str]:
    return [
        npm,
        "install",
        "--omit=dev",
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
        "--no-update-notifier",
        "--loglevel=error",
    ]


async def resolve_dependencies(code_dir: Path, deps_dir: Path, say: Callable[[str], None]) -> None:
    """Install the package.json dependencies of `code_dir` into `deps_dir`/node_modules."""
    npm = shutil.which("npm")
    if npm is None:
        raise BuildFailed("package.json has dependencies, but npm is not installed on the host")
    say("resolving package.json on the host with npm")
    with tempfile.TemporaryDirectory(prefix="kapal-npm-") as tmp:
        work = Path(tmp)
        for name in MANIFESTS:
            if (code_dir / name).is_file():
                shutil.copy2(code_dir / name, work / name)
        # npm's cache and config stay in the temporary folder, not the gateway user's home.
        env = {**os.environ, "npm_config_cache": str(work / ".cache"), "HOME": str(work)}
        proc = await asyncio.create_subprocess_exec(
            *npm_argv(npm),
            cwd=work,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), NPM_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise BuildFailed(f"npm install timed out after {NPM_TIMEOUT_S} s") from None
        lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.strip()]
        if proc.returncode != 0:
            raise BuildFailed("npm install failed: " + " | ".join(lines[-6:]))
        modules = work / "node_modules"
        if modules.is_dir():
            await asyncio.to_thread(
                shutil.copytree, modules, deps_dir / "node_modules", symlinks=True
            )
    found = (deps_dir / "node_modules").glob("*")
    installed = sorted(p.name for p in found if p.is_dir() and not p.name.startswith("."))
    say(f"node_modules: {', '.join(installed)}")
