"""The Python runtime server, run as a subprocess the way the container runs it."""

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict
from runtime_python_support import (
    RUNTIME_DIR,
    RuntimeProcess,
    start_runtime,
    tar_gz_b64,
    write_files,
)

HANDLER = """
import asyncio
import base64
import sys
import threading
import time
from pathlib import Path

holding = threading.Event()
release = threading.Event()
# Passed only by handlers running at the same time (one after another, it breaks).
together = threading.Barrier(20)


def _together(event, context):
    try:
        together.wait(30)
        return "together"
    except threading.BrokenBarrierError:
        return "alone"


def _hold(event, context):
    holding.set()
    released = release.wait(20)
    holding.clear()
    release.clear()
    return "released" if released else "not released"


async def _later(value):
    await asyncio.sleep(0.01)
    return value


def _sleep(event, context):
    marker = event.query.get("marker")
    if marker:
        Path(marker).touch()
    time.sleep(float(event.query.get("s", "1")))
    return "slept"


ROUTES = {
    "/echo": lambda e, c: {
        "statusCode": 200,
        "headers": {"Content-Type": e.headers.get("Content-Type", "application/octet-stream")},
        "body": e.body,
    },
    "/headers": lambda e, c: {
        "custom": e.headers.get("x-custom"),
        "multi": e.headers.getall("X-Multi", []),
    },
    "/context": lambda e, c: {
        "function": c.function_name,
        "version": c.version,
        "request_id": c.request_id,
        "deadline": c.deadline,
        "time_left": c.time_left(),
    },
    "/json": lambda e, c: {"got": e.json()},
    "/sleep": _sleep,
    "/together": _together,
    "/hold": _hold,
    "/hold/state": lambda e, c: "holding" if holding.is_set() else "idle",
    "/hold/release": lambda e, c: release.set(),
    "/exit": lambda e, c: sys.exit(3),
    "/coroutine": lambda e, c: _later("awaited on the runtime's loop"),
    "/asyncio-run": lambda e, c: asyncio.run(_later("run on a loop of its own")),
    "/ret/str": lambda e, c: "hello ü",
    "/ret/bytes": lambda e, c: bytes([0, 1, 2, 255]),
    "/ret/none": lambda e, c: None,
    "/ret/list": lambda e, c: [1, "two", None],
    "/ret/int": lambda e, c: 42,
    "/ret/bool": lambda e, c: False,
    "/ret/dict": lambda e, c: {"plain": "dict", "n": 1},
    "/ret/response": lambda e, c: {
        "statusCode": 201,
        "headers": {"X-Answer": "42", "Content-Type": "text/csv"},
        "body": "a,b\\n1,2\\n",
    },
    "/ret/response-json": lambda e, c: {"statusCode": 202, "body": {"queued": True}},
    "/ret/response-bytes": lambda e, c: {"statusCode": 200, "body": b"\\x00raw"},
    "/ret/response-empty": lambda e, c: {"statusCode": 200},
    "/ret/base64": lambda e, c: {
        "statusCode": 200,
        "headers": {"Content-Type": "image/png"},
        "body": base64.b64encode(b"\\x89PNG\\x00").decode(),
        "isBase64Encoded": True,
    },
    "/ret/bad-status": lambda e, c: {"statusCode": "teapot"},
    "/ret/unserializable": lambda e, c: {"a set": {1, 2}},
}


def handle(event, context):
    if event.path == "/raise":
        raise ValueError("boom from the handler")
    route = ROUTES.get(event.path)
    if route is None:
        return {
            "greeting": "hello " + event.query.get("name", "world"),
            "tags": event.query.getall("tag", []),
            "method": event.method,
            "path": event.path,
            "body": event.body.decode(),
        }
    return route(event, context)
"""

ASYNC_HANDLER = """
import asyncio

arrived = 0
everyone = None


async def handle(event, context):
    global arrived, everyone
    together = int(event.query.get("together", "0"))
    if together:  # wait until that many calls run at once
        everyone = everyone or asyncio.Event()
        arrived += 1
        if arrived >= together:
            everyone.set()
        try:
            await asyncio.wait_for(everyone.wait(), 30)
        except asyncio.TimeoutError:
            return {"alone": True}
    await asyncio.sleep(float(event.query.get("s", "0")))
    return {"async": True, "path": event.path, "request_id": context.request_id}
"""

EVENT_ONLY_HANDLER = """
def handle(event):
    return {"only_event": True, "name": event.query.get("name", "world")}
"""

MAX_BODY = 1024 * 1024


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    code = write_files(tmp_path_factory.mktemp("main") / "function", {"handler.py": HANDLER})
    env = {
        "KAPAL_CODE_DIR": str(code),
        "KAPAL_FUNCTION": "hello",
        "KAPAL_VERSION": "3",
        "KAPAL_TIMEOUT_S": "30",
        "KAPAL_MAX_BODY_BYTES": str(MAX_BODY),
    }
    process = start_runtime(code, env)
    yield process
    process.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def get_json(
    http: aiohttp.ClientSession, url: str, **kwargs: object
) -> tuple[int, object, aiohttp.ClientResponse]:
    async with http.get(url, **kwargs) as resp:  # type: ignore[arg-type]
        return resp.status, await resp.json(), resp


async def wait_for_file(path: Path, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if path.exists():  # noqa: ASYNC240 (a stat of a local temp file)
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never appeared: the handler did not start")


def error_of(body: object) -> dict[str, str]:
    assert isinstance(body, dict), body
    error = body["error"]
    assert isinstance(error, dict)
    return error


# --- health, routing --------------------------------------------------------------------


async def test_health_is_ok_once_loaded(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    status, body, resp = await get_json(http, f"{runtime.url}/_/health")
    assert (status, body) == (
        200,
        {"status": "ok", "function": "hello", "version": 3, "in_flight": 0},
    )
    assert resp.headers["X-Kapal-Request-Id"]


async def test_health_counts_invocations_in_flight(
    runtime: RuntimeProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    slow = asyncio.create_task(http.get(f"{runtime.url}/sleep?s=0.5&marker={marker}"))
    try:
        await wait_for_file(marker)
        _, body, _ = await get_json(http, f"{runtime.url}/_/health")
        assert isinstance(body, dict)
        assert body["in_flight"] == 1
    finally:
        (await slow).release()
    _, body, _ = await get_json(http, f"{runtime.url}/_/health")
    assert isinstance(body, dict)
    assert body["in_flight"] == 0


async def test_unknown_runtime_path_is_404_json(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    status, body, resp = await get_json(http, f"{runtime.url}/_/nope")
    assert status == 404
    assert error_of(body)["code"] == "not_found"
    assert resp.headers["X-Kapal-Error"] == "runtime"


async def test_wrong_method_on_runtime_path_is_405(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{runtime.url}/_/init") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        assert error_of(await resp.json())["code"] == "method_not_allowed"


async def test_init_is_refused_when_not_prewarm(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    init = {"function": "f", "version": 1, "code": tar_gz_b64({"handler.py": ""})}
    async with http.post(f"{runtime.url}/_/init", json=init) as resp:
        assert resp.status == 409
        assert error_of(await resp.json())["code"] == "already_initialized"


# --- the request as the handler sees it -------------------------------------------------


async def test_get_with_query(runtime: RuntimeProcess, http: aiohttp.ClientSession) -> None:
    url = f"{runtime.url}/some/path?name=kapal&tag=a&tag=b"
    status, body, resp = await get_json(http, url)
    assert status == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert body == {
        "greeting": "hello kapal",
        "tags": ["a", "b"],
        "method": "GET",
        "path": "/some/path",
        "body": "",
    }


async def test_any_method_and_root_path(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    async with http.request("PATCH", f"{runtime.url}/", data=b"patched") as resp:
        body = await resp.json()
    assert body["method"] == "PATCH"
    assert body["path"] == "/"
    assert body["greeting"] == "hello world"
    assert body["body"] == "patched"


async def test_binary_body_round_trip(runtime: RuntimeProcess, http: aiohttp.ClientSession) -> None:
    payload = bytes(range(256)) * 4
    headers = {"Content-Type": "application/x-test"}
    async with http.post(f"{runtime.url}/echo", data=payload, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/x-test"
        assert await resp.read() == payload


async def test_headers_pass_through_case_insensitively(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    headers = CIMultiDict([("X-Custom", "value 1"), ("x-multi", "a"), ("x-multi", "b")])
    status, body, _ = await get_json(http, f"{runtime.url}/headers", headers=headers)
    assert status == 200
    assert body == {"custom": "value 1", "multi": ["a", "b"]}


async def test_body_over_the_limit_is_413(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{runtime.url}/echo", data=b"x" * (MAX_BODY + 1)) as resp:
        assert resp.status == 413
        assert error_of(await resp.json())["code"] == "body_too_large"


async def test_bad_json_body_is_400(runtime: RuntimeProcess, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{runtime.url}/json", data=b"{not json") as resp:
        assert resp.status == 400
        error = error_of(await resp.json())
        assert error["code"] == "invalid_json"
        assert "not valid JSON" in error["message"]
    async with http.post(f"{runtime.url}/json", json={"a": [1, 2]}) as resp:
        assert await resp.json() == {"got": {"a": [1, 2]}}


# --- context ----------------------------------------------------------------------------


async def test_context_takes_request_id_and_deadline_from_headers(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    deadline = time.time() + 100
    headers = {"X-Kapal-Request-Id": "req-123", "X-Kapal-Deadline": f"{deadline:.6f}"}
    status, body, resp = await get_json(http, f"{runtime.url}/context", headers=headers)
    assert status == 200
    assert isinstance(body, dict)
    assert body["function"] == "hello"
    assert body["version"] == 3
    assert body["request_id"] == "req-123"
    assert resp.headers["X-Kapal-Request-Id"] == "req-123"
    assert body["deadline"] == pytest.approx(deadline, abs=1e-3)
    assert 90 < body["time_left"] <= 100


async def test_context_defaults_without_headers(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    status, body, resp = await get_json(http, f"{runtime.url}/context")
    assert status == 200
    assert isinstance(body, dict)
    assert len(body["request_id"]) == 32
    assert resp.headers["X-Kapal-Request-Id"] == body["request_id"]
    assert 20 < body["time_left"] <= 30  # KAPAL_TIMEOUT_S


async def test_past_deadline_is_504_at_once(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    headers = {"X-Kapal-Deadline": str(time.time() - 5)}
    async with http.get(f"{runtime.url}/context", headers=headers) as resp:
        assert resp.status == 504


async def test_deadline_exceeded_is_504(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    headers = {"X-Kapal-Deadline": str(time.time() + 0.3)}
    async with http.get(f"{runtime.url}/sleep?s=1.5", headers=headers) as resp:
        assert resp.status == 504
        assert resp.headers["X-Kapal-Error"] == "timeout"
        assert error_of(await resp.json())["code"] == "timeout"


# --- return values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "content_type", "body"),
    [
        ("/ret/str", 200, "text/plain; charset=utf-8", "hello ü".encode()),
        ("/ret/bytes", 200, "application/octet-stream", bytes([0, 1, 2, 255])),
        ("/ret/none", 204, None, b""),
        ("/ret/list", 200, "application/json", b'[1,"two",null]'),
        ("/ret/int", 200, "application/json", b"42"),
        ("/ret/bool", 200, "application/json", b"false"),
        ("/ret/dict", 200, "application/json", b'{"plain":"dict","n":1}'),
        ("/ret/response", 201, "text/csv", b"a,b\n1,2\n"),
        ("/ret/response-json", 202, "application/json", b'{"queued":true}'),
        ("/ret/response-bytes", 200, "application/octet-stream", b"\x00raw"),
        ("/ret/response-empty", 200, None, b""),
        ("/ret/base64", 200, "image/png", b"\x89PNG\x00"),
    ],
)
async def test_return_values(
    runtime: RuntimeProcess,
    http: aiohttp.ClientSession,
    path: str,
    status: int,
    content_type: str | None,
    body: bytes,
) -> None:
    async with http.get(runtime.url + path) as resp:
        assert resp.status == status
        assert await resp.read() == body
        if content_type is not None:
            assert resp.headers["Content-Type"] == content_type
        elif body == b"":
            assert resp.headers.get("Content-Length", "0") == "0"
        assert "X-Kapal-Error" not in resp.headers
        assert resp.headers["X-Kapal-Request-Id"]


async def test_response_dict_headers_reach_the_caller(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{runtime.url}/ret/response") as resp:
        assert resp.headers["X-Answer"] == "42"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/ret/bad-status", "statusCode must be an int in 200..599, not 'teapot'"),
        ("/ret/unserializable", "not JSON serializable"),
    ],
)
async def test_bad_return_values_are_500(
    runtime: RuntimeProcess, http: aiohttp.ClientSession, path: str, message: str
) -> None:
    async with http.get(runtime.url + path) as resp:
        assert resp.status == 500
        assert resp.headers["X-Kapal-Error"] == "handler"
        error = error_of(await resp.json())
    assert error["code"] == "handler_error"
    assert error["message"].startswith("InvalidReturnValue: ")
    assert message in error["message"]


# --- errors -----------------------------------------------------------------------------


async def test_handler_exception_is_500_and_server_keeps_serving(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    headers = {"X-Kapal-Request-Id": "boom-1"}
    async with http.post(f"{runtime.url}/raise", headers=headers) as resp:
        assert resp.status == 500
        assert resp.headers["X-Kapal-Error"] == "handler"
        assert resp.headers["X-Kapal-Request-Id"] == "boom-1"
        text = await resp.text()
    assert json.loads(text) == {
        "error": {
            "code": "handler_error",
            "message": "ValueError: boom from the handler",
            "request_id": "boom-1",
        }
    }
    assert "Traceback" not in text
    # The traceback is one entry of the function's logs, tagged with the request id.
    (entry,) = await runtime.rows_of(http, "boom-1")
    assert (entry.stream, entry.level) == ("stderr", "error")
    assert entry.text.startswith("Traceback (most recent call last):\n")
    assert entry.text.endswith("\nValueError: boom from the handler")
    assert 'handler.py", line' in entry.text  # the user's frame is in the logs
    assert "kapal_runtime" not in entry.text  # the runtime's own frames are not

    status, body, _ = await get_json(http, f"{runtime.url}/after")
    assert status == 200
    assert isinstance(body, dict)
    assert body["path"] == "/after"


async def test_handler_calling_sys_exit_does_not_stop_the_server(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{runtime.url}/exit") as resp:
        assert resp.status == 500
        assert error_of(await resp.json())["message"] == "SystemExit: 3"
    async with http.get(f"{runtime.url}/_/health") as resp:
        assert resp.status == 200


async def test_sync_handlers_run_concurrently(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    async def call() -> tuple[int, str]:
        async with http.get(f"{runtime.url}/together") as resp:
            return resp.status, await resp.text()

    # All 20 wait at one barrier: run one after another, none would get past it.
    assert await asyncio.gather(*(call() for _ in range(20))) == [(200, "together")] * 20


async def test_sync_handlers_may_return_a_coroutine_or_run_a_loop_of_their_own(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    # A sync handler is called while the runtime's loop is stopped, on the loop's thread:
    # waiting for the loop must not deadlock, and that thread must be free for a new loop.
    for path, text in [
        ("/coroutine", "awaited on the runtime's loop"),
        ("/asyncio-run", "run on a loop of its own"),
    ]:
        for _ in range(3):
            async with http.get(f"{runtime.url}{path}") as resp:
                assert (resp.status, await resp.text()) == (200, text)


async def test_a_sync_handler_blocking_after_fast_calls_stalls_no_other_request(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    # Its own runtime, so the fast calls are the whole history of this handler.
    code = write_files(tmp_path / "function", {"handler.py": HANDLER})
    process = start_runtime(code, {"KAPAL_CODE_DIR": str(code), "KAPAL_CONCURRENCY": "4"})
    try:
        for _ in range(50):
            async with http.get(f"{process.url}/ret/str") as resp:
                assert resp.status == 200
        held = asyncio.create_task(http.get(f"{process.url}/hold"))
        state = "idle"
        for _ in range(500):
            async with http.get(f"{process.url}/hold/state") as resp:
                state = await resp.text()
            if state == "holding" or held.done():
                break
            await asyncio.sleep(0.01)
        assert state == "holding"  # answered while the blocked handler holds its thread
        async with http.get(f"{process.url}/hold/release") as resp:
            assert resp.status == 204
        async with await held as resp:
            assert (resp.status, await resp.text()) == (200, "released")
    finally:
        process.stop()


# --- concurrency limit -----------------------------------------------------------------


async def http_exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
) -> tuple[int, dict[str, str], bytes]:
    """One request on a raw connection, so a test sees whether the connection is kept."""
    writer.write(head)
    await writer.drain()
    status_line = await reader.readline()
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


def get_head(target: str, *extra: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: runtime", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[RuntimeProcess]:
    code = write_files(tmp_path / "function", {"handler.py": HANDLER})
    env = {"KAPAL_CODE_DIR": str(code), "KAPAL_FUNCTION": "lim", "KAPAL_CONCURRENCY": "1"}
    process = start_runtime(code, env)
    yield process
    assert process.stop() == 0


async def test_past_the_concurrency_limit_is_503_busy_at_once_on_a_kept_connection(
    limited: RuntimeProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    marker, not_run = tmp_path / "started", tmp_path / "not-run"
    slow = asyncio.create_task(http.get(f"{limited.url}/sleep?s=1&marker={marker}"))
    await wait_for_file(marker)
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
    try:
        head = get_head(f"/sleep?s=0&marker={not_run}", "X-Kapal-Request-Id: busy-1")
        status, headers, body = await http_exchange(reader, writer, head)
        assert not slow.done()  # answered while the limit's one invocation still runs
        assert status == 503
        assert headers["x-kapal-error"] == "busy"
        assert json.loads(body) == {
            "error": {
                "code": "busy",
                "message": "this instance already runs its limit of 1 invocations",
                "request_id": "busy-1",
            }
        }
        assert not not_run.exists()  # the handler was not called
        async with await slow as resp:
            assert resp.status == 200
        # The same connection serves the next invocation once a slot is free.
        status, _, body = await http_exchange(reader, writer, get_head("/ret/str"))
        assert (status, body) == (200, "hello ü".encode())
    finally:
        writer.close()


async def test_busy_does_not_wait_for_a_large_body(
    limited: RuntimeProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    slow = asyncio.create_task(http.get(f"{limited.url}/sleep?s=1&marker={marker}"))
    await wait_for_file(marker)
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
    try:
        # Headers only: the 10 MB body is never sent, and the answer must not wait for it.
        head = b"POST /echo HTTP/1.1\r\nHost: runtime\r\nContent-Length: 10000000\r\n\r\n"
        status, headers, _ = await http_exchange(reader, writer, head)
        assert not slow.done()
        assert (status, headers["x-kapal-error"]) == (503, "busy")
        assert headers["connection"] == "close"  # rather than read 10 MB to keep it
    finally:
        writer.close()
        (await slow).release()


async def test_health_and_limit_of_a_busy_runtime(
    limited: RuntimeProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    slow = asyncio.create_task(http.get(f"{limited.url}/sleep?s=0.5&marker={marker}"))
    await wait_for_file(marker)
    try:
        status, body, _ = await get_json(http, f"{limited.url}/_/health")
        assert (status, body) == (
            200,
            {"status": "ok", "function": "lim", "version": 0, "in_flight": 1},
        )
    finally:
        (await slow).release()


# --- handler shapes ---------------------------------------------------------------------


async def test_async_handler_in_a_dotted_module(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    code = write_files(
        tmp_path / "function",
        {"pkg/__init__.py": "", "pkg/fns.py": ASYNC_HANDLER},
    )
    process = start_runtime(code, {"KAPAL_CODE_DIR": str(code), "KAPAL_HANDLER": "pkg.fns.handle"})
    try:

        async def call(i: int) -> object:
            headers = {"X-Kapal-Request-Id": f"r{i}"}
            async with http.get(f"{process.url}/x/{i}?together=20", headers=headers) as resp:
                assert resp.status == 200
                return await resp.json()

        # All 20 wait for each other: run one after another, none would finish.
        bodies = await asyncio.gather(*(call(i) for i in range(20)))
        assert bodies == [
            {"async": True, "path": f"/x/{i}", "request_id": f"r{i}"} for i in range(20)
        ]
        assert (await process.event(http, "handler_loaded"))["is_async"] is True

        # Late async handlers are cancelled; the server goes on.
        headers = {"X-Kapal-Deadline": str(time.time() + 0.3)}
        async with http.get(f"{process.url}/late?s=5", headers=headers) as resp:
            assert resp.status == 504
        async with http.get(f"{process.url}/after?s=0") as resp:
            assert resp.status == 200
    finally:
        assert process.stop() == 0


async def test_handler_taking_only_the_event(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    code = write_files(tmp_path / "function", {"main.py": EVENT_ONLY_HANDLER})
    process = start_runtime(code, {"KAPAL_CODE_DIR": str(code), "KAPAL_HANDLER": "main.handle"})
    try:
        status, body, _ = await get_json(http, f"{process.url}/?name=ev")
        assert (status, body) == (200, {"only_event": True, "name": "ev"})
    finally:
        assert process.stop() == 0


@pytest.mark.parametrize(
    ("files", "spec", "message"),
    [
        ({}, "missing.handle", "ModuleNotFoundError: No module named 'missing'"),
        ({"broken.py": "def handle(event:\n"}, "broken.handle", "SyntaxError: "),
        ({"broken.py": "raise RuntimeError('no db')\n"}, "broken.handle", "RuntimeError: no db"),
        ({"broken.py": "x = 1\n"}, "broken.handle", "AttributeError: "),
        (
            {"broken.py": "handle = 5\n"},
            "broken.handle",
            "TypeError: broken.handle is not callable",
        ),
        (
            {"broken.py": "def handle(a, b, c):\n    pass\n"},
            "broken.handle",
            "TypeError: broken.handle must accept (event, context) or (event)",
        ),
    ],
)
async def test_load_failure_answers_500_everywhere(
    tmp_path: Path,
    http: aiohttp.ClientSession,
    files: dict[str, str],
    spec: str,
    message: str,
) -> None:
    code = write_files(tmp_path / "function", files)
    process = start_runtime(code, {"KAPAL_CODE_DIR": str(code), "KAPAL_HANDLER": spec})
    try:
        for method, path in [("GET", "/_/health"), ("POST", "/"), ("GET", "/any/path")]:
            async with http.request(method, process.url + path) as resp:
                assert resp.status == 500
                assert resp.headers["X-Kapal-Error"] == "load"
                error = error_of(await resp.json())
            assert error["code"] == "handler_load_failed"
            assert error["message"].startswith(message)
            assert "\n" not in error["message"]
        failed = await process.event(http, "handler_load_failed")
        assert str(failed["error"]).startswith(message)
        tracebacks = [r for r in process.pulled if r.stream == "stderr" and r.level == "error"]
        assert tracebacks[0].text.startswith("Traceback (most recent call last):\n")
        assert tracebacks[0].request_id is None
    finally:
        assert process.stop() == 0


# --- prewarm and /_/init ----------------------------------------------------------------

INIT_HANDLER = """
import os

import greeting


def handle(event, context):
    return {
        "message": greeting.greet(event.query.get("name", "world")),
        "secret": os.environ.get("SECRET"),
        "function": context.function_name,
        "version": context.version,
        "cwd": os.getcwd(),
    }
"""


def init_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "function": "greeter",
        "version": 7,
        "handler": "app.handle",
        "env": {"SECRET": "s3cret"},
        "code": tar_gz_b64({"app.py": INIT_HANDLER}),
        "deps": tar_gz_b64({"greeting/__init__.py": "def greet(n):\n    return 'hi ' + n\n"}),
    }
    body.update(overrides)
    return body


@pytest.fixture
def prewarm(tmp_path: Path) -> Iterator[RuntimeProcess]:
    code = tmp_path / "sandbox" / "function"
    env = {
        "KAPAL_PREWARM": "1",
        "KAPAL_CODE_DIR": str(code),
        "KAPAL_DEPS_DIR": str(tmp_path / "sandbox" / "deps"),
    }
    process = start_runtime(code, env)
    yield process
    assert process.stop() == 0


async def test_prewarm_then_init_then_invoke(
    prewarm: RuntimeProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    url = prewarm.url
    status, body, _ = await get_json(http, f"{url}/_/health")
    assert (status, body) == (200, {"status": "prewarm", "in_flight": 0})
    async with http.get(f"{url}/") as resp:
        assert resp.status == 503
        assert error_of(await resp.json())["code"] == "not_initialized"

    async with http.post(f"{url}/_/init", json=init_body()) as resp:
        assert resp.status == 200, await resp.text()
        ok = {"status": "ok", "function": "greeter", "version": 7, "in_flight": 0}
        assert await resp.json() == ok

    status, body, _ = await get_json(http, f"{url}/_/health")
    assert (status, body) == (200, ok)
    status, body, _ = await get_json(http, f"{url}/hi?name=kapal")
    assert status == 200
    assert body == {
        "message": "hi kapal",
        "secret": "s3cret",
        "function": "greeter",
        "version": 7,
        "cwd": str(tmp_path / "sandbox" / "function"),
    }

    async with http.post(f"{url}/_/init", json=init_body()) as resp:
        assert resp.status == 409
        assert error_of(await resp.json())["code"] == "already_initialized"
    initialized = await prewarm.event(http, "initialized")
    assert (initialized["function"], initialized["version"], initialized["ok"]) == (
        "greeter",
        7,
        True,
    )


async def test_init_sets_the_concurrency_limit(
    prewarm: RuntimeProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    code = tar_gz_b64({"app.py": HANDLER})
    body = init_body(code=code, deps=None, handler="app.handle", concurrency=1)
    async with http.post(f"{prewarm.url}/_/init", json=body) as resp:
        assert resp.status == 200, await resp.text()
    marker = tmp_path / "started"
    slow = asyncio.create_task(http.get(f"{prewarm.url}/sleep?s=1&marker={marker}"))
    try:
        await wait_for_file(marker)
        async with http.get(f"{prewarm.url}/ret/str") as resp:
            assert (resp.status, resp.headers["X-Kapal-Error"]) == (503, "busy")
    finally:
        (await slow).release()
    async with http.get(f"{prewarm.url}/ret/str") as resp:
        assert resp.status == 200


def unpacked_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*.py") if path.is_file()]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (init_body(code=tar_gz_b64({"../escape.py": "x = 1\n"})), "escapes the target"),
        (init_body(code=tar_gz_b64({"/abs.py": "x = 1\n"})), "absolute path"),
        (init_body(deps=tar_gz_b64({"../../escape.py": "x = 1\n"})), "escapes the target"),
        (init_body(code="not base64!"), "code is not valid base64"),
        (init_body(code=base64.b64encode(b"not a tar").decode()), "not a valid tar archive"),
        (init_body(version="7"), "version must be"),
        (init_body(function=None), "function must be"),
        (init_body(env={"A": 1}), "env A must be a string"),
        (init_body(concurrency=-1), "concurrency must be a non-negative integer"),
        (init_body(concurrency="2"), "concurrency must be a non-negative integer"),
        (init_body(handler="nodots"), "is not of the form"),
        ([1, 2], "body must be a JSON object"),
    ],
)
async def test_bad_init_is_400_and_leaves_the_runtime_prewarm(
    prewarm: RuntimeProcess,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    body: object,
    message: str,
) -> None:
    async with http.post(f"{prewarm.url}/_/init", json=body) as resp:
        assert resp.status == 400
        assert resp.headers["X-Kapal-Error"] == "init"
        error = error_of(await resp.json())
    assert error["code"] == "invalid_init"
    assert message in error["message"]
    assert unpacked_files(tmp_path) == []

    # Nothing was claimed: a good init still works.
    async with http.post(f"{prewarm.url}/_/init", json=init_body()) as resp:
        assert resp.status == 200


async def test_init_with_unloadable_handler_is_500(
    prewarm: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    body = init_body(handler="app.nope")
    async with http.post(f"{prewarm.url}/_/init", json=body) as resp:
        assert resp.status == 500
        assert resp.headers["X-Kapal-Error"] == "load"
        assert error_of(await resp.json())["code"] == "handler_load_failed"
    async with http.get(f"{prewarm.url}/_/health") as resp:
        assert resp.status == 500
    async with http.post(f"{prewarm.url}/_/init", json=init_body()) as resp:
        assert resp.status == 409


async def test_init_without_json_is_400(
    prewarm: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{prewarm.url}/_/init", data=b"{oops") as resp:
        assert resp.status == 400
        assert "not valid JSON" in error_of(await resp.json())["message"]


def test_bad_config_exits_2_naming_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPAL_")}
    env.update(PYTHONPATH=str(RUNTIME_DIR), KAPAL_TIMEOUT_S="soon")
    done = subprocess.run(
        [sys.executable, "-m", "kapal_runtime"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    line = json.loads(done.stderr.strip().splitlines()[-1])
    assert line["event"] == "config_invalid"
    assert "KAPAL_TIMEOUT_S='soon'" in line["error"]


# --- shutdown ---------------------------------------------------------------------------


async def test_sigterm_drains_in_flight_requests_and_exits_0(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    code = write_files(tmp_path / "function", {"handler.py": HANDLER})
    env = {"KAPAL_CODE_DIR": str(code), "KAPAL_TIMEOUT_S": "10", "KAPAL_LOG_DRAIN_S": "10"}
    process = start_runtime(code, env)
    await process.pull(http, 0)  # a gateway collects from it
    marker = tmp_path / "started"

    async def slow() -> tuple[int, str]:
        async with http.get(f"{process.url}/sleep?s=1&marker={marker}") as resp:
            return resp.status, await resp.text()

    try:
        request = asyncio.create_task(slow())
        for _ in range(500):
            if marker.exists():
                break
            await asyncio.sleep(0.01)
        assert marker.exists(), "the slow request never reached the handler"
        process.proc.send_signal(signal.SIGTERM)

        assert await request == (200, "slept")
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(f"{process.url}/_/health"):
                pass
        # The log port is still open: the gateway pulls the last lines, then it exits.
        await process.event(http, "stopped")
        await process.ack(http)
        assert await asyncio.to_thread(process.proc.wait, 15) == 0
        assert process.stderr() == ""  # every line was pulled: none written to stderr
    finally:
        process.stop()


async def test_sigterm_drain_is_bounded_by_the_timeout(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    code = write_files(tmp_path / "function", {"handler.py": HANDLER})
    process = start_runtime(code, {"KAPAL_CODE_DIR": str(code), "KAPAL_TIMEOUT_S": "1"})
    marker = tmp_path / "started"
    # The caller's deadline is far away, but the drain only waits KAPAL_TIMEOUT_S.
    headers = {"X-Kapal-Deadline": str(time.time() + 600)}

    async def stuck() -> None:
        async with http.get(f"{process.url}/sleep?s=60&marker={marker}", headers=headers):
            pass

    request = asyncio.create_task(stuck())
    try:
        for _ in range(500):
            if marker.exists():
                break
            await asyncio.sleep(0.01)
        process.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.proc.wait, 20) == 0
        with pytest.raises(aiohttp.ClientError):
            await request
    finally:
        request.cancel()
        process.stop()


# --- other interpreters and loops -------------------------------------------------------


async def test_uvloop_event_loop(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    pytest.importorskip("uvloop")
    code = write_files(tmp_path / "function", {"handler.py": HANDLER})
    process = start_runtime(code, {"KAPAL_CODE_DIR": str(code), "KAPAL_EVENT_LOOP": "uvloop"})
    try:
        status, body, _ = await get_json(http, f"{process.url}/ret/dict")
        assert (status, body) == (200, {"plain": "dict", "n": 1})
        assert (await process.event(http, "started"))["loop"] == "uvloop"
    finally:
        assert process.stop() == 0


DEBIAN_PYTHON = Path("/usr/bin/python3")


@pytest.mark.skipif(not DEBIAN_PYTHON.exists(), reason="no system python3")
async def test_system_python_prewarm_and_init(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """Debian 12's python3 is 3.11.2, without tarfile's extraction filters."""
    import aiohttp as client_lib

    site_packages = str(Path(client_lib.__file__).parents[1])
    code = tmp_path / "function"
    env = {"KAPAL_PREWARM": "1", "KAPAL_CODE_DIR": str(code), "KAPAL_DEPS_DIR": str(tmp_path)}
    try:
        process = start_runtime(code, env, str(DEBIAN_PYTHON), [site_packages])
    except RuntimeError as exc:
        if sys.version_info[:2] != (3, 11) or "ModuleNotFoundError" in str(exc):
            pytest.skip(f"system python3 cannot import the venv's aiohttp: {exc}")
        raise
    try:
        bad = init_body(code=tar_gz_b64({"../escape.py": ""}))
        async with http.post(f"{process.url}/_/init", json=bad) as resp:
            assert resp.status == 400
        async with http.post(f"{process.url}/_/init", json=init_body()) as resp:
            assert resp.status == 200, await resp.text()
        status, body, _ = await get_json(http, f"{process.url}/?name=deb")
        assert status == 200
        assert isinstance(body, dict)
        assert body["message"] == "hi deb"
    finally:
        assert process.stop() == 0
