"""The /_/init payload: its JSON shape, and unpacking code and dependency archives safely.

Archives are checked whole before anything is written, so a refused init leaves the
container untouched and still prewarm.
"""

import base64
import binascii
import contextlib
import copy
import hashlib
import importlib
import io
import json
import os
import posixpath
import tarfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kapal_runtime.config import DEFAULT_HANDLER, STYLES
from kapal_runtime.handler import parse_spec

# Written in the code folder once unpacked: the archives' digest.
INSTALLED_MARKER = ".kapal-installed"

# Python 3.11.4+ and 3.12 have extraction filters; Debian 12's 3.11.2 does not.
_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")


class InvalidInit(ValueError):
    """The init body or one of its archives is refused; nothing was written."""


@dataclass(frozen=True, slots=True)
class InitSpec:
    # Function name and version, for `context` and KAPAL_FUNCTION / KAPAL_VERSION.
    function: str
    version: int
    # "module.function" inside the code.
    handler: str
    # Environment variables set before the handler is imported.
    env: dict[str, str]
    # A tar archive (gzip or not) of the function folder; None when the code is already
    # in place (a mount prepared in advance).
    code: bytes | None
    # A tar archive of a site-packages directory, if the function has dependencies.
    deps: bytes | None
    # Invocations in flight at once (0: unlimited); None keeps KAPAL_CONCURRENCY's value.
    concurrency: int | None = None
    # The handler's convention (config.STYLES); None: detected.
    style: str | None = None


def parse_init(raw: bytes) -> InitSpec:
    """Validate an init body:
    {"function": str, "version": int, "handler": str, "env": {str: str},
     "code": base64 tar.gz, "deps": base64 tar.gz, "concurrency": int (optional),
     "style": one of config.STYLES (optional)}.
    """
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidInit(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidInit("body must be a JSON object")
    function = body.get("function")
    if not isinstance(function, str) or not function:
        raise InvalidInit("function must be a non-empty string")
    version = body.get("version")
    if type(version) is not int or version < 0:
        raise InvalidInit(f"version must be a non-negative integer, not {version!r}")
    handler = body.get("handler") or DEFAULT_HANDLER
    if not isinstance(handler, str):
        raise InvalidInit("handler must be a string")
    try:
        parse_spec(handler)
    except ValueError as exc:
        raise InvalidInit(str(exc)) from None
    style = body.get("style")
    if style is not None and style not in STYLES:
        raise InvalidInit(f"style must be one of {', '.join(STYLES)}, not {style!r}")
    concurrency = body.get("concurrency")
    if concurrency is not None and (type(concurrency) is not int or concurrency < 0):
        raise InvalidInit(f"concurrency must be a non-negative integer, not {concurrency!r}")
    return InitSpec(
        function=function,
        version=version,
        handler=handler,
        env=_env(body.get("env")),
        code=_archive(body, "code"),
        deps=_archive(body, "deps"),
        concurrency=concurrency,
        style=style,
    )


def _env(env: Any) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise InvalidInit("env must be an object of strings")
    for key, value in env.items():
        if not key or "=" in key or "\0" in key:
            raise InvalidInit(f"env name {key!r} is not valid")
        if not isinstance(value, str) or "\0" in value:
            raise InvalidInit(f"env {key} must be a string without NUL")
    return env


def _archive(body: dict[str, Any], key: str) -> bytes | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInit(f"{key} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise InvalidInit(f"{key} is not valid base64: {exc}") from None


def preload_unpacking() -> None:
    """Import, in a prewarmed container, what its first /_/init would: tarfile imports
    gzip on first use (about half a millisecond, measured, of the request a cold start
    waits for). Not at every start: a container started for its function never unpacks."""
    importlib.import_module("gzip")


def install(spec: InitSpec, code_dir: Path, deps_dir: Path) -> None:
    """Check both archives, then unpack them. InvalidInit means nothing was written.

    A worker forked in a container whose first worker already unpacked the same archives
    (zygote.py) finds them in place, marked, and unpacks nothing."""
    marker = code_dir / INSTALLED_MARKER
    digest = _digest(spec)
    with contextlib.suppress(OSError):
        if marker.read_text() == digest:
            return
    _unpack(spec, code_dir, deps_dir)
    with contextlib.suppress(OSError):
        marker.write_text(digest)


def _digest(spec: InitSpec) -> str:
    h = hashlib.sha256()
    for data in (spec.code, spec.deps):
        h.update(hashlib.sha256(data or b"").digest())
    return h.hexdigest()


def _unpack(spec: InitSpec, code_dir: Path, deps_dir: Path) -> None:
    wanted = [("code", spec.code, code_dir), ("deps", spec.deps, deps_dir)]
    with ExitStack() as stack:
        archives = [
            (stack.enter_context(_open(what, data)), dest, what)
            for what, data, dest in wanted
            if data is not None
        ]
        for tar, dest, what in archives:
            check_members(tar.getmembers(), dest, what)
        for tar, dest, _ in archives:
            _extract(tar, dest)


def _open(what: str, data: bytes) -> tarfile.TarFile:
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        tar.getmembers()  # reads the whole archive: a truncated one fails here, not midway
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidInit(f"{what} is not a valid tar archive: {exc}") from None
    return tar


def check_members(members: list[tarfile.TarInfo], dest: Path, what: str) -> None:
    """Refuse absolute paths, paths escaping `dest`, links pointing out of it, paths that
    go through a link of the archive, and anything but files, directories and links."""
    root = os.path.realpath(dest)
    links = {posixpath.normpath(m.name) for m in members if m.issym() or m.islnk()}
    for member in members:
        name = member.name
        problem = None
        normal = posixpath.normpath(name)
        if name.startswith("/") or os.path.isabs(name):
            problem = "is an absolute path"
        elif not _inside(root, os.path.join(root, normal)):
            problem = "escapes the target directory"
        elif not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            problem = "is not a regular file, directory or link"
        elif any(parent in links for parent in _parents(normal)):
            problem = "goes through a link"
        elif member.issym():
            target = member.linkname
            if target.startswith("/") or not _inside(
                root, os.path.join(root, posixpath.dirname(normal), target)
            ):
                problem = f"links outside the target directory ({target})"
        elif member.islnk() and not _inside(root, os.path.join(root, member.linkname)):
            problem = f"links outside the target directory ({member.linkname})"
        if problem is not None:
            raise InvalidInit(f"{what} archive member {name!r} {problem}")


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _inside(root: str, path: str) -> bool:
    # realpath also follows links already on disk, so an existing link cannot be used.
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


def _extract(tar: tarfile.TarFile, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if _HAS_DATA_FILTER:
        tar.extractall(dest, filter="data")
        return
    tar.extractall(dest, members=[_sanitized(m) for m in tar.getmembers()])


def _sanitized(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """What the "data" filter does, for Pythons without it: no set-id bits, no group or
    other write, owner can read and write, files owned by whoever unpacks them."""
    safe = copy.copy(member)
    safe.mode = (member.mode & 0o755) | (0o700 if member.isdir() else 0o600)
    safe.uid, safe.gid = os.getuid(), os.getgid()
    safe.uname = safe.gname = ""
    return safe
