"""Fixtures of the kapal tests: a fake gateway on a real socket, a dead URL, a function."""

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from kapal_fakes import FakeGateway, build_app


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    state = FakeGateway()
    async with TestServer(build_app(state)) as server:
        state.url = str(server.make_url("")).rstrip("/")
        yield state


@pytest.fixture
def dead_url() -> str:
    """A URL where nothing listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def hello_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "hello_world"
    folder.mkdir()
    (folder / "handler.py").write_text("def handle(event, context):\n    return 'hi'\n")
    return folder
