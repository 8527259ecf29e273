from datetime import UTC, datetime

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from kapal.client import InvokeResult
from kapal.output import (
    console,
    format_age,
    format_invoke_head,
    functions_table,
    invoke_error,
    print_table,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def result(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> InvokeResult:
    return InvokeResult(status, CIMultiDictProxy(CIMultiDict(headers or {})), body)


def test_format_age() -> None:
    assert format_age("2024-05-01T11:59:58Z", NOW) == "2s ago"
    assert format_age("2024-05-01T11:57:00+00:00", NOW) == "3m ago"
    assert format_age("2024-05-01T07:00:00", NOW) == "5h ago"
    assert format_age("2024-04-28T12:00:00Z", NOW) == "3d ago"
    assert format_age("2024-05-01T12:00:05Z", NOW) == "0s ago"
    assert format_age(None, NOW) == "-"
    assert format_age("yesterday", NOW) == "yesterday"


def test_a_table_into_a_pipe_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    functions = [
        {
            "name": "hello",
            "version": 12,
            "instances": [{"id": "i1"}, {"id": "i2"}],
            "invocations": 1500,
            "public": True,
            "updated_at": "2024-05-01T11:00:00Z",
        },
        {"name": "a", "version": 1},
    ]

    console().print(functions_table(functions, NOW))

    out = capsys.readouterr().out
    assert "\x1b" not in out and out.endswith("\n")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "INSTANCES", "INVOCATIONS", "PUBLIC", "UPDATED"]
    assert lines[2].split() == ["hello", "12", "2", "1500", "yes", "1h", "ago"]
    assert lines[3].split() == ["a", "1", "0", "0", "no", "-"]
    # Columns line up: each cell starts under its header.
    assert lines[2].index("1500") == lines[0].index("INVOCATIONS")


def test_a_long_cell_is_not_cut_in_a_pipe(capsys: pytest.CaptureFixture[str]) -> None:
    print_table(("ID", "URL"), [("x", "http://" + "a" * 300)])

    assert "http://" + "a" * 300 in capsys.readouterr().out


def test_format_invoke_head() -> None:
    head = format_invoke_head(result(201, headers={"Content-Type": "text/plain"}))

    assert head == "HTTP 201 Created\nContent-Type: text/plain\n\n"
    assert format_invoke_head(result(599)) == "HTTP 599\n\n"


def test_invoke_error_prefers_the_error_message() -> None:
    body = b'{"error": {"code": "no_capacity", "message": "no instance free"}}'

    assert invoke_error("fn", result(503, body)) == "no instance free (HTTP 503)"
    assert (
        invoke_error("fn", result(500, b'{"error": "boom"}'))
        == "fn answered HTTP 500 Internal Server Error"
    )
    assert invoke_error("fn", result(500, b"\xff")) == "fn answered HTTP 500 Internal Server Error"
