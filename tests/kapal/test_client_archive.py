import io
import os
import tarfile
from pathlib import Path

import pytest

from kapal.archive import build_archive
from kapal.errors import KapalAPIError


def names(archive: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return set(tar.getnames())


def members(archive: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_packs_code_and_skips_caches_vcs_and_dependencies(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text("x = 1\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "util.py").write_text("y = 2\n")
    (tmp_path / "lib" / "util.pyc").write_bytes(b"\0")
    (tmp_path / "empty").mkdir()
    for excluded in (".git", "__pycache__", ".venv", "node_modules", "lib/__pycache__"):
        (tmp_path / excluded).mkdir(parents=True)
        (tmp_path / excluded / "junk.txt").write_text("junk")

    assert names(build_archive(tmp_path)) == {"handler.py", "lib", "lib/util.py", "empty"}


def test_skips_symlinks_to_files_and_folders(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    folder = tmp_path / "fn"
    folder.mkdir()
    (folder / "handler.py").write_text("x = 1\n")
    (folder / "link.txt").symlink_to(outside / "secret.txt")
    (folder / "linkdir").symlink_to(outside, target_is_directory=True)
    (folder / "dangling").symlink_to(tmp_path / "missing")

    assert names(build_archive(folder)) == {"handler.py"}


def test_file_contents_and_modes_survive_but_owner_does_not(tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_bytes(b"#!/bin/sh\necho \xff\n")
    os.chmod(tmp_path / "run.sh", 0o755)

    archive = build_archive(tmp_path)

    info = members(archive)["run.sh"]
    assert info.mode & 0o777 == 0o755
    assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        extracted = tar.extractfile("run.sh")
        assert extracted is not None
        assert extracted.read() == b"#!/bin/sh\necho \xff\n"


def test_refuses_a_folder_over_the_limit(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(b"x" * 2048)

    with pytest.raises(KapalAPIError) as caught:
        build_archive(tmp_path, max_bytes=1024)

    assert caught.value.code == "folder_too_large"
    assert caught.value.status == 0
    assert "limit" in caught.value.message


def test_the_default_limit_is_50_mb(tmp_path: Path) -> None:
    with (tmp_path / "sparse.bin").open("wb") as fh:
        fh.truncate(51 * 1024 * 1024)  # sparse: no 51 MB written to disk

    with pytest.raises(KapalAPIError, match="50 MB"):
        build_archive(tmp_path)


def test_excluded_files_do_not_count_toward_the_limit(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text("x = 1\n")
    (tmp_path / "node_modules").mkdir()
    with (tmp_path / "node_modules" / "huge.bin").open("wb") as fh:
        fh.truncate(60 * 1024 * 1024)

    assert names(build_archive(tmp_path)) == {"handler.py"}


def test_refuses_what_is_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(KapalAPIError, match="is not a folder"):
        build_archive(tmp_path / "nope")
