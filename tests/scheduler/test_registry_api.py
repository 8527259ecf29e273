"""Deleting a function's tags through a registry's HTTP API, against a small in-process
stand-in that speaks the API's few calls (plain HTTP on loopback)."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scheduler.errors import BackendError
from scheduler.registry_api import MANIFEST_V2, RegistryAPI

REPO = "kapal-fn/ns-fn"


class FakeRegistry(BaseHTTPRequestHandler):
    # tag -> digest of REPO; shared by the handler instances of one server.
    tags: dict[str, str]
    auth: str | None
    seen: list[tuple[str, str, str]]

    def _allowed(self) -> bool:
        if self.auth is not None and self.headers.get("Authorization") != self.auth:
            self._send(401, b"{}")
            return False
        return True

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, self.headers.get("Accept", "")))
        if not self._allowed():
            return
        if self.path == f"/v2/{REPO}/tags/list":
            tags = sorted(self.tags) or None
            self._send(200, json.dumps({"name": REPO, "tags": tags}).encode())
        else:
            self._send(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')

    def do_HEAD(self) -> None:
        self.seen.append(("HEAD", self.path, self.headers.get("Accept", "")))
        if not self._allowed():
            return
        tag = self.path.removeprefix(f"/v2/{REPO}/manifests/")
        if tag in self.tags and MANIFEST_V2 in self.headers.get("Accept", ""):
            self._send(200, b"", {"Docker-Content-Digest": self.tags[tag]})
        else:
            self._send(404, b"")

    def do_DELETE(self) -> None:
        self.seen.append(("DELETE", self.path, ""))
        if not self._allowed():
            return
        digest = self.path.removeprefix(f"/v2/{REPO}/manifests/")
        named = [tag for tag, d in self.tags.items() if d == digest]
        for tag in named:
            del self.tags[tag]
        self._send(202 if named else 404, b"")

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(
    tags: dict[str, str], auth: tuple[str, str] | None = None
) -> Iterator[tuple[str, type[FakeRegistry]]]:
    header = None
    if auth is not None:
        header = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    handler = type("Registry", (FakeRegistry,), {"tags": tags, "auth": header, "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def registry() -> Iterator[tuple[str, type[FakeRegistry]]]:
    with serve({"1": "sha256:aa", "2": "sha256:bb", "latest": "sha256:bb"}) as served:
        yield served


def test_every_tag_goes_by_the_digest_it_names(registry: tuple[str, type[FakeRegistry]]) -> None:
    address, handler = registry
    api = RegistryAPI(address)
    assert api.tags(REPO) == ["1", "2", "latest"]
    assert api.delete_repository(REPO) == ["1", "2"]  # "latest" went with "2"'s digest
    assert handler.tags == {}
    assert api.tags(REPO) == []
    deletes = [path for method, path, _ in handler.seen if method == "DELETE"]
    assert deletes == [f"/v2/{REPO}/manifests/sha256:aa", f"/v2/{REPO}/manifests/sha256:bb"]


def test_an_unknown_repository_has_no_tags(registry: tuple[str, type[FakeRegistry]]) -> None:
    address, _ = registry
    assert RegistryAPI(address).delete_repository("kapal-fn/other") == []


def test_credentials_go_with_every_request() -> None:
    with serve({"1": "sha256:aa"}, auth=("u", "p")) as (address, handler):
        with pytest.raises(BackendError, match="401"):
            RegistryAPI(address).tags(REPO)
        assert RegistryAPI(address, ("u", "p")).delete_repository(REPO) == ["1"]
        assert handler.tags == {}


def test_a_registry_that_is_not_there_is_a_backend_error() -> None:
    with serve({}) as (address, _):
        pass  # the server is closed again: nothing listens there now
    with pytest.raises(BackendError, match="unreachable"):
        RegistryAPI(address).tags(REPO)
