from datetime import UTC, datetime

from multidict import CIMultiDict, CIMultiDictProxy

from kapal.client import InvokeResult
from kapal.output import format_age, format_invoke_head, format_table, invoke_error

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


def test_format_table_aligns_columns() -> None:
    functions = [
        {
            "name": "hello",
            "version": 12,
            "instances": [{"id": "i1"}, {"id": "i2"}],
            "invocations": 1500,
            "updated_at": "2024-05-01T11:00:00Z",
        },
        {"name": "a", "version": 1},
    ]

    assert format_table(functions, NOW) == (
        "NAME   VERSION  INSTANCES  INVOCATIONS  UPDATED\n"
        "hello  12       2          1500         1h ago\n"
        "a      1        0          0            -\n"
    )


def test_format_table_without_functions_is_the_header() -> None:
    assert format_table([], NOW) == "NAME  VERSION  INSTANCES  INVOCATIONS  UPDATED\n"


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
