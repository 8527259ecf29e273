"""The function's logs, pulled from a real runtime process's log port as the gateway does."""

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from runtime_python_support import LogRow, RuntimeProcess, start_runtime, write_files

HANDLER = """
import logging
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

logging.basicConfig(level=logging.DEBUG)  # a user's call: a no-op, the root has a handler
app_log = logging.getLogger("app")
print("imported")


def _thread(event, context):
    thread = threading.Thread(target=lambda: print("from a thread"))
    thread.start()
    thread.join()
    # One that outlives the invocation keeps its tag.
    threading.Thread(target=lambda: (time.sleep(0.2), print("from a thread, later"))).start()


def _log(event, context):
    logging.warning("warned %d", 7)
    app_log.info("app info")
    logging.debug("below the level")
    try:
        1 / 0
    except ZeroDivisionError:
        app_log.exception("with a traceback")


def _fd(event, context):
    os.write(1, b"to fd 1\\n")
    os.write(2, b"to fd 2\\n")
    subprocess.run([sys.executable, "-c", "print('from a child')"], check=True)
    child = multiprocessing.get_context("fork").Process(target=print, args=("from a fork",))
    child.start()
    child.join()


def _many(event, context):
    size = int(event.query.get("size", "49"))
    for i in range(int(event.query.get("n", "100"))):
        print(f"{i:0{size}d}")


def _huge(event, context):
    print("x" * 10_000_000)
    os.write(1, b"y" * 10_000_000 + b"\\n")


def _binary(event, context):
    os.write(1, b"bad \\xff\\xfe and nul \\x00 tab\\t end\\n")
    print("nul \\x00 and \\\\ in text")
    sys.stdout.buffer.write(b"buffer \\xff \\xc3")
    sys.stdout.buffer.write(b"\\xa9\\n")  # an "\u00e9" split across two writes


def _slow(event, context):
    Path(event.query["marker"]).touch()
    time.sleep(float(event.query.get("s", "1")))
    print("finished late")
    return "done"  # 200; the others answer 204


ROUTES = {
    "/print": lambda e, c: print("printed", e.query.get("n", "")),
    "/thread": _thread,
    "/log": _log,
    "/fd": _fd,
    "/many": _many,
    "/huge": _huge,
    "/binary": _binary,
    "/partial": lambda e, c: sys.stdout.write("no newline") and None,
    "/slow": _slow,
}


def handle(event, context):
    return ROUTES[event.path](event, context)
"""

ASYNC_HANDLER = """
import asyncio

later = set()


async def handle(event, context):
    print("async printed")

    async def child(text):
        await asyncio.sleep(0.01)
        print(text)

    await asyncio.create_task(child("from a task"))
    task = asyncio.create_task(child("from a task, after the answer"))
    later.add(task)
    task.add_done_callback(later.discard)
    return "ok"
"""


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    code = write_files(tmp_path_factory.mktemp("logs") / "function", {"handler.py": HANDLER})
    env = {"KAPAL_CODE_DIR": str(code), "KAPAL_FUNCTION": "logger", "KAPAL_VERSION": "4"}
    process = start_runtime(code, env)
    yield process
    process.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def call(http: aiohttp.ClientSession, url: str, request_id: str) -> int:
    async with http.get(url, headers={"X-Kapal-Request-Id": request_id}) as resp:
        await resp.read()
        return resp.status


def lines(rows: list[LogRow]) -> list[tuple[str, str | None, str]]:
    return [(row.stream, row.level, row.text) for row in rows]


def untagged(rows: list[LogRow], text: str) -> LogRow:
    return next(row for row in rows if row.request_id is None and row.text == text)


# --- what is captured, and how it is tagged ---------------------------------------------


async def test_prints_of_a_sync_handler_are_tagged_with_its_request_id(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    assert await call(http, f"{runtime.url}/print?n=1", "sync-1") == 204
    assert await call(http, f"{runtime.url}/print?n=2", "sync-2") == 204
    assert lines(await runtime.rows_of(http, "sync-1")) == [("stdout", None, "printed 1")]
    assert lines(await runtime.rows_of(http, "sync-2")) == [("stdout", None, "printed 2")]
    imported = untagged(runtime.pulled, "imported")  # module level: no invocation
    assert imported.stream == "stdout"
    # Nothing reached the original stdout or stderr (dockerd would store it twice).
    assert (runtime.stdout(), runtime.stderr()) == ("", "")


async def test_threads_a_handler_starts_are_tagged_even_after_it_answered(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    assert await call(http, f"{runtime.url}/thread", "thread-1") == 204
    rows = await runtime.rows_of(http, "thread-1", 2)
    assert lines(rows) == [
        ("stdout", None, "from a thread"),
        ("stdout", None, "from a thread, later"),
    ]


async def test_logging_records_are_entries_of_stream_log_with_their_level(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    assert await call(http, f"{runtime.url}/log", "log-1") == 204
    rows = await runtime.rows_of(http, "log-1", 3)
    assert lines(rows[:2]) == [("log", "warning", "warned 7"), ("log", "info", "app: app info")]
    assert (rows[2].stream, rows[2].level) == ("log", "error")
    # One entry, the traceback inside it.
    assert rows[2].text.startswith("app: with a traceback\nTraceback (most recent call last):\n")
    assert rows[2].text.endswith("ZeroDivisionError: division by zero")
    assert len(rows) == 3  # debug is below KAPAL_LOG_LEVEL (info), basicConfig changed nothing


async def test_fd_writes_subprocesses_and_forks_are_captured_untagged(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    assert await call(http, f"{runtime.url}/fd", "fd-1") == 204
    texts = ("to fd 1", "to fd 2", "from a child", "from a fork")
    rows = await runtime.logs_until(
        http, lambda rows: all(any(r.text == t for r in rows) for t in texts)
    )
    assert [untagged(rows, t).stream for t in texts] == ["stdout", "stderr", "stdout", "stdout"]


async def test_a_line_left_unfinished_is_a_line_when_the_invocation_ends(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    assert await call(http, f"{runtime.url}/partial", "partial-1") == 204
    assert await call(http, f"{runtime.url}/print?n=after", "partial-2") == 204
    assert lines(await runtime.rows_of(http, "partial-1")) == [("stdout", None, "no newline")]
    assert lines(await runtime.rows_of(http, "partial-2")) == [("stdout", None, "printed after")]


async def test_an_async_handler_and_its_tasks_are_tagged(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    code = write_files(tmp_path / "function", {"handler.py": ASYNC_HANDLER})
    process = start_runtime(code, {"KAPAL_CODE_DIR": str(code)})
    try:
        for rid in ("async-1", "async-2"):
            assert await call(http, f"{process.url}/", rid) == 200
        for rid in ("async-1", "async-2"):
            assert lines(await process.rows_of(http, rid, 3)) == [
                ("stdout", None, "async printed"),
                ("stdout", None, "from a task"),
                ("stdout", None, "from a task, after the answer"),
            ]
    finally:
        assert process.stop() == 0


# --- what is escaped and cut ------------------------------------------------------------


async def test_invalid_utf8_and_nul_are_stored_escaped(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    assert await call(http, f"{runtime.url}/binary", "bin-1") == 204
    fd_line = "bad \\xff\\xfe and nul \\x00 tab\t end"
    rows = await runtime.logs_until(http, lambda rows: any(r.text == fd_line for r in rows))
    assert untagged(rows, fd_line).stream == "stdout"
    assert lines(await runtime.rows_of(http, "bin-1", 2)) == [
        ("stdout", None, "nul \\x00 and \\ in text"),
        ("stdout", None, "buffer \\xff \u00e9"),
    ]


async def test_a_ten_megabyte_line_is_cut_at_the_line_cap(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    assert await call(http, f"{runtime.url}/huge", "huge-1") == 204
    cut = 10_000_000 - 16384
    (printed,) = await runtime.rows_of(http, "huge-1")
    assert printed.text == "x" * 16384 + f"… [truncated {cut} bytes]"
    fd_line = "y" * 16384 + f"… [truncated {cut} bytes]"
    await runtime.logs_until(http, lambda rows: any(r.text == fd_line for r in rows))


async def test_an_invocation_over_its_byte_cap_writes_one_marker(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    code = write_files(tmp_path / "function", {"handler.py": HANDLER})
    env = {"KAPAL_CODE_DIR": str(code), "KAPAL_LOG_INVOCATION_BYTES": "1000"}
    process = start_runtime(code, env)
    try:
        # 100 lines of 50 bytes: 20 fit, the 21st is the marker, the rest are dropped.
        assert await call(http, f"{process.url}/many?n=100&size=49", "cap-1") == 204
        assert await call(http, f"{process.url}/print?n=next", "cap-2") == 204
        assert lines(await process.rows_of(http, "cap-2")) == [("stdout", None, "printed next")]
        rows = await process.rows_of(http, "cap-1")
        assert [row.text for row in rows[:20]] == [f"{i:049d}" for i in range(20)]
        assert lines(rows[20:]) == [
            ("runtime", "warning", "output of this invocation truncated at 1000 bytes")
        ]
        assert (await process.ack(http)).dropped == 80
    finally:
        assert process.stop() == 0


async def test_past_the_buffer_cap_lines_are_dropped_and_counted(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    code = write_files(tmp_path / "function", {"handler.py": HANDLER})
    env = {"KAPAL_CODE_DIR": str(code), "KAPAL_LOG_BUFFER_BYTES": "4096"}
    process = start_runtime(code, env)
    try:
        # Nobody pulls while 200 lines are written: the buffer keeps what fits.
        assert await call(http, f"{process.url}/many?n=200&size=20", "full-1") == 204
        first = await process.ack(http)
        assert first.dropped > 0
        assert len(first.rows) < 200
        await process.ack(http)  # all of it stored: room again
        assert await call(http, f"{process.url}/print?n=again", "full-2") == 204
        rows = await process.rows_of(http, "full-2")
        marker = process.pulled[-2]
        assert (marker.stream, marker.level, marker.request_id) == ("runtime", "warning", None)
        assert marker.text.startswith("log buffer full: ")
        assert lines(rows) == [("stdout", None, "printed again")]
    finally:
        assert process.stop() == 0


# --- the pull: acks, long polls, parameters ---------------------------------------------


async def test_after_acks_and_frees_lines(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    code = write_files(tmp_path / "function", {"handler.py": HANDLER})
    process = start_runtime(code, {"KAPAL_CODE_DIR": str(code)})
    try:
        # Prints are recorded as they are written: all five are there once it answered.
        assert await call(http, f"{process.url}/many?n=5&size=3", "ack-1") == 204
        everything = await process.pull(http, 0)
        assert [row.seq for row in everything.rows] == list(range(1, everything.last + 1))
        # Still there: after=0 acked nothing. Now the first three are stored.
        again = await process.pull(http, 3)
        assert again.rows == everything.rows[3:]
        assert (await process.pull(http, 0)).rows[0].seq == 4  # 1 to 3 are freed
        # Everything stored: an empty answer names the last acked seq.
        done = await process.pull(http, everything.last)
        assert (done.rows, done.last) == ([], everything.last)
        page = await process.pull(http, 0, limit=1)
        assert page.rows == [] and page.last == everything.last
    finally:
        assert process.stop() == 0


async def test_a_held_pull_answers_when_a_line_is_written(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    await runtime.ack(http)  # nothing is waiting to be pulled
    empty = await runtime.pull(http, runtime.cursor, wait=0.2)  # nothing comes: empty, in time
    assert empty.rows == []
    assert empty.last == runtime.cursor
    started = time.monotonic()
    held = asyncio.create_task(runtime.pull(http, runtime.cursor, wait=20))
    await asyncio.sleep(0.3)
    assert not held.done()  # held: no line yet
    assert await call(http, f"{runtime.url}/print?n=awaited", "held-1") == 204
    pull = await held
    assert time.monotonic() - started < 10  # answered by the line, long before the wait
    runtime.pulled += pull.rows
    runtime.cursor = pull.last
    assert ("held-1", "printed awaited") in [(r.request_id, r.text) for r in pull.rows]


async def test_bad_pulls_are_400_naming_the_parameter(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    for query, name in [("after=-1", "after"), ("wait=60", "wait"), ("limit=none", "limit")]:
        async with http.get(f"{runtime.logs_url}?{query}") as resp:
            assert resp.status == 400
            assert resp.headers["X-Kapal-Error"] == "request"
            body = await resp.json()
        assert body["error"]["code"] == "invalid_parameter"
        assert body["error"]["message"].startswith(f"{name} ")
    async with http.get(runtime.logs_url.replace("/_/logs", "/_/health")) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
    async with http.post(runtime.logs_url) as resp:
        assert (resp.status, resp.headers["Allow"]) == (405, "GET")


async def test_a_pull_names_the_function_it_serves(
    runtime: RuntimeProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{runtime.logs_url}?after={runtime.cursor}") as resp:
        assert resp.headers["X-Kapal-Log-Function"] == "logger"
        assert resp.headers["X-Kapal-Log-Version"] == "4"
        assert int(resp.headers["X-Kapal-Log-Dropped"]) == 0


# --- shutdown ---------------------------------------------------------------------------


async def test_lines_of_the_drain_are_pulled_after_the_main_port_closed(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    code = write_files(tmp_path / "function", {"handler.py": HANDLER})
    # A long log drain: an exit soon after the ack is the ack's doing, not the timeout's.
    env = {"KAPAL_CODE_DIR": str(code), "KAPAL_LOG_DRAIN_S": "30"}
    process = start_runtime(code, env)
    await process.pull(http, 0)  # a gateway collects from it
    marker = tmp_path / "started"
    request = asyncio.create_task(call(http, f"{process.url}/slow?s=1&marker={marker}", "late-1"))
    try:
        for _ in range(500):
            if marker.exists():
                break
            await asyncio.sleep(0.01)
        process.proc.send_signal(signal.SIGTERM)
        assert await request == 200  # it printed while the runtime drained
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(f"{process.url}/_/health"):
                pass
        assert lines(await process.rows_of(http, "late-1")) == [("stdout", None, "finished late")]
        await process.event(http, "stopped")
        started = time.monotonic()
        await process.ack(http)
        assert await asyncio.to_thread(process.proc.wait, 15) == 0
        assert time.monotonic() - started < 15  # well before the 30 s drain
        assert process.stderr() == ""  # all pulled: nothing for the last resort
    finally:
        request.cancel()
        process.stop()


async def test_with_nobody_pulling_the_runtime_exits_after_the_log_drain(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    code = write_files(tmp_path / "function", {"handler.py": HANDLER})
    env = {"KAPAL_CODE_DIR": str(code), "KAPAL_LOG_DRAIN_S": "1"}
    process = start_runtime(code, env)
    try:
        await process.pull(http, 0)  # a gateway collects from it, then goes away
        assert await call(http, f"{process.url}/print?n=unpulled", "gone-1") == 204
        started = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.proc.wait, 15) == 0
        assert time.monotonic() - started >= 1  # it waited for a pull that never came
        # The last resort: what nobody acked is on the original stderr, as rows.
        first, *rows = process.stderr().splitlines()
        assert json.loads(first)["event"] == "logs_not_pulled"
        assert any(row.endswith("\tstdout\t\\N\tgone-1\tprinted unpulled") for row in rows)
    finally:
        process.stop()


async def test_a_runtime_nobody_ever_pulled_from_does_not_wait_for_acks(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    code = write_files(tmp_path / "function", {"handler.py": HANDLER})
    env = {"KAPAL_CODE_DIR": str(code), "KAPAL_LOG_DRAIN_S": "60"}
    process = start_runtime(code, env)
    try:
        assert await call(http, f"{process.url}/print?n=unpulled", "never-1") == 204
        process.proc.send_signal(signal.SIGTERM)
        # Well before the 60 s drain (a prewarmed container nobody specialized).
        assert await asyncio.to_thread(process.proc.wait, 15) == 0
        assert "printed unpulled" in process.stderr()
    finally:
        process.stop()


async def test_with_capture_off_output_stays_on_stdout_and_stderr(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    code = write_files(tmp_path / "function", {"handler.py": HANDLER})
    process = start_runtime(code, {"KAPAL_CODE_DIR": str(code), "KAPAL_LOG_PORT": "0"})
    try:
        assert await call(http, f"{process.url}/print?n=plain", "off-1") == 204
        with pytest.raises(aiohttp.ClientConnectionError):
            await process.pull(http, 0)
    finally:
        assert process.stop() == 0
    assert "printed plain\n" in process.stdout()
    assert '"event":"stopped"' in process.stderr()
