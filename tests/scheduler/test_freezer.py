"""The cgroup freezer on a fake cgroup tree: finding a container's cgroup, and refusing
what Kapal must not freeze."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.freezer import Cgroup, FreezeError, Freezer, Mounts, read_mounts

CID = "857c6a874d17"
HYBRID = "\n".join(
    [
        f"9:name=systemd:/docker/{CID}",
        f"6:freezer:/docker/{CID}",
        f"4:memory:/docker/{CID}",
        f"0::/docker/{CID}",
    ]
)
SYSTEMD_V2 = f"0::/system.slice/docker-{CID}.scope"
MOUNTINFO = """\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
36 33 0:31 / /sys/fs/cgroup/freezer rw,relatime shared:13 - cgroup cgroup rw,freezer
37 33 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
38 33 0:33 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
"""


def host(tmp_path: Path, theirs: str, ours: str = "0::/") -> Path:
    """A /proc with our process and a container's init (pid 42)."""
    proc = tmp_path / "proc"
    for pid, text in (("self", ours), ("42", theirs)):
        (proc / pid).mkdir(parents=True)
        (proc / pid / "cgroup").write_text(text + "\n")
    return proc


def cgroup_dir(root: Path, rel: str, files: dict[str, str]) -> Path:
    path = root / rel
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_mounts_are_read_from_mountinfo_and_sub_tree_mounts_are_skipped(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO + "39 33 0:34 /x /mnt/nested rw - cgroup2 cgroup2 rw\n")
    assert read_mounts(info) == Mounts(
        Path("/sys/fs/cgroup/freezer"), Path("/sys/fs/cgroup/unified")
    )
    assert read_mounts(tmp_path / "missing") == Mounts()


def test_a_hybrid_host_uses_the_v1_freezer_as_runc_does(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "freezer", tmp_path / "unified"
    path = cgroup_dir(v1, f"docker/{CID}", {"freezer.state": "THAWED\n"})
    cgroup_dir(v2, f"docker/{CID}", {"cgroup.freeze": "0\n", "cgroup.events": "frozen 0\n"})
    freezer = Freezer(host(tmp_path, HYBRID), Mounts(v1, v2))
    found = freezer.locate(42)
    assert found == Cgroup(path, v1=True)
    assert not freezer.frozen(found)
    freezer.freeze(found)
    assert (path / "freezer.state").read_text() == "FROZEN"
    assert freezer.frozen(found)
    assert freezer.thaw(found)
    assert (path / "freezer.state").read_text() == "THAWED"


def test_a_v2_host_writes_cgroup_freeze_and_reads_frozen_from_events(tmp_path: Path) -> None:
    v2 = tmp_path / "cgroup"
    path = cgroup_dir(
        v2,
        f"system.slice/docker-{CID}.scope",
        {"cgroup.freeze": "0\n", "cgroup.events": "populated 1\nfrozen 1\n"},
    )
    freezer = Freezer(host(tmp_path, SYSTEMD_V2), Mounts(None, v2))
    found = freezer.locate(42)
    assert found == Cgroup(path, v1=False)
    freezer.freeze(found)  # the kernel (here: the file) says frozen
    assert (path / "cgroup.freeze").read_text() == "1"
    assert freezer.frozen(found)
    (path / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    assert freezer.thaw(found)
    assert (path / "cgroup.freeze").read_text() == "0"
    assert not freezer.frozen(found)


def test_a_freeze_that_does_not_settle_is_undone(tmp_path: Path) -> None:
    v2 = tmp_path / "cgroup"
    path = cgroup_dir(v2, "docker/c", {"cgroup.freeze": "0\n", "cgroup.events": "frozen 0\n"})
    freezer = Freezer(host(tmp_path, "0::/docker/c"), Mounts(None, v2), timeout_s=0.01)
    found = freezer.locate(42)
    assert found is not None
    with pytest.raises(FreezeError):
        freezer.freeze(found)
    assert (path / "cgroup.freeze").read_text() == "0"


def test_a_thaw_not_waited_for_says_whether_it_took(tmp_path: Path) -> None:
    v2 = tmp_path / "cgroup"
    cgroup_dir(v2, "docker/c", {"cgroup.freeze": "1\n", "cgroup.events": "frozen 1\n"})
    freezer = Freezer(host(tmp_path, "0::/docker/c"), Mounts(None, v2), timeout_s=0.01)
    found = freezer.locate(42)
    assert found is not None
    assert not freezer.thaw(found, wait=False)
    with pytest.raises(FreezeError):
        freezer.thaw(found)


def test_a_cgroup_that_is_gone_fails_to_freeze(tmp_path: Path) -> None:
    freezer = Freezer(host(tmp_path, "0::/docker/c"), Mounts(None, tmp_path / "cgroup"))
    with pytest.raises(FreezeError):
        freezer.freeze(Cgroup(tmp_path / "cgroup" / "docker" / "c", v1=False))


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        ("0::/", "0::/"),  # the root: every process on the host
        ("0::/docker/c", "0::/docker/c"),  # the gateway's own cgroup
        ("0::/docker/missing", "0::/"),  # another namespace's view: no such directory
        ("1:cpu:/docker/c", "0::/"),  # no hierarchy this host has a freezer for
    ],
)
def test_what_must_not_or_cannot_be_frozen_is_not_found(
    tmp_path: Path, theirs: str, ours: str
) -> None:
    v2 = tmp_path / "cgroup"
    cgroup_dir(v2, "docker/c", {"cgroup.freeze": "0\n", "cgroup.events": "frozen 0\n"})
    (v2 / "cgroup.freeze").write_text("0\n")  # as if the root had one
    freezer = Freezer(host(tmp_path, theirs, ours), Mounts(None, v2))
    assert freezer.locate(42) is None


def test_no_pid_no_mounts_or_an_unreadable_proc_is_not_found(tmp_path: Path) -> None:
    v2 = tmp_path / "cgroup"
    cgroup_dir(v2, "docker/c", {"cgroup.freeze": "0\n", "cgroup.events": "frozen 0\n"})
    proc = host(tmp_path, "0::/docker/c")
    assert Freezer(proc, Mounts(None, v2)).locate(0) is None
    assert Freezer(proc, Mounts(None, v2)).locate(7) is None  # no such process
    assert Freezer(proc, Mounts()).locate(42) is None
