"""Streamed bodies and websockets in the Python runtime, run as the container runs it."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from runtime_python_support import RuntimeProcess, start_runtime, write_files

HANDLER = """
import asyncio
import time

# Set by a call to /release: the stream it holds goes on only then.
released = None


def _release():
    global released
    released = released or asyncio.Event()
    return released


async def events(context):
    yield "data: first\\n\\n"
    await _release().wait()
    yield f"data: second {context.request_id}\\n\\n"


def chunks():
    for i in range(3):
        time.sleep(0.01)  # blocking is fine: sync generators advance on the threads
        yield b"chunk %d;" % i


def broken():
    yield "partial"
    raise ValueError("broke mid-stream")


async def handle(event, context):
    if event.path == "/sse":
        return {
            "statusCode": 200,
            "headers": {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
            "body": events(context),
        }
    if event.path == "/release":
        _release().set()
        return "released"
    if event.path == "/chunks":
        return chunks()
    if event.path == "/text":
        return (word for word in ["a ", "b ", "c"])
    if event.path == "/broken":
        return broken()
    if event.path == "/bad-item":
        return iter([{"not": "bytes"}])
    return "plain"


async def websocket(ws, context):
    if ws.event.query.get("refuse"):
        return
    if ws.event.query.get("fail"):
        raise RuntimeError("refused by failing")
    await ws.accept(subprotocol="echo" if "echo" in ws.subprotocols else None)
    await ws.send(f"hello {ws.event.path} {context.request_id}")
    async for message in ws:
        if message == "bye":
            await ws.close(4000, "asked to")
            return
        await ws.send(message)
"""

PLAIN = """
def handle(event, context):
    return "no websockets here"
"""


def runtime_for(root: Path, handler: str) -> Iterator[RuntimeProcess]:
    code = write_files(root / "function", {"handler.py": handler})
    process = start_runtime(code, {"KAPAL_CODE_DIR": str(code), "KAPAL_FUNCTION": "streamer"})
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    yield from runtime_for(tmp_path_factory.mktemp("stream"), HANDLER)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def test_an_sse_event_arrives_while_the_handler_still_waits(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{runtime.url}/sse", headers={"X-Kapal-Request-Id": "r-sse"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert resp.headers["X-Kapal-Request-Id"] == "r-sse"
        # The handler cannot go past its first event until /release is called.
        assert await resp.content.readuntil(b"\n\n") == b"data: first\n\n"
        async with http.get(f"{runtime.url}/release") as released:
            assert await released.text() == "released"
        assert await resp.content.read() == b"data: second r-sse\n\n"


async def test_a_sync_generator_is_sent_chunked(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{runtime.url}/chunks") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert await resp.read() == b"chunk 0;chunk 1;chunk 2;"
    async with http.get(f"{runtime.url}/text") as resp:
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert await resp.text() == "a b c"


async def test_a_head_of_a_stream_has_no_body_and_keeps_the_connection(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    async with http.head(f"{runtime.url}/chunks") as resp:
        assert resp.status == 200 and await resp.read() == b""
    async with http.get(f"{runtime.url}/plain") as resp:
        assert await resp.text() == "plain"


async def test_a_stream_that_fails_midway_ends_cut_short_and_a_bad_first_item_is_500(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{runtime.url}/broken") as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    async with http.get(f"{runtime.url}/bad-item") as resp:
        assert resp.status == 500
        error = (await resp.json())["error"]
        assert error["code"] == "handler_error" and "not dict" in error["message"]


async def test_a_websocket_echoes_until_the_handler_closes_it(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    headers = {"X-Kapal-Request-Id": "r-ws"}
    async with http.ws_connect(
        f"{runtime.url}/room?x=1", headers=headers, protocols=("chat", "echo")
    ) as ws:
        assert ws.protocol == "echo"
        assert await ws.receive_str() == "hello /room r-ws"
        await ws.send_str("ping")
        assert await ws.receive_str() == "ping"
        await ws.send_bytes(b"\x00\xff")
        assert await ws.receive_bytes() == b"\x00\xff"
        await ws.send_str("bye")
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 4000


async def upgrade_refused(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str]]:
    """A websocket handshake sent as a plain GET: the status and error of its refusal."""
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    async with http.get(url, headers=headers) as resp:
        assert resp.headers["Connection"] == "close"  # what follows may be frames
        return resp.status, (await resp.json())["error"]


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [("refuse=1", 403, "websocket_refused"), ("fail=1", 500, "handler_error")],
)
async def test_a_websocket_refused_or_failing_before_accept_is_an_error_answer(
    runtime: RuntimeProcess, http: aiohttp.ClientSession, query: str, status: int, code: str
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await http.ws_connect(f"{runtime.url}/room?{query}")
    assert caught.value.status == status
    answered, error = await upgrade_refused(http, f"{runtime.url}/room?{query}")
    assert (answered, error["code"]) == (status, code)
    async with http.get(f"{runtime.url}/plain") as resp:  # the runtime serves on
        assert await resp.text() == "plain"


async def test_a_function_without_websocket_answers_400(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    for process in runtime_for(tmp_path, PLAIN):
        status, error = await upgrade_refused(http, f"{process.url}/")
        assert (status, error["code"]) == (400, "websocket_not_supported")
        assert "does not accept websockets" in error["message"]
        async with http.get(f"{process.url}/") as resp:
            assert await resp.text() == "no websockets here"


FOREVER = """
import asyncio


async def handle(event, context):
    async def ticks():
        yield "tick\\n"
        await asyncio.Event().wait()  # never set: only the deadline ends it
    return ticks()


async def websocket(ws, context):
    await ws.accept()
    await asyncio.Event().wait()
"""


async def test_past_the_deadline_a_stream_is_cut_and_a_websocket_closed_with_1001(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    code = write_files(tmp_path / "function", {"handler.py": FOREVER})
    env = {"KAPAL_CODE_DIR": str(code), "KAPAL_TIMEOUT_S": "1"}
    process = start_runtime(code, env)
    try:
        async with http.get(f"{process.url}/") as resp:
            assert await resp.content.readline() == b"tick\n"
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        async with http.ws_connect(f"{process.url}/") as ws:
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1001
        async with http.get(f"{process.url}/_/health") as resp:
            assert (await resp.json())["in_flight"] == 0  # both slots given back
    finally:
        assert process.stop() == 0
