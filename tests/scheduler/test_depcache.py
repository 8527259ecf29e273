"""The dependency cache: made once, reused, whole or absent, bounded, shared safely."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from scheduler.depcache import DependencyCache, trim_files


class Maker:
    """Fills an entry with one file of `size` bytes, counting how often it ran."""

    def __init__(self, size: int = 10, fail: bool = False) -> None:
        self.size = size
        self.fail = fail
        self.runs = 0
        self.release = asyncio.Event()
        self.release.set()
        self.started = asyncio.Event()

    async def __call__(self, into: Path) -> None:
        self.runs += 1
        self.started.set()
        (into / "pkg.py").write_bytes(b"x" * self.size)
        await self.release.wait()
        if self.fail:
            raise RuntimeError("resolver failed")


async def test_an_entry_is_made_once_then_reused(tmp_path: Path) -> None:
    cache = DependencyCache(tmp_path, max_bytes=1 << 20)
    make = Maker()
    async with cache.use("k1", make) as first:
        assert (first.key, first.reused, first.size) == ("k1", False, 10)
        assert (first.path / "pkg.py").read_bytes() == b"x" * 10
    async with cache.use("k1", make) as again:
        assert (again.reused, again.path, again.size) == (True, first.path, 10)
    assert make.runs == 1


async def test_a_failed_make_leaves_nothing(tmp_path: Path) -> None:
    cache = DependencyCache(tmp_path, max_bytes=1 << 20)
    with pytest.raises(RuntimeError, match="resolver failed"):
        async with cache.use("k1", Maker(fail=True)):
            raise AssertionError("not reached")
    assert list(cache.entries.iterdir()) == []
    assert list(cache.staging.iterdir()) == []
    async with cache.use("k1", Maker()) as entry:
        assert entry.reused is False


async def test_two_users_of_a_missing_entry_make_it_once(tmp_path: Path) -> None:
    # Two caches on one folder: two gateways, each with lock files of its own opening.
    one, two = DependencyCache(tmp_path, 1 << 20), DependencyCache(tmp_path, 1 << 20)
    make = Maker()
    make.release.clear()
    seen: list[bool] = []

    async def use(cache: DependencyCache) -> None:
        async with cache.use("k1", make) as entry:
            seen.append(entry.reused)

    first = asyncio.create_task(use(one))
    await make.started.wait()
    second = asyncio.create_task(use(two))
    await asyncio.sleep(0.3)  # the second waits on the lock meanwhile
    assert seen == []
    make.release.set()
    await asyncio.gather(first, second)
    assert (make.runs, seen) == (1, [False, True])


async def test_a_full_cache_drops_the_least_recently_used_entry_nobody_holds(
    tmp_path: Path,
) -> None:
    roomy = DependencyCache(tmp_path, max_bytes=1 << 20)
    for key in ("old", "held", "mid"):
        async with roomy.use(key, Maker(100)):
            pass
    # Ages by use, oldest first: old, held, mid. Another gateway holds "held".
    for age, key in enumerate(("old", "held", "mid")):
        os.utime(roomy.entries / key, (1000 + age, 1000 + age))
    cache = DependencyCache(tmp_path, max_bytes=250)
    async with roomy.use("held", Maker()):
        os.utime(cache.entries / "held", (1001, 1001))
        async with cache.use("new", Maker(100)):
            pass
        # 400 bytes: "old" goes (oldest), "held" stays (in use), "mid" goes.
        assert sorted(p.name for p in cache.entries.iterdir()) == ["held", "new"]
    # Let go, it is the least recently used.
    assert DependencyCache(tmp_path, max_bytes=150).prune() == ["held"]
    assert sorted(p.name for p in cache.entries.iterdir()) == ["new"]


async def test_the_newest_entry_stays_however_big(tmp_path: Path) -> None:
    cache = DependencyCache(tmp_path, max_bytes=10)
    async with cache.use("big", Maker(1000)):
        pass
    assert [p.name for p in cache.entries.iterdir()] == ["big"]


def test_trim_files_removes_the_oldest_first(tmp_path: Path) -> None:
    for age, name in enumerate(("a", "b", "c")):
        (tmp_path / name).write_bytes(b"x" * 100)
        os.utime(tmp_path / name, (1000 + age, 1000 + age))
    assert trim_files(tmp_path, 150) == 200
    assert [p.name for p in tmp_path.iterdir()] == ["c"]
    assert trim_files(tmp_path / "missing", 0) == 0
