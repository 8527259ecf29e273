"""Unpacking code archives (.zip, .tar.gz) safely into a fresh folder.

Refused: paths that escape (absolute, `..`), links, devices and fifos, more files than
allowed, more unpacked bytes than allowed, and suspicious compression ratios (bombs).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from gateway.errors import InvalidArchive

CHUNK = 1 << 16
# Above this many unpacked bytes, a ratio past MAX_RATIO is taken for a bomb.
RATIO_FLOOR = 10 * 1024 * 1024
MAX_RATIO = 200


@dataclass(frozen=True)
class Limits:
    max_files: int
    max_bytes: int


def _safe_relpath(name: str) -> PurePosixPath | None:
    """The member's path inside the root, or None for the root itself; raises if unsafe."""
    if "\\" in name or "\x00" in name:
        raise InvalidArchive(f"archive entry {name!r} has a forbidden character")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise InvalidArchive(f"archive entry {name!r} is an absolute path")
    parts = [p for p in path.parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise InvalidArchive(f"archive entry {name!r} escapes the archive root")
    return PurePosixPath(*parts) if parts else None


class _Writer:
    def __init__(self, root: Path, limits: Limits, archive_size: int) -> None:
        self.root = root
        self.limits = limits
        self.archive_size = max(1, archive_size)
        self.files = 0
        self.bytes = 0

    def mkdir(self, rel: PurePosixPath) -> None:
        (self.root / rel).mkdir(mode=0o755, parents=True, exist_ok=True)

    def write(self, rel: PurePosixPath, src: IO[bytes], executable: bool) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise InvalidArchive(f"archive has more than {self.limits.max_files} files")
        dest = self.root / rel
        if dest.is_dir():
            raise InvalidArchive(f"archive entry {str(rel)!r} is both a file and a folder")
        dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with open(dest, "wb") as out:
            while chunk := src.read(CHUNK):
                self.bytes += len(chunk)
                self._check_size()
                out.write(chunk)
        dest.chmod(0o755 if executable else 0o644)

    def _check_size(self) -> None:
        if self.bytes > self.limits.max_bytes:
            raise InvalidArchive(f"archive unpacks to more than {self.limits.max_bytes} bytes")
        if self.bytes > RATIO_FLOOR and self.bytes / self.archive_size > MAX_RATIO:
            raise InvalidArchive("archive compression ratio is too high (a zip bomb?)")


def _unpack_tar(data: bytes, w: _Writer) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for member in tar:
                rel = _safe_relpath(member.name)
                if member.isdir():
                    if rel is not None:
                        w.mkdir(rel)
                    continue
                if member.issym() or member.islnk():
                    raise InvalidArchive(f"archive entry {member.name!r} is a link")
                if not member.isfile():
                    raise InvalidArchive(f"archive entry {member.name!r} is not a regular file")
                if rel is None:
                    raise InvalidArchive(f"archive entry {member.name!r} has no name")
                src = tar.extractfile(member)
                if src is None:
                    raise InvalidArchive(f"archive entry {member.name!r} cannot be read")
                w.write(rel, src, bool(member.mode & 0o111))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise InvalidArchive(f"not a valid .tar.gz archive: {e}") from e


def _unpack_zip(data: bytes, w: _Writer) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                rel = _safe_relpath(info.filename)
                mode = info.external_attr >> 16
                if info.is_dir():
                    if rel is not None:
                        w.mkdir(rel)
                    continue
                if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                    kind = "a link" if stat.S_ISLNK(mode) else "not a regular file"
                    raise InvalidArchive(f"archive entry {info.filename!r} is {kind}")
                if rel is None:
                    raise InvalidArchive(f"archive entry {info.filename!r} has no name")
                with zf.open(info) as src:
                    w.write(rel, src, bool(mode & 0o111))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, zlib.error) as e:
        raise InvalidArchive(f"not a valid .zip archive: {e}") from e
    except NotImplementedError as e:
        raise InvalidArchive(f"unsupported .zip archive: {e}") from e


def unpack(data: bytes, dest: Path, limits: Limits) -> Path:
    """Unpack `data` into the empty folder `dest`; returns the code root.

    An archive whose entries all sit in one top-level folder is unpacked from inside it.
    """
    if not data:
        raise InvalidArchive("code archive is empty")
    w = _Writer(dest, limits, len(data))
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        _unpack_zip(data, w)
    elif data[:2] == b"\x1f\x8b" or data[257:262] == b"ustar":
        _unpack_tar(data, w)
    else:
        raise InvalidArchive("code must be a .zip or .tar.gz archive")
    if w.files == 0:
        raise InvalidArchive("code archive holds no files")
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest


def check_handler(root: Path, handler: str) -> None:
    """The handler's module must be in the code: `a.b.fn` needs a/b.py or a/b/__init__.py."""
    module = handler.rsplit(".", 1)[0].split(".")
    base = root.joinpath(*module)
    if not (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()):
        raise InvalidArchive(
            f"handler {handler!r} needs {'/'.join(module)}.py in the code archive, "
            "which is not there"
        )


def check_node_handler(root: Path, handler: str) -> None:
    """A Node.js handler `path/file.export` needs path/file.js, .mjs or .cjs."""
    file = handler.rsplit(".", 1)[0]
    if not any((root / f"{file}{ext}").is_file() for ext in (".js", ".mjs", ".cjs")):
        raise InvalidArchive(
            f"handler {handler!r} needs {file}.js (or .mjs, .cjs) in the code archive, "
            "which is not there"
        )


def pack(root: Path) -> bytes:
    """The unpacked code folder as a normalized .tar.gz (paths relative to the root)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for path in sorted(root.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(root).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_file():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def digest(root: Path) -> str:
    """sha256 of what the code folder holds (paths, executable bits, contents), not of an
    archive of it: the same code sent twice, packed at other times, has the same digest."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix().encode()
        if path.is_file():
            executable = b"x" if path.stat().st_mode & 0o111 else b"-"
            h.update(b"f%d:%s%s" % (len(rel), rel, executable))
            data = path.read_bytes()
            h.update(b"%d:" % len(data))
            h.update(data)
        else:
            h.update(b"d%d:%s" % (len(rel), rel))
    return h.hexdigest()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
