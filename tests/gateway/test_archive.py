"""Unpacking code archives: what is accepted, what is refused, and that nothing escapes."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from gateway.archive import Limits, check_handler, unpack
from gateway.errors import InvalidArchive
from tests.support import tar_gz, zip_bytes

LIMITS = Limits(max_files=100, max_bytes=50 << 20)


def test_tar_gz_unpacks_with_normal_permissions(tmp_path: Path) -> None:
    root = unpack(tar_gz({"handler.py": "x = 1\n", "pkg/mod.py": "y = 2\n"}), tmp_path, LIMITS)
    assert root == tmp_path
    assert (root / "handler.py").read_text() == "x = 1\n"
    assert (root / "pkg" / "mod.py").stat().st_mode & 0o777 == 0o644


def test_zip_unpacks(tmp_path: Path) -> None:
    root = unpack(zip_bytes({"handler.py": "x = 1\n"}), tmp_path, LIMITS)
    assert (root / "handler.py").read_text() == "x = 1\n"


def test_single_top_level_folder_is_the_root(tmp_path: Path) -> None:
    root = unpack(tar_gz({"hello/handler.py": "x = 1\n"}), tmp_path, LIMITS)
    assert root == tmp_path / "hello"
    check_handler(root, "handler.handle")


def test_too_many_files(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {f"f{i}.py": "" for i in range(101)}
    with pytest.raises(InvalidArchive, match="more than 100 files"):
        unpack(tar_gz(files), tmp_path, LIMITS)


def test_too_many_bytes(tmp_path: Path) -> None:
    data = tar_gz({"big": b"\1" * 2048})
    with pytest.raises(InvalidArchive, match="more than 1024 bytes"):
        unpack(data, tmp_path, Limits(max_files=10, max_bytes=1024))


def test_zip_entry_that_lies_about_its_size_is_still_capped(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big", b"\0" * 4096)
    with pytest.raises(InvalidArchive):
        unpack(buf.getvalue(), tmp_path, Limits(max_files=10, max_bytes=1000))


def test_escaping_paths_write_nothing_outside(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("a/../../outside.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(InvalidArchive, match="escapes"):
        unpack(buf.getvalue(), dest, LIMITS)
    assert not (tmp_path / "outside.txt").exists()


def test_plain_tar_is_accepted(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("handler.py")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    assert (unpack(buf.getvalue(), tmp_path, LIMITS) / "handler.py").exists()


@pytest.mark.parametrize(
    ("files", "handler"),
    [
        ({"handler.py": ""}, "handler.handle"),
        ({"a/b/__init__.py": ""}, "a.b.main"),
        ({"a/b.py": ""}, "a.b.main"),
    ],
)
def test_check_handler_finds_module(
    tmp_path: Path, files: dict[str, str | bytes], handler: str
) -> None:
    check_handler(unpack(tar_gz({**files, "x.txt": ""}), tmp_path, LIMITS), handler)


def test_check_handler_names_missing_module(tmp_path: Path) -> None:
    root = unpack(tar_gz({"main.py": "", "x.txt": ""}), tmp_path, LIMITS)
    with pytest.raises(InvalidArchive, match=r"handler\.py"):
        check_handler(root, "handler.handle")
