"""requirements.txt: which lines count, which are refused, the cache key, pip's failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler import pydeps
from scheduler.errors import RequirementsUnresolvable


def test_comments_blank_lines_and_spacing_do_not_count() -> None:
    text = "# deps\nnumpy==2.0  # pinned\n\n  Pillow>=10 \\\n  ,<12\n"
    assert pydeps.requirement_lines(text) == ["numpy==2.0", "Pillow>=10 ,<12"]
    assert pydeps.requirement_lines("# nothing\n\n") == []


def test_the_key_follows_the_requirements_and_the_target() -> None:
    target = pydeps.Target(machine="x86_64")
    key = pydeps.cache_key(["numpy==2.0"], target)
    assert key == pydeps.cache_key(pydeps.requirement_lines("numpy==2.0 # x\n"), target)
    assert key != pydeps.cache_key(["numpy==2.1"], target)
    assert key != pydeps.cache_key(["numpy==2.0"], pydeps.Target(machine="aarch64"))
    assert key != pydeps.cache_key(["numpy==2.0"], pydeps.Target("3.12", machine="x86_64"))


def test_the_target_accepts_every_manylinux_the_runtime_image_can_run() -> None:
    tags = pydeps.Target(machine="x86_64").platforms
    assert "manylinux_2_36_x86_64" in tags and "manylinux_2_17_x86_64" in tags
    assert "manylinux2014_x86_64" in tags and "manylinux_2_37_x86_64" not in tags
    args = pydeps.pip_args(Path("r.txt"), Path("out"), Path("cache"), pydeps.Target())
    assert "--only-binary=:all:" in args and args[args.index("--python-version") + 1] == "3.11"
    assert "--platform" not in pydeps.pip_args(Path("r.txt"), Path("out"), Path("c"), None)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("-r /etc/passwd", "pip options"),
        ("--extra-index-url=http://x", "pip options"),
        ("-e .", "pip options"),
        ("./local", "local paths"),
        ("pkg @ FILE:///etc/x", "local paths"),
        ("pkg==${HOME}", "environment references"),
        ("pkg --global-option=x", "other than --hash"),
    ],
)
def test_lines_that_would_read_the_host_are_refused(line: str, words: str) -> None:
    with pytest.raises(RequirementsUnresolvable, match=words) as err:
        pydeps.check(["six", line])
    assert f"line 2 ({line!r})" in str(err.value)
    assert err.value.code == "requirements_unresolvable" and err.value.status == 422


def test_requirements_with_hashes_and_markers_are_accepted(tmp_path: Path) -> None:
    pydeps.check(["six==1.16.0 --hash=sha256:abc --hash=sha256:def"])
    pydeps.check(['numpy>=1.26; python_version >= "3.11"', "pkg @ https://example.com/p.whl"])
    (tmp_path / "requirements.txt").write_text("# c\nsix\n")
    assert pydeps.read_requirements(tmp_path) == ["six"]
    assert pydeps.read_requirements(tmp_path / "none") == []


async def test_a_package_that_does_not_exist_is_named(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==1.16.0\nnosuchpkg-xyz==1.0\n")
    into = tmp_path / "site"
    into.mkdir()
    lines: list[str] = []
    with pytest.raises(RequirementsUnresolvable, match="cannot resolve nosuchpkg-xyz") as err:
        await pydeps.resolve(requirements, into, tmp_path / "pip", pydeps.Target(), lines.append)
    assert "CPython 3.11" in str(err.value)
    assert lines[0].startswith("resolving requirements.txt on the host")


async def test_a_resolved_folder_holds_the_package_and_its_byte_code(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==1.16.0\n")
    into = tmp_path / "site"
    into.mkdir()
    await pydeps.resolve(requirements, into, tmp_path / "pip", pydeps.Target(), lambda _: None)
    assert (into / "six.py").is_file()
    assert (into / "__pycache__" / "six.cpython-311.pyc").is_file()
    assert any(p.name.startswith("six-1.16.0.dist-info") for p in into.iterdir())
