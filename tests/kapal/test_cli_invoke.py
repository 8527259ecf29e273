import io
import json
import sys
from pathlib import Path

import pytest
from kapal_fakes import FakeGateway

from kapal import cli

PAYLOAD = bytes(range(256)) * 16 + b"\r\n\x00end"


@pytest.fixture
async def hello(gateway: FakeGateway, hello_folder: Path) -> str:
    assert (
        await cli.run(["--url", gateway.url, "deploy", str(hello_folder), "--name", "hello"]) == 0
    )
    url: str = gateway.url
    return url


def set_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


async def test_binary_stdin_comes_back_byte_for_byte(
    hello: str, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    set_stdin(monkeypatch, PAYLOAD)
    capsysbinary.readouterr()

    assert await cli.run(["--url", hello, "invoke", "hello", "-d", "@-"]) == 0

    out = capsysbinary.readouterr()
    assert out.out == PAYLOAD
    assert out.err == b""


async def test_data_from_a_file(
    hello: str, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    (tmp_path / "body.bin").write_bytes(PAYLOAD)
    capsysbinary.readouterr()

    assert await cli.run(["--url", hello, "invoke", "hello", "-d", f"@{tmp_path}/body.bin"]) == 0
    assert capsysbinary.readouterr().out == PAYLOAD


async def test_a_missing_data_file_is_an_error(
    hello: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()

    assert await cli.run(["--url", hello, "invoke", "hello", "-d", f"@{tmp_path}/nope"]) == 1
    assert capsys.readouterr().err.startswith("error: cannot read ")


async def test_include_shows_status_and_headers_on_stderr(
    hello: str, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    capsysbinary.readouterr()
    argv = ["--url", hello, "invoke", "hello", "-i", "-X", "PUT", "-p", "/a/b"]
    argv += ["-H", "X-Custom: yes", "-q", "x=1", "-q", "y=2", "-d", '{"k": 1}']

    assert await cli.run(argv) == 0

    out = capsysbinary.readouterr()
    assert out.out == b'{"k": 1}'
    head = out.err.decode()
    assert head.startswith("HTTP 200 OK\n")
    assert "X-Kapal-Request-Id: req-1\n" in head
    assert "X-Echo-Method: PUT\n" in head
    assert "X-Echo-Path: a/b\n" in head
    assert "X-Echo-Custom: yes\n" in head
    assert "X-Echo-Content-Type: application/json\n" in head
    assert head.endswith("\n\n")
    query = head.split("X-Echo-Query: ")[1].splitlines()[0]
    assert json.loads(query) == [["x", "1"], ["y", "2"]]


async def test_an_explicit_content_type_wins(
    hello: str, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    capsysbinary.readouterr()
    argv = ["--url", hello, "invoke", "hello", "-i", "-d", "[1]", "-H", "content-type: text/x"]

    assert await cli.run(argv) == 0
    assert b"X-Echo-Content-Type: text/x\n" in capsysbinary.readouterr().err


async def test_a_function_error_status_is_exit_1(
    hello: str, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    capsysbinary.readouterr()

    assert await cli.run(["--url", hello, "invoke", "hello", "-q", "status=503", "-d", "x"]) == 1

    out = capsysbinary.readouterr()
    assert out.out == b"x"
    assert out.err == b"error: hello answered HTTP 503 Service Unavailable\n"


async def test_a_redirect_is_success(hello: str) -> None:
    assert await cli.run(["--url", hello, "invoke", "hello", "-q", "status=302"]) == 0


async def test_an_unknown_function_shows_the_gateway_message(
    hello: str, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    capsysbinary.readouterr()

    assert await cli.run(["--url", hello, "invoke", "ghost"]) == 1
    assert capsysbinary.readouterr().err == b"error: function 'ghost' not found (HTTP 404)\n"
