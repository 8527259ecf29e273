"""Pure parts of the Python runtime: return-value adaptation, handler specs, archives, config."""

import asyncio
import io
import os
import stat
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from multidict import MultiDict, MultiDictProxy
from runtime_python_support import RUNTIME_DIR

# The runtime is copied into images, not installed; import it from its folder.
if str(RUNTIME_DIR) not in sys.path:
    sys.path.append(str(RUNTIME_DIR))

from kapal_runtime import bundle, config, handler
from kapal_runtime.deadlines import DeadlineWatch
from kapal_runtime.event import Context, Event, InvalidJSONBody
from kapal_runtime.threads import HandlerThreads

# --- return values ----------------------------------------------------------------------


def reply_of(value: object) -> tuple[int, dict[str, str], bytes]:
    reply = handler.to_reply(value)
    return reply.status, dict(reply.headers), reply.body


def test_plain_values() -> None:
    assert reply_of(None) == (204, {}, b"")
    assert reply_of("é") == (200, {"Content-Type": "text/plain; charset=utf-8"}, "é".encode())
    assert reply_of(bytearray(b"\x00")) == (
        200,
        {"Content-Type": "application/octet-stream"},
        b"\x00",
    )
    assert reply_of({"a": "é"}) == (200, {"Content-Type": "application/json"}, '{"a":"é"}'.encode())
    assert reply_of(0.5)[2] == b"0.5"


def test_response_dict_keeps_handler_content_type_in_any_case() -> None:
    status, headers, body = reply_of(
        {"statusCode": 404, "headers": {"content-type": "application/problem+json"}, "body": {}}
    )
    assert (status, headers, body) == (404, {"content-type": "application/problem+json"}, b"{}")


def test_response_dict_multi_value_headers_and_cookies() -> None:
    reply = handler.to_reply(
        {
            "statusCode": 200,
            "headers": {"X-One": 1},
            "multiValueHeaders": {"X-Many": ["a", "b"]},
            "cookies": ["a=1", "b=2"],
            "body": "ok",
        }
    )
    assert reply.headers.getall("X-Many") == ["a", "b"]
    assert reply.headers["X-One"] == "1"
    assert reply.headers.getall("Set-Cookie") == ["a=1", "b=2"]


def test_response_dict_drops_framing_headers() -> None:
    _, headers, _ = reply_of(
        {"statusCode": 200, "headers": {"Content-Length": "999", "Connection": "close"}}
    )
    assert headers == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"statusCode": 99}, "statusCode must be an int in 200..599"),
        ({"statusCode": 600}, "statusCode must be an int in 200..599"),
        ({"statusCode": True}, "statusCode must be an int in 200..599"),
        ({"statusCode": 200.0}, "statusCode must be an int in 200..599"),
        ({"statusCode": 200, "headers": ["X"]}, "headers must be a dict"),
        ({"statusCode": 200, "headers": {"X-A": "a\r\nX-B: b"}}, "line break"),
        ({"statusCode": 200, "headers": {"X-A": None}}, "header X-A must be a str"),
        ({"statusCode": 200, "body": "***", "isBase64Encoded": True}, "not valid base64"),
        ({"statusCode": 200, "body": {}, "isBase64Encoded": True}, "needs a str body"),
        ({"statusCode": 200, "body": object()}, "not JSON serializable"),
        ({"nan": float("nan")}, "cannot serialize"),
        (object(), "not JSON serializable"),
    ],
)
def test_invalid_return_values(value: object, message: str) -> None:
    with pytest.raises(handler.InvalidReturnValue, match=message.replace("(", r"\(")):
        handler.to_reply(value)


# --- handler specs and shapes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "parts"),
    [
        ("handler.handle", ("handler", "handle")),
        ("pkg.mod.fn", ("pkg.mod", "fn")),
        ("pkg.mod:fn", ("pkg.mod", "fn")),
    ],
)
def test_parse_spec(spec: str, parts: tuple[str, str]) -> None:
    assert handler.parse_spec(spec) == parts


@pytest.mark.parametrize("spec", ["handle", "", "a..b", "a.b-c", ".fn", "mod.", "1mod.fn"])
def test_parse_spec_refuses(spec: str) -> None:
    with pytest.raises(ValueError, match=r"module\.function"):
        handler.parse_spec(spec)


def test_load_handler_inspects_the_callable_once(tmp_path: Path) -> None:
    (tmp_path / "shapes_for_test.py").write_text(
        "import functools\n"
        "def two(event, context): return 2\n"
        "def one(event): return 1\n"
        "def star(*args): return len(args)\n"
        "async def coro(event, context): return 'c'\n"
        "class Callable:\n"
        "    async def __call__(self, event): return 'k'\n"
        "instance = Callable()\n"
        "partial = functools.partial(coro)\n"
    )
    cwd = os.getcwd()
    try:
        shapes = {
            name: handler.load_handler(f"shapes_for_test.{name}", tmp_path)
            for name in ("two", "one", "star", "coro", "instance", "partial")
        }
    finally:
        os.chdir(cwd)
        sys.path.remove(str(tmp_path))
        sys.modules.pop("shapes_for_test", None)
    assert {n: (h.takes_context, h.is_async) for n, h in shapes.items()} == {
        "two": (True, False),
        "one": (False, False),
        "star": (True, False),
        "coro": (True, True),
        "instance": (False, True),
        "partial": (True, True),
    }
    event, context = Event(), Context("f", 1, "r", time.time() + 1)
    assert shapes["one"].call(event, context) == 1
    assert shapes["star"].call(event, context) == 2


# --- event and context ------------------------------------------------------------------


def test_event_json_and_query() -> None:
    event = Event(body=b'{"a": 1}', query=MultiDictProxy(MultiDict([("t", "1"), ("t", "2")])))
    assert event.json() == {"a": 1}
    assert event.query.getall("t") == ["1", "2"]
    assert event.query.get("name", "world") == "world"
    assert event.headers.get("X-Anything") is None
    for body, message in [(b"", "empty"), (b"{", "not valid JSON"), (b"\xff", "not valid JSON")]:
        with pytest.raises(InvalidJSONBody, match=message):
            Event(body=body).json()
    assert issubclass(InvalidJSONBody, ValueError)


def test_context_time_left() -> None:
    assert 9 < Context("f", 1, "r", time.time() + 10).time_left() <= 10
    assert Context("f", 1, "r", time.time() - 10).time_left() == 0.0
    assert Context("f", 1, "r", time.time() + 2).get_remaining_time_in_millis() <= 2000


# --- deadlines --------------------------------------------------------------------------


async def test_deadline_watch_cancels_only_late_tasks() -> None:
    watch = DeadlineWatch()

    async def wait() -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return "cancelled"
        return "done"

    late, on_time = asyncio.create_task(wait()), asyncio.create_task(wait())
    await asyncio.sleep(0)  # both are now waiting
    watch.watch(late, 100.0)
    watch.watch(on_time, 200.0)
    watch.sweep(now=150.0)
    assert await late == "cancelled"
    assert not on_time.done()
    assert watch.release(late) is True
    assert late.cancelling() == 0  # our cancellation does not leak into the task
    assert watch.release(late) is False
    assert watch.release(on_time) is False
    watch.sweep(now=1e9)  # released tasks are no longer watched
    assert not on_time.done()
    on_time.cancel()
    assert await on_time == "cancelled"


# --- handler threads -------------------------------------------------------------------


def serve(threads: HandlerThreads, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    threads.serve(asyncio.new_event_loop(), main())


def test_handler_threads_make_calls_on_the_loops_own_thread_and_pass_errors_back() -> None:
    threads = HandlerThreads(4)
    checked: list[str] = []

    async def main() -> None:
        # No hop: the call runs on the thread that runs the loop, which keeps running it.
        here = threading.get_ident()
        assert await threads.run(threading.get_ident) == here
        assert threading.get_ident() == here
        assert await threads.run(lambda a, b: a + b, 2, 3) == 5
        # A StopIteration cannot leave a coroutine as itself, but it must not hang the caller.
        raised = [(ValueError("boom"), ValueError), (SystemExit(3), SystemExit)]
        for exc, expected in [*raised, (StopIteration(), RuntimeError)]:

            def fail(exc: BaseException = exc) -> None:
                raise exc

            with pytest.raises(expected):
                await threads.run(fail)
        checked.append("done")

    serve(threads, main)
    assert checked == ["done"]


def test_handler_threads_hand_the_loop_on_when_calls_block_and_count_late_ones() -> None:
    threads = HandlerThreads(8)
    release = threading.Event()
    checked: list[str] = []

    async def main() -> None:
        first = threading.get_ident()
        await asyncio.sleep(0.1)  # no calls for a while: the watchdog sleeps until the next
        # Four blocking calls at once: each keeps a thread, the loop goes on on another.
        calls = [asyncio.create_task(threads.run(release.wait, 5)) for _ in range(4)]
        assert await asyncio.wait_for(threads.run(lambda: "free"), 2) == "free"
        assert threading.get_ident() != first
        assert not any(call.done() for call in calls)
        calls[0].cancel()  # its caller stops waiting, as at a deadline
        with pytest.raises(asyncio.CancelledError):
            await calls[0]
        assert threads.late == 1  # its thread still runs
        release.set()
        assert await asyncio.gather(*calls[1:]) == [True, True, True]
        for _ in range(200):
            if threads.late == 0:
                break
            await asyncio.sleep(0.01)
        assert threads.late == 0
        checked.append("done")

    serve(threads, main)
    assert checked == ["done"]


def test_handler_threads_keep_the_loop_running_through_many_hand_overs() -> None:
    # Every call outlasts two watchdog looks, six at a time: the loop changes hands all the
    # while, and a thread whose slow call returns must not take a later driver's call for
    # its own (that driver then left the loop to nobody, and everything stopped).
    threads = HandlerThreads(16)
    done: list[int] = []

    async def caller() -> None:
        for _ in range(10):
            await threads.run(time.sleep, 0.02)
        done.append(1)

    async def main() -> None:
        await asyncio.gather(*(caller() for _ in range(6)))

    server = threading.Thread(target=serve, args=(threads, main), daemon=True)
    server.start()
    server.join(30)
    assert not server.is_alive(), f"the loop stopped for good after {len(done)} callers"
    assert done == [1] * 6


def test_handler_threads_serve_cancels_leftover_tasks_and_raises_what_main_raised() -> None:
    threads = HandlerThreads(4)
    left: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            left.append("cancelled")
            raise

    async def main() -> None:
        task = asyncio.create_task(forever())
        await threads.run(time.sleep, 0.05)  # long enough to lose the loop on the way
        assert not task.done()
        raise LookupError("from main")

    with pytest.raises(LookupError, match="from main"):
        serve(threads, main)
    assert left == ["cancelled"]


def test_handler_threads_run_only_on_the_loop_they_serve() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match="serve"):
            await HandlerThreads(1).run(time.time)

    asyncio.run(main())


# --- archives ---------------------------------------------------------------------------


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("members", "problem"),
    [
        ([member("../x")], "escapes the target directory"),
        ([member("a/../../x")], "escapes the target directory"),
        ([member("/etc/x")], "absolute path"),
        ([member("dev", tarfile.CHRTYPE)], "not a regular file"),
        ([member("fifo", tarfile.FIFOTYPE)], "not a regular file"),
        ([member("l", tarfile.SYMTYPE, "/etc/passwd")], "links outside"),
        ([member("a/l", tarfile.SYMTYPE, "../../x")], "links outside"),
        ([member("h", tarfile.LNKTYPE, "../x")], "links outside"),
        ([member("l", tarfile.SYMTYPE, "."), member("l/x")], "goes through a link"),
    ],
)
def test_unsafe_archive_members_are_refused(
    tmp_path: Path, members: list[tarfile.TarInfo], problem: str
) -> None:
    with pytest.raises(bundle.InvalidInit, match=problem):
        bundle.check_members(members, tmp_path, "code")


def test_existing_link_on_disk_cannot_be_used(tmp_path: Path) -> None:
    (tmp_path / "out").symlink_to("/tmp")
    with pytest.raises(bundle.InvalidInit, match="escapes"):
        bundle.check_members([member("out/x")], tmp_path, "code")


def test_safe_archive_members_pass(tmp_path: Path) -> None:
    bundle.check_members(
        [
            member("./", tarfile.DIRTYPE),
            member("pkg", tarfile.DIRTYPE),
            member("pkg/a.py"),
            member("pkg/link.py", tarfile.SYMTYPE, "a.py"),
            member("hard.py", tarfile.LNKTYPE, "pkg/a.py"),
        ],
        tmp_path,
        "code",
    )


@pytest.mark.parametrize("data_filter", [True, False])
def test_install_unpacks_with_safe_modes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_filter: bool
) -> None:
    if data_filter and not bundle._HAS_DATA_FILTER:
        pytest.skip("this Python has no tarfile extraction filters")
    monkeypatch.setattr(bundle, "_HAS_DATA_FILTER", data_filter)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, mode in [("run.sh", 0o4777), ("data.txt", 0o600)]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid = 2, mode, 4242
            tar.addfile(info, io.BytesIO(b"ok"))
    spec = bundle.InitSpec("f", 1, "handler.handle", {}, buffer.getvalue(), None)
    bundle.install(spec, tmp_path / "code", tmp_path / "deps")
    run_sh = (tmp_path / "code" / "run.sh").stat()
    assert (tmp_path / "code" / "data.txt").read_text() == "ok"
    assert not run_sh.st_mode & (stat.S_ISUID | stat.S_IWGRP | stat.S_IWOTH)
    assert run_sh.st_mode & stat.S_IXUSR
    assert not (tmp_path / "deps").exists()


# --- config -----------------------------------------------------------------------------


def test_config_defaults() -> None:
    defaults = config.RuntimeConfig.from_env({})
    assert (defaults.port, defaults.handler, defaults.timeout_s) == (8080, "handler.handle", 30.0)
    assert defaults.max_body_bytes == 64 * 1024 * 1024
    assert str(defaults.code_dir) == "/opt/kapal/function"
    assert defaults.prewarm is False
    assert defaults.concurrency == 0  # unlimited


def test_config_reads_env() -> None:
    env = {
        "KAPAL_PORT": "9000",
        "KAPAL_FUNCTION": "fn",
        "KAPAL_VERSION": "4",
        "KAPAL_HANDLER": "pkg.mod.fn",
        "KAPAL_CODE_DIR": "/code",
        "KAPAL_TIMEOUT_S": "2.5",
        "KAPAL_MAX_BODY_BYTES": "10",
        "KAPAL_PREWARM": "1",
        "KAPAL_CONCURRENCY": "4",
    }
    read = config.RuntimeConfig.from_env(env)
    assert read.concurrency == 4
    assert (read.port, read.function, read.version, read.handler) == (
        9000,
        "fn",
        4,
        "pkg.mod.fn",
    )
    assert (str(read.code_dir), read.timeout_s, read.max_body_bytes, read.prewarm) == (
        "/code",
        2.5,
        10,
        True,
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("KAPAL_PORT", "http"),
        ("KAPAL_PORT", "70000"),
        ("KAPAL_TIMEOUT_S", "nan"),
        ("KAPAL_TIMEOUT_S", "-1"),
        ("KAPAL_PREWARM", "maybe"),
        ("KAPAL_EVENT_LOOP", "trio"),
        ("KAPAL_CONCURRENCY", "-1"),
        ("KAPAL_CONCURRENCY", "four"),
    ],
)
def test_config_names_the_bad_key_and_value(key: str, value: str) -> None:
    with pytest.raises(config.ConfigError, match=f"{key}='{value}'"):
        config.RuntimeConfig.from_env({key: value})


def test_the_zygote_port_may_not_be_a_workers_port() -> None:
    with pytest.raises(config.ConfigError, match="a worker's port"):
        config.RuntimeConfig.from_env(
            {"KAPAL_PORT": "9000", "KAPAL_ZYGOTE_PORT": "9004", "KAPAL_WORKERS_MAX": "3"}
        )
    with pytest.raises(config.ConfigError, match="log port"):
        config.RuntimeConfig.from_env(
            {"KAPAL_PORT": "9000", "KAPAL_LOG_PORT": "9002", "KAPAL_ZYGOTE_PORT": "1"}
        )
    parsed = config.RuntimeConfig.from_env({"KAPAL_ZYGOTE_PORT": "8079"})
    assert (parsed.zygote_port, parsed.workers_max) == (8079, 15)
