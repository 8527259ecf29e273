"""The catalog as the gateway's cache of Postgres, with in-memory stand-ins around it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

from gateway.catalog import FUNCTIONS, KEYS, SECRETS, Catalog
from gateway.store import Serving
from scheduler.models import FunctionSpec

# Nothing listens here: the catalog's listener keeps retrying until it is stopped.
NOWHERE = "postgresql://kapal@127.0.0.1:1/kapal"


def spec(name: str, version: int = 1, secrets: list[str] | None = None) -> FunctionSpec:
    return FunctionSpec(
        name=name, version=version, image=f"{name}:{version}", secrets=secrets or []
    )


class Store:
    def __init__(self) -> None:
        self.specs: list[FunctionSpec] = []
        # Versions of functions whose traffic is split.
        self.split: list[Serving] = []
        self.loads = 0
        self.loaded = asyncio.Event()

    async def serving(self) -> list[Serving]:
        self.loads += 1
        self.loaded.set()
        return [Serving(s, 100, True) for s in self.specs] + list(self.split)


class Scheduler:
    def __init__(self) -> None:
        self.updates: list[list[str]] = []
        self.traffic: list[Mapping[str, Mapping[int, int]] | None] = []

    def update(
        self, specs: list[FunctionSpec], traffic: Mapping[str, Mapping[int, int]] | None = None
    ) -> None:
        self.updates.append(sorted(s.name for s in specs))
        self.traffic.append(traffic)


class Secrets:
    def __init__(self) -> None:
        self.mounted: list[tuple[str, int]] = []
        self.forgotten: list[str] = []

    async def mount(self, spec: FunctionSpec) -> None:
        self.mounted.append((spec.name, spec.version))

    def forget(self, function: str) -> None:
        self.forgotten.append(function)


class Keys:
    def __init__(self) -> None:
        self.refreshes = 0
        self.refreshed = asyncio.Event()

    async def refresh(self) -> None:
        self.refreshes += 1
        self.refreshed.set()


def catalog(refresh_s: float = 3600.0) -> tuple[Catalog, Store, Scheduler, Secrets, Keys]:
    store, scheduler, secrets, keys = Store(), Scheduler(), Secrets(), Keys()
    parts: Any = (store, scheduler, secrets, keys)
    return Catalog(*parts, refresh_s=refresh_s), store, scheduler, secrets, keys


async def test_a_reload_pushes_specs_mounts_the_changed_and_forgets_the_deleted() -> None:
    cat, store, scheduler, secrets, keys = catalog()
    store.specs = [spec("a", secrets=["db"]), spec("b")]
    assert [s.name for s in await cat.load()] == ["a", "b"]
    assert keys.refreshes == 1
    assert scheduler.updates == [["a", "b"]]
    assert secrets.mounted == [("a", 1), ("b", 1)]
    assert cat.users_of("db") == ["a"]

    store.specs = [spec("a", version=2, secrets=["db"])]
    await cat.reload_functions()
    assert scheduler.updates[-1] == ["a"]
    assert secrets.mounted[-1] == ("a", 2)  # a new version: mounted again
    assert secrets.forgotten == ["b"]
    assert cat.get("b") is None and cast(FunctionSpec, cat.get("a")).version == 2

    await cat.reload_functions()  # nothing changed: nothing remounted
    assert secrets.mounted[-1] == ("a", 2) and len(secrets.mounted) == 3


async def test_a_split_is_pushed_whole_and_its_folder_holds_every_version_s_secrets() -> None:
    cat, store, scheduler, secrets, _ = catalog()
    store.split = [
        Serving(spec("s", version=3, secrets=["old"]), 90, True),
        Serving(spec("s", version=4, secrets=["new"]), 10, False),
    ]
    await cat.load()
    assert scheduler.updates == [["s", "s"]]
    assert scheduler.traffic == [{"s": {3: 90, 4: 10}}]
    assert cast(FunctionSpec, cat.get("s")).version == 3  # the largest share is current
    assert cat.users_of("old") == cat.users_of("new") == ["s"]
    assert secrets.mounted == [("s", 3)]

    store.split = [Serving(spec("s", version=4, secrets=["new"]), 100, True)]
    await cat.reload_functions()
    assert scheduler.traffic[-1] == {} and cat.users_of("old") == []
    assert secrets.mounted[-1] == ("s", 4)


async def test_on_change_hooks_see_every_functions_reload() -> None:
    cat, store, *_ = catalog()
    seen: list[list[str]] = []
    cat.on_change.append(lambda specs: seen.append(sorted(specs)))
    store.specs = [spec("a")]
    await cat.load()
    store.specs = []
    await cat.reload_functions()
    assert seen == [["a"], []]


async def test_a_notification_reloads_only_what_it_names() -> None:
    cat, store, _, _, keys = catalog()
    stop = asyncio.Event()
    task = asyncio.create_task(cat.run(NOWHERE, stop))
    cat.changed(KEYS)
    await keys.refreshed.wait()
    assert store.loads == 0
    cat.changed(FUNCTIONS)
    cat.changed(SECRETS)
    await store.loaded.wait()
    stop.set()
    await task


async def test_stopping_does_not_wait_for_the_next_periodic_reload() -> None:
    cat, *_ = catalog(refresh_s=3600.0)
    stop = asyncio.Event()
    task = asyncio.create_task(cat.run(NOWHERE, stop))
    await asyncio.sleep(0.05)  # in its wait for a change or the hourly reload
    stop.set()
    # A hang detector, not a timing goal: an hour-long wait would fail this.
    await asyncio.wait_for(task, 60)
