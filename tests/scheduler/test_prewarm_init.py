"""Specializing a prewarmed container: its /_/init body is built ahead, once per version,
so a cold start does not wait for the function store."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import pytest

from scheduler import prewarm
from scheduler.backend import Running
from scheduler.models import FunctionSpec, Limits
from scheduler.prewarm import PrewarmPool
from tests.scheduler.test_pool import FakeBackend


class CountingCode:
    """A function store that counts its queries."""

    def __init__(self, size: int = 10) -> None:
        self.asked: list[tuple[str, int]] = []
        self.size = size

    async def code(self, name: str, version: int) -> bytes:
        self.asked.append((name, version))
        return f"{name}@{version}".encode().ljust(self.size, b".")


class FakeRuntime:
    """A prewarmed runtime's /_/init on a local port: answers 200 and keeps each body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []
        self.address = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        self.bodies.append(json.loads(await reader.readexactly(length)))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()


@pytest.fixture
async def runtime() -> AsyncIterator[FakeRuntime]:
    fake = FakeRuntime()
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    fake.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield fake


def fn(name: str = "f", version: int = 1, **limits: int) -> FunctionSpec:
    return FunctionSpec(name=name, version=version, image="img:1", limits=Limits(**limits))


def make(code: CountingCode) -> PrewarmPool:
    return PrewarmPool(
        FakeBackend(),  # type: ignore[arg-type]
        {"python": "runtime:1"},
        {"python": 1},
        code,
    )


async def settle(pool: PrewarmPool) -> None:
    await asyncio.gather(*pool._tasks)


async def test_a_prefetched_version_is_specialized_without_asking_the_store(
    runtime: FakeRuntime,
) -> None:
    code = CountingCode()
    pool = make(code)
    pool.prefetch(fn())
    pool.prefetch(fn())  # deployed again meanwhile: still one query
    await settle(pool)
    assert code.asked == [("f", 1)]
    await pool.specialize(Running("c1", runtime.address, "_prewarm", 0), fn())
    await pool.specialize(Running("c2", runtime.address, "_prewarm", 0), fn())
    assert code.asked == [("f", 1)]
    assert [(b["function"], b["version"]) for b in runtime.bodies] == [("f", 1), ("f", 1)]
    assert base64.b64decode(str(runtime.bodies[0]["code"])) == b"f@1".ljust(10, b".")
    await pool.close(remove=False)


async def test_what_no_prewarmed_container_serves_is_not_prefetched() -> None:
    code = CountingCode()
    pool = make(code)
    pool.prefetch(fn(memory_mb=300))  # limits of its own: a container of its own
    pool.prefetch(FunctionSpec(name="n", version=1, image="img:1", runtime="nodejs"))
    await settle(pool)
    assert code.asked == []
    await pool.close(remove=False)


async def test_bodies_are_kept_within_a_budget_the_least_recently_used_leaving_first(
    runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = CountingCode(size=300)
    # Room for two bodies of this size (about 500 bytes each), not three.
    monkeypatch.setattr(prewarm, "INIT_BODIES_BYTES", 1200)
    pool = make(code)
    for name in ("a", "b"):
        pool.prefetch(fn(name))
    await settle(pool)
    await pool.specialize(Running("c1", runtime.address, "_prewarm", 0), fn("a"))  # a: recent
    pool.prefetch(fn("c"))
    await settle(pool)
    code.asked.clear()
    for name in ("a", "c", "b"):
        await pool.specialize(Running(name, runtime.address, "_prewarm", 0), fn(name))
    assert code.asked == [("b", 1)]
    await pool.close(remove=False)


async def test_a_body_too_large_to_keep_is_built_on_each_cold_start(
    runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = CountingCode(size=300)
    monkeypatch.setattr(prewarm, "INIT_BODY_MAX_BYTES", 100)
    pool = make(code)
    pool.prefetch(fn())
    await settle(pool)
    await pool.specialize(Running("c1", runtime.address, "_prewarm", 0), fn())
    assert code.asked == [("f", 1), ("f", 1)]
    await pool.close(remove=False)


class ChangingCode(CountingCode):
    """A store whose function is deleted and deployed again, its numbers starting over."""

    def __init__(self) -> None:
        super().__init__()
        self.deploys = 1
        self.fetching = asyncio.Event()
        self.release = asyncio.Event()

    async def code(self, name: str, version: int) -> bytes:
        self.fetching.set()
        await self.release.wait()
        return f"deploy {self.deploys}".encode()


async def test_a_deleted_function_deployed_again_gets_its_new_code(runtime: FakeRuntime) -> None:
    code = ChangingCode()
    pool = make(code)
    code.release.set()
    pool.prefetch(fn())
    await settle(pool)
    # Deleted, and deployed again: version 1 again, other code.
    pool.forget_code("f")
    code.deploys = 2
    await pool.specialize(Running("c1", runtime.address, "_prewarm", 0), fn())
    assert base64.b64decode(str(runtime.bodies[-1]["code"])) == b"deploy 2"


async def test_a_body_fetched_across_a_deletion_is_not_kept(runtime: FakeRuntime) -> None:
    code = ChangingCode()
    pool = make(code)
    pool.prefetch(fn())
    await code.fetching.wait()
    pool.forget_code("f")  # deleted while the old code was on its way
    code.release.set()
    await settle(pool)
    code.deploys = 2
    await pool.specialize(Running("c1", runtime.address, "_prewarm", 0), fn())
    assert base64.b64decode(str(runtime.bodies[-1]["code"])) == b"deploy 2"
