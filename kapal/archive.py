"""Pack a function folder into the `.tar.gz` the gateway's deploy endpoint takes."""

import io
import os
import stat
import tarfile
from pathlib import Path

from kapal.errors import KapalAPIError

MAX_FOLDER_BYTES = 50 * 1024 * 1024
# Build output, caches and VCS data: never part of a function's code.
EXCLUDED_NAMES = frozenset({".git", "__pycache__", ".venv", "node_modules"})
EXCLUDED_SUFFIXES = (".pyc",)


def is_excluded(name: str) -> bool:
    return name in EXCLUDED_NAMES or name.endswith(EXCLUDED_SUFFIXES)


def collect(folder: Path) -> list[tuple[Path, str]]:
    """The (path, archive name) of every directory and regular file to pack, sorted.

    Symlinks are skipped, not followed: they could point outside the folder.
    """
    entries: list[tuple[Path, str]] = []

    def fail(exc: OSError) -> None:
        raise exc

    for root, dirs, files in os.walk(folder, onerror=fail):
        base = Path(root)
        dirs[:] = sorted(d for d in dirs if not is_excluded(d) and not (base / d).is_symlink())
        for name in dirs:
            entries.append((base / name, (base / name).relative_to(folder).as_posix()))
        for name in sorted(files):
            path = base / name
            if is_excluded(name) or not stat.S_ISREG(path.lstat().st_mode):
                continue
            entries.append((path, path.relative_to(folder).as_posix()))
    return sorted(entries, key=lambda entry: entry[1])


def build_archive(folder: Path, max_bytes: int = MAX_FOLDER_BYTES) -> bytes:
    """The folder's code as gzipped tar bytes; refuses a folder over `max_bytes`."""
    if not folder.is_dir():
        raise KapalAPIError(0, "not_a_folder", f"{folder} is not a folder")
    try:
        entries = collect(folder)
        total = sum(path.lstat().st_size for path, _ in entries if path.is_file())
        if total > max_bytes:
            raise KapalAPIError(
                0,
                "folder_too_large",
                f"{folder} holds {total / 2**20:.1f} MB of code; the limit is "
                f"{max_bytes / 2**20:.0f} MB (skipped: {', '.join(sorted(EXCLUDED_NAMES))}, "
                "*.pyc and symlinks)",
            )
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for path, arcname in entries:
                info = tar.gettarinfo(str(path), arcname)
                # The builder's user owns the code, not whoever packed it.
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isfile():
                    with path.open("rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
    except OSError as exc:
        raise KapalAPIError(0, "folder_unreadable", f"cannot read {folder}: {exc}") from exc
    return buffer.getvalue()
