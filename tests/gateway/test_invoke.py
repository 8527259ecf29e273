"""The invocation core against a local HTTP server standing in for an instance."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from gateway.errors import FunctionNotFound, UpstreamFailed, UpstreamTimeout
from gateway.invoke import Invoker
from gateway.records import Recorder
from gateway.settings import Settings
from gateway.upstream import Upstreams
from scheduler.backend import Running
from scheduler.errors import NoCapacity
from scheduler.models import FunctionSpec, Limits
from scheduler.pool import PoolConfig
from scheduler.scheduler import Scheduler


@dataclass
class LocalBackend:
    """Every instance is the same local server."""

    address: str
    removed: list[str] = field(default_factory=list)
    started: int = 0

    async def start(self, spec: FunctionSpec, instance_id: str) -> Running:
        self.started += 1
        return Running(f"c{self.started}", self.address, spec.name, spec.version)

    async def remove(self, container_id: str, grace_s: float = 0.0) -> None:
        self.removed.append(container_id)

    async def pause(self, container_id: str) -> None: ...

    async def unpause(self, container_id: str) -> None: ...

    async def claim(self, container_id: str, spec: FunctionSpec, instance_id: str) -> None: ...

    def watch(self, on_event: Callable[[str, str], None]) -> Callable[[], None]:
        return lambda: None

    async def inspect(self, container_id: str) -> Running | None:
        return None

    async def list_managed(self) -> list[Running]:
        return []


async def instance_app() -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(
            body=body,
            headers={"X-Path": request.path_qs, "X-Id": request.headers["X-Kapal-Request-Id"]},
        )

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.5)
        return web.Response(text="late")

    async def runtime_timeout(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"code": "timeout"}}, status=504, headers={"X-Kapal-Error": "timeout"}
        )

    async def drop(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    app = web.Application()
    app.router.add_get("/_/health", health)
    app.router.add_get("/slow", slow)
    app.router.add_get("/runtime-timeout", runtime_timeout)
    app.router.add_get("/drop", drop)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def invoker(unused_tcp_port: int) -> AsyncIterator[tuple[Invoker, LocalBackend]]:
    runner = web.AppRunner(await instance_app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    backend = LocalBackend(f"127.0.0.1:{unused_tcp_port}")
    scheduler = Scheduler(backend, PoolConfig(stop_grace_s=0))  # type: ignore[arg-type]
    spec = FunctionSpec(name="f", version=1, image="x", limits=Limits(timeout_s=0.5))
    await scheduler.start([spec])
    await scheduler.lead()
    settings = Settings(database_url="postgresql://unused")
    recorder = Recorder(None, 1.0, 1)  # type: ignore[arg-type]
    upstreams = Upstreams()
    yield Invoker(settings, scheduler, recorder, upstreams), backend
    upstreams.close()
    await scheduler.close()
    await runner.cleanup()


async def test_call_returns_the_whole_response_and_records_it(
    invoker: tuple[Invoker, LocalBackend],
) -> None:
    inv, _ = invoker
    got = await inv.call("f", "POST", "/a/b?x=1", {"X-In": "1"}, b"\x00\xffdata")
    assert got.status == 200
    assert got.body == b"\x00\xffdata"
    assert got.headers["X-Path"] == "/a/b?x=1"
    assert got.headers["X-Id"] == got.request_id
    assert got.cold == "new"
    again = await inv.call("f", "GET", "/", {}, b"")
    assert again.cold == ""
    assert [r.status for r in inv.recorder.pending] == [200, 200]


async def test_unknown_function(invoker: tuple[Invoker, LocalBackend]) -> None:
    with pytest.raises(FunctionNotFound):
        await invoker[0].call("nope", "GET", "/", {}, b"")


async def test_timeout_replaces_the_instance(invoker: tuple[Invoker, LocalBackend]) -> None:
    inv, backend = invoker
    with pytest.raises(UpstreamTimeout):
        await inv.call("f", "GET", "/slow", {}, b"")
    await asyncio.sleep(0.05)
    assert backend.removed == ["c1"]


async def test_runtime_reported_timeout_replaces_the_instance(
    invoker: tuple[Invoker, LocalBackend],
) -> None:
    inv, backend = invoker
    got = await inv.call("f", "GET", "/runtime-timeout", {}, b"")
    assert got.status == 504
    await asyncio.sleep(0.05)
    assert backend.removed == ["c1"]


async def test_connection_lost_is_upstream_failed(invoker: tuple[Invoker, LocalBackend]) -> None:
    inv, backend = invoker
    with pytest.raises(UpstreamFailed):
        await inv.call("f", "GET", "/drop", {}, b"")
    await asyncio.sleep(0.05)
    assert backend.removed == ["c1"]
    assert (await inv.call("f", "GET", "/", {}, b"")).status == 200


async def test_a_rejection_is_counted_with_its_reason() -> None:
    backend = LocalBackend("127.0.0.1:9")
    scheduler = Scheduler(backend, PoolConfig(buffer_size=0))  # type: ignore[arg-type]
    await scheduler.start([FunctionSpec(name="f", version=1, image="x")])
    recorder = Recorder(None, 1.0, 1)  # type: ignore[arg-type]
    inv = Invoker(Settings(database_url="postgresql://unused"), scheduler, recorder, Upstreams())
    try:
        with pytest.raises(NoCapacity):
            await inv.call("f", "GET", "/", {}, b"")
        assert inv.metrics.rejections == {("f", "buffer_full"): 1}
        assert recorder.pending == []  # no instance, no record
    finally:
        await scheduler.close()


@dataclass
class HeldBackend(LocalBackend):
    """Version 1's instances start only once `release` is set."""

    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, spec: FunctionSpec, instance_id: str) -> Running:
        if spec.version == 1:
            await self.release.wait()
        return await super().start(spec, instance_id)


async def test_the_version_drawn_serves_says_so_and_a_waiter_follows_a_new_split(
    unused_tcp_port: int,
) -> None:
    runner = web.AppRunner(await instance_app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    backend = HeldBackend(f"127.0.0.1:{unused_tcp_port}")
    scheduler = Scheduler(backend, PoolConfig(stop_grace_s=0))  # type: ignore[arg-type]
    v1, v2 = (FunctionSpec(name="f", version=v, image="x") for v in (1, 2))
    await scheduler.start([v1])
    await scheduler.lead()
    recorder = Recorder(None, 1.0, 1)  # type: ignore[arg-type]
    upstreams = Upstreams()
    inv = Invoker(Settings(database_url="postgresql://unused"), scheduler, recorder, upstreams)
    try:
        waiting = asyncio.create_task(inv.call("f", "GET", "/", {}, b""))
        await asyncio.sleep(0.05)
        assert scheduler.status("f") is not None and scheduler.versions["f"][1].waiting == 1
        scheduler.update([v1, v2], {"f": {2: 100}})  # version 1 leaves while it waits
        got = await waiting
        assert (got.status, got.version, got.headers["X-Kapal-Version"]) == (200, 2, "2")
        scheduler.update([v1, v2], {"f": {1: 50, 2: 50}})
        backend.release.set()
        answers = [await inv.call("f", "GET", "/", {}, b"") for _ in range(40)]
        assert {a.version for a in answers} == {1, 2}
        assert all(a.headers["X-Kapal-Version"] == str(a.version) for a in answers)
        by_id = {r.id.decode(): r.version for r in recorder.pending}
        assert all(by_id[a.request_id] == a.version for a in answers)
    finally:
        upstreams.close()
        await scheduler.close()
        await runner.cleanup()
