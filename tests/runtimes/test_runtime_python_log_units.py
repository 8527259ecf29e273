"""Pure parts of the runtime's logs: escaping, line splitting and cutting, the buffer's caps
and acks, context copied into threads, settings and pull parameters. No process."""

import asyncio
import contextvars
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from runtime_python_support import RUNTIME_DIR, parse_copy_rows

if str(RUNTIME_DIR) not in sys.path:
    sys.path.append(str(RUNTIME_DIR))

from kapal_runtime import capture, config, logport
from kapal_runtime.lines import ByteSplitter, TextSplitter, cut
from kapal_runtime.logbuffer import Invocation, LogBuffer, escape, format_row


def rows(buffer: LogBuffer, after: int = 0, limit: int = 1 << 30) -> list[tuple[object, ...]]:
    body, _ = buffer.read(after, limit)
    return [(r.seq, r.stream, r.level, r.request_id, r.text) for r in parse_copy_rows(body)]


# --- escaping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("plain", "plain"),
        ("a\tb", "a\\tb"),
        ("a\nb\r", "a\\nb\\r"),
        ("back\\slash", "back\\\\slash"),
        ("\\N", "\\\\N"),  # a text of `\N` is not NULL
        ("nul\x00here", "nul\\\\x00here"),  # stored as the four characters `\x00`
        ("ü ✓", "ü ✓"),
    ],
)
def test_escape_for_copy_text(text: str, field: str) -> None:
    assert escape(text) == field


def test_a_row_is_one_copy_line_whatever_the_text() -> None:
    nasty = "tab\there\nnew line\r\\ \x00 \udcff end"
    row = format_row(1.5, "stdout", "\\N", escape("req\t1"), nasty)
    (parsed,) = parse_copy_rows(b"7" + row)
    assert parsed.seq == 7
    assert parsed.ts == 1.5
    assert (parsed.stream, parsed.level, parsed.request_id) == ("stdout", None, "req\t1")
    # What Postgres stores: the same text, NUL and the lone surrogate shown escaped.
    assert parsed.text == "tab\there\nnew line\r\\ \\x00 \\udcff end"
    assert b"1.500000" in row


# --- cutting and splitting --------------------------------------------------------------


def test_cut_keeps_the_head_and_names_what_it_cut() -> None:
    assert cut("short", 10) == "short"
    assert cut("x" * 25, 10) == "x" * 10 + "… [truncated 15 bytes]"
    assert cut("x" * 10, 10, over=5) == "x" * 10 + "… [truncated 5 bytes]"
    # Bytes of UTF-8, never half a character.
    assert cut("é" * 10, 5) == "éé… [truncated 16 bytes]"
    assert cut("a" * 20 + "END", 3, keep_tail=True) == "[truncated 20 bytes] …END"


def test_text_lines_are_joined_from_pieces_per_invocation() -> None:
    out: list[tuple[str, object]] = []
    splitter = TextSplitter(100, lambda text, key: out.append((text, key)))
    a, b = Invocation("a", 1000), Invocation("b", 1000)
    splitter.write("hello", a)
    splitter.write("other", b)
    splitter.write(" world\nsecond\nthi", a)
    splitter.write("\n", b)
    splitter.write("", None)
    splitter.write("\n", None)  # print() with nothing: an empty line
    assert out == [("hello world", a), ("second", a), ("other", b), ("", None)]
    assert splitter.pending() == 1  # "thi" of a
    splitter.end(b)  # nothing left of b
    splitter.end(a)  # a's invocation ended: its unfinished line is a line
    assert out[-1] == ("thi", a)
    assert splitter.pending() == 0


def test_a_ten_megabyte_line_is_cut_while_it_accumulates() -> None:
    out: list[str] = []
    splitter = TextSplitter(16384, lambda text, key: out.append(text))
    piece = "y" * 10_000
    for _ in range(1000):
        splitter.write(piece, None)
        held = splitter._partials[None]
        assert held.size <= 16384  # never the whole line
    splitter.write("tail\n", None)
    splitter.write("z" * 10_000_000 + "\n", None)  # and all in one write
    assert out == [
        "y" * 16384 + f"… [truncated {10_000_000 + 4 - 16384} bytes]",
        "z" * 16384 + f"… [truncated {10_000_000 - 16384} bytes]",
    ]


def test_bytes_from_a_pipe_become_lines_with_bad_bytes_escaped() -> None:
    out: list[str] = []
    splitter = ByteSplitter(8, out.append)
    splitter.feed(b"one\ntw")
    splitter.feed(b"o\n\xff\xfe bin\x00\n")
    splitter.feed("é".encode()[:1])  # a character split across reads
    splitter.feed("é".encode()[1:] + b"\n")
    splitter.feed(b"0123456789abc\n" + b"x" * 20)
    splitter.feed(b"x" * 20 + b"\nlast")
    splitter.end()
    assert out == [
        "one",
        "two",
        "\\xff\\xfe bin\x00",  # 7 bytes: under the cap (NUL is escaped in the row)
        "é",
        "01234567… [truncated 5 bytes]",
        "xxxxxxxx… [truncated 32 bytes]",
        "last",
    ]


# --- the buffer -------------------------------------------------------------------------


def test_lines_get_seqs_and_an_ack_frees_them() -> None:
    buffer = LogBuffer(1 << 20, 1 << 20)
    for i in range(5):
        buffer.add("stdout", None, f"line {i}")
    assert (buffer.last_seq, buffer.acked) == (5, 0)
    assert [r[0] for r in rows(buffer)] == [1, 2, 3, 4, 5]
    buffer.ack(3)
    assert buffer.acked == 3
    assert [r[4] for r in rows(buffer)] == ["line 3", "line 4"]  # after=0: freed ones gone
    assert buffer.read(5, 100) == (b"", 3)  # nothing past 5; 3 is the last acked
    buffer.ack(99)  # more than there is: all of it
    assert (buffer.acked, buffer.pending_bytes) == (5, 0)
    buffer.add("stdout", None, "six")
    assert rows(buffer, 5) == [(6, "stdout", None, None, "six")]


def test_read_answers_about_limit_bytes_but_at_least_one_line() -> None:
    buffer = LogBuffer(1 << 20, 1 << 20)
    for _ in range(100):
        buffer.add("stdout", None, "x" * 100)
    body, last = buffer.read(0, 1)
    assert last == 1 and len(parse_copy_rows(body)) == 1
    body, last = buffer.read(0, 1000)
    assert 1000 <= len(body) < 1200
    assert last == len(parse_copy_rows(body))
    body, last = buffer.read(last, 1 << 20)
    assert last == 100


def test_an_invocation_over_its_budget_gets_one_marker_and_nothing_more() -> None:
    buffer = LogBuffer(1 << 20, 100)
    a, b = buffer.begin("a"), buffer.begin("b")
    for i in range(20):
        buffer.add("stdout", None, f"{i:09d}", a)  # 10 bytes a line with its LF
    buffer.add("runtime", "error", "the runtime's own line", a, capped=False)
    buffer.add("stdout", None, "b has its own budget", b)
    got = rows(buffer)
    assert [r[4] for r in got[:10]] == [f"{i:09d}" for i in range(10)]
    assert got[10] == (
        11,
        "runtime",
        "warning",
        "a",
        "output of this invocation truncated at 100 bytes",
    )
    assert got[11:] == [
        (12, "runtime", "error", "a", "the runtime's own line"),
        (13, "stdout", None, "b", "b has its own budget"),
    ]
    assert buffer.dropped == 10


def test_past_the_buffer_cap_new_lines_are_dropped_and_a_marker_follows() -> None:
    buffer = LogBuffer(1000, 1 << 20)
    for i in range(100):
        buffer.add("stdout", None, f"line {i}")
    kept = rows(buffer)
    assert 0 < len(kept) < 100
    assert buffer.dropped == 100 - len(kept)
    assert buffer.pending_bytes <= 1000
    buffer.ack(buffer.last_seq)
    buffer.add("stdout", None, "after")
    marker, after = rows(buffer)
    assert marker[1:] == (
        "runtime",
        "warning",
        None,
        f"log buffer full: {buffer.dropped} lines dropped",
    )
    assert after[4] == "after"
    assert marker[0] == len(kept) + 1  # dropped lines took no seq


def test_a_waiter_is_called_once_for_the_next_line() -> None:
    buffer = LogBuffer(1 << 20, 1 << 20)
    calls: list[int] = []
    assert buffer.wake_on_next(0, lambda: calls.append(buffer.last_seq))
    buffer.add("stdout", None, "one")
    buffer.add("stdout", None, "two")
    assert calls == [1]
    assert not buffer.wake_on_next(0, lambda: calls.append(-1))  # lines are there already
    buffer.add("stdout", None, "three")
    assert calls == [1]


# --- context into threads ---------------------------------------------------------------

TAG: contextvars.ContextVar[str] = contextvars.ContextVar("tag", default="none")


async def test_threads_and_executor_jobs_run_in_their_starters_context() -> None:
    undo = [capture._patch_thread_start(), capture._patch_executor_submit()]
    try:
        seen: list[str] = []
        with ThreadPoolExecutor(1) as pool:
            for tag in ("first", "second"):
                TAG.set(tag)
                thread = threading.Thread(target=lambda: seen.append(TAG.get()))
                thread.start()
                thread.join()
                # The pool's one thread serves both: each job sees its own submitter's tag.
                seen.append(pool.submit(TAG.get).result())
                seen.append(await asyncio.get_running_loop().run_in_executor(pool, TAG.get))
        assert seen == ["first"] * 3 + ["second"] * 3
        assert "run" not in thread.__dict__  # the wrapper is gone once the thread ended
    finally:
        for restore in undo:
            restore()
    assert threading.Thread.start.__name__ == "start"


def test_level_names() -> None:
    assert [capture.level_name(n) for n in (5, 10, 20, 25, 30, 40, 50, 60)] == [
        "debug",
        "debug",
        "info",
        "info",
        "warning",
        "error",
        "critical",
        "critical",
    ]


# --- settings and parameters ------------------------------------------------------------


def test_log_settings() -> None:
    defaults = config.RuntimeConfig.from_env({})
    assert (defaults.log_port, defaults.log_level, defaults.log_drain_s) == (8081, "info", 2.0)
    assert (defaults.log_invocation_bytes, defaults.log_line_bytes) == (65536, 16384)
    assert defaults.log_buffer_bytes == 8 * 1024 * 1024
    read = config.RuntimeConfig.from_env({"KAPAL_LOG_LEVEL": "DEBUG", "KAPAL_LOG_PORT": "0"})
    assert (read.log_level, read.log_port) == ("debug", 0)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAPAL_LOG_PORT": "-1"}, "KAPAL_LOG_PORT='-1'"),
        ({"KAPAL_LOG_PORT": "8080"}, "KAPAL_LOG_PORT=8080 is also KAPAL_PORT"),
        ({"KAPAL_LOG_LEVEL": "loud"}, "KAPAL_LOG_LEVEL='loud'"),
        ({"KAPAL_LOG_INVOCATION_BYTES": "0"}, "KAPAL_LOG_INVOCATION_BYTES='0'"),
        ({"KAPAL_LOG_LINE_BYTES": "16k"}, "KAPAL_LOG_LINE_BYTES='16k'"),
        ({"KAPAL_LOG_BUFFER_BYTES": "-5"}, "KAPAL_LOG_BUFFER_BYTES='-5'"),
        ({"KAPAL_LOG_DRAIN_S": "nan"}, "KAPAL_LOG_DRAIN_S='nan'"),
    ],
)
def test_bad_log_settings_fail_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.RuntimeConfig.from_env(env)


def test_pull_parameters() -> None:
    assert logport.parse_query({}) == (0, 0.0, 1 << 20)
    assert logport.parse_query({"after": "12", "wait": "2.5", "limit": "100"}) == (12, 2.5, 100)
    for query, name in [
        ({"after": "-1"}, "after"),
        ({"after": "1e3"}, "after"),
        ({"after": "٣"}, "after"),  # a digit, but not an ASCII one
        ({"wait": "31"}, "wait"),
        ({"wait": "nan"}, "wait"),
        ({"wait": "soon"}, "wait"),
        ({"limit": "0"}, "limit"),
    ]:
        with pytest.raises(logport.BadParameter, match=f"^{name} "):
            logport.parse_query(query)
