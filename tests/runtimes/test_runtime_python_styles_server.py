"""Handler styles in the runtime process, run as the container runs it: a style given in
/_/init, an ASGI app's lifespan around the SIGTERM drain, and the runtime's guarantees
(deadlines, log tags, handler errors) for code written for other platforms."""

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from runtime_python_support import RuntimeProcess, start_runtime, tar_gz_b64, write_files

from infra.local import tar_gz
from scheduler.backend import Running
from scheduler.models import FunctionSpec
from scheduler.prewarm import PrewarmPool

ASGI_APP = """
import asyncio


class App:
    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    print("lifespan startup")
                    scope["state"]["greeting"] = "hello"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    print("lifespan shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await receive()
        if scope["path"].endswith("/sleep"):
            await asyncio.sleep(30)
        if scope["path"].endswith("/boom"):
            raise ValueError("boom from asgi")
        print("serving", scope["path"])
        body = scope["state"]["greeting"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


app = App()
"""

FAILING_STARTUP = """
async def app(scope, receive, send):
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
"""

LAMBDA_V1 = """
import time


def handler(event, context):
    if event["path"] == "/slow":
        time.sleep(30)
    if event["path"] == "/raise":
        raise KeyError("no such item")
    print("v1 call", context.aws_request_id)
    return {"statusCode": 200, "body": event["httpMethod"] + " " + context.function_name}
"""


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def test_asgi_lifespan_runs_before_serving_and_after_the_drain(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    code = write_files(tmp_path / "function", {"app.py": ASGI_APP})
    process = start_runtime(code, {"KAPAL_CODE_DIR": str(code), "KAPAL_HANDLER": "app.app"})
    try:
        async with http.get(f"{process.url}/hi", headers={"X-Kapal-Request-Id": "r1"}) as resp:
            assert (resp.status, await resp.text()) == (200, "hello")
        loaded = await process.event(http, "handler_loaded")
        assert loaded["style"] == "asgi"
        rows = await process.rows_of(http, "r1")
        assert [row.text for row in rows] == ["serving /hi"]
        async with http.get(f"{process.url}/boom", headers={"X-Kapal-Request-Id": "r3"}) as resp:
            assert resp.status == 500
            assert (await resp.json())["error"]["code"] == "handler_error"
        (traceback,) = await process.rows_of(http, "r3")
        assert traceback.stream == "stderr" and traceback.level == "error"
        assert (
            traceback.text.startswith("Traceback")
            and "ValueError: boom from asgi" in traceback.text
        )
        # The app runs, then the deadline passes: cancelled, answered 504.
        deadline = {"X-Kapal-Deadline": str(time.time() + 0.5)}
        async with http.get(f"{process.url}/sleep", headers=deadline) as resp:
            assert resp.status == 504
            assert "did not finish" in (await resp.json())["error"]["message"]
        await process.ack(http)
    finally:
        code_of_exit = process.stop()
    assert code_of_exit == 0
    # Lines nobody pulled after the drain reach stderr: the shutdown ran after it.
    stderr = process.stderr()
    assert "lifespan shutdown" in stderr
    assert stderr.index('"event":"draining"') < stderr.index("lifespan shutdown")


async def test_a_failed_asgi_startup_fails_the_load(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    code = write_files(tmp_path / "function", {"app.py": FAILING_STARTUP})
    env = {"KAPAL_CODE_DIR": str(code), "KAPAL_HANDLER": "app.app", "KAPAL_STYLE": "asgi"}
    process = start_runtime(code, env)
    try:
        async with http.get(f"{process.url}/_/health") as resp:
            assert resp.status == 500
            error = (await resp.json())["error"]
        assert error["code"] == "handler_load_failed"
        assert "database unreachable" in error["message"]
    finally:
        assert process.stop() == 0


async def prewarm_runtime(tmp_path: Path) -> RuntimeProcess:
    code = tmp_path / "sandbox" / "function"
    env = {
        "KAPAL_PREWARM": "1",
        "KAPAL_CODE_DIR": str(code),
        "KAPAL_DEPS_DIR": str(tmp_path / "sandbox" / "deps"),
        "KAPAL_THREADS": "2",
    }
    return start_runtime(code, env)


async def test_a_style_given_in_init(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    process = await prewarm_runtime(tmp_path)
    try:
        init = {
            "function": "rest",
            "version": 2,
            "handler": "app.handler",
            "style": "lambda-v1",
            "code": tar_gz_b64({"app.py": LAMBDA_V1}),
        }
        async with http.post(f"{process.url}/_/init", json=init) as resp:
            assert resp.status == 200, await resp.text()
        headers = {"X-Kapal-Request-Id": "r2"}
        async with http.delete(f"{process.url}/x", headers=headers) as resp:
            assert (resp.status, await resp.text()) == (200, "DELETE rest")
            assert resp.headers["Content-Type"] == "application/json"  # API Gateway's default
        rows = await process.rows_of(http, "r2")
        assert [row.text for row in rows] == ["v1 call r2"]
        async with http.get(f"{process.url}/raise", headers={"X-Kapal-Request-Id": "r4"}) as resp:
            assert resp.status == 500
            assert (await resp.json())["error"]["message"] == "KeyError: 'no such item'"
        (traceback,) = await process.rows_of(http, "r4")
        assert "KeyError: 'no such item'" in traceback.text
        # A blocking handler passing its deadline is a 504, as for native ones.
        deadline = {"X-Kapal-Deadline": str(time.time() + 0.5)}
        async with http.get(f"{process.url}/slow", headers=deadline) as resp:
            assert resp.status == 504
            assert "did not finish" in (await resp.json())["error"]["message"]
    finally:
        assert process.stop() == 0


async def test_a_style_that_does_not_fit_is_a_load_failure_in_init(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    process = await prewarm_runtime(tmp_path)
    try:
        init = {
            "function": "rest",
            "version": 1,
            "handler": "app.handler",
            "style": "openwhisk",
            "code": tar_gz_b64({"app.py": LAMBDA_V1}),
        }
        async with http.post(f"{process.url}/_/init", json=init) as resp:
            assert resp.status == 500
            error = (await resp.json())["error"]
        assert error["code"] == "handler_load_failed"
        assert "openwhisk handlers take 1" in error["message"]
        async with http.post(f"{process.url}/_/init", json={**init, "style": "gcf"}) as resp:
            assert resp.status == 409  # the failed load is final, like any other
    finally:
        assert process.stop() == 0


class OneCode:
    """The gateway's code source, for one function."""

    def __init__(self, files: dict[str, str | bytes]) -> None:
        self.archive = tar_gz(files)

    async def code(self, name: str, version: int) -> bytes:
        return self.archive


async def test_the_scheduler_specializes_a_prewarmed_runtime_with_the_style(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    process = await prewarm_runtime(tmp_path)
    try:
        spec = FunctionSpec(
            name="warm", version=1, image="unused", handler="app.handler", style="lambda-v1"
        )
        pool = PrewarmPool(None, {}, {}, OneCode({"app.py": LAMBDA_V1}))  # type: ignore[arg-type]
        running = Running("c1", f"127.0.0.1:{process.port}", "_prewarm", 0)
        await pool.specialize(running, spec)
        async with http.get(f"{process.url}/x", headers={"X-Kapal-Request-Id": "r5"}) as resp:
            assert (resp.status, await resp.text()) == (200, "GET warm")
        loaded = await process.event(http, "handler_loaded")
        assert loaded["style"] == "lambda-v1"
    finally:
        assert process.stop() == 0
