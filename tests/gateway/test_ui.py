"""The dashboard's static route: content types, caching, and nothing outside its folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway import app as management
from gateway.ui import routes as ui
from tests.gateway.test_openapi import real_app


@pytest.fixture
async def client() -> AsyncIterator[TestClient[object, object]]:
    async with TestClient(TestServer(real_app())) as c:
        yield c


@pytest.mark.parametrize("path", ["/ui", "/ui/"])
async def test_the_page_is_served_at_ui_without_a_key(
    client: TestClient[object, object], path: str
) -> None:
    r = await client.get(path)
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<title>Kapal</title>" in await r.text()
    assert r.headers["Cache-Control"] == "no-cache"
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    ("path", "media"),
    [
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ],
)
async def test_each_file_has_its_content_type(
    client: TestClient[object, object], path: str, media: str
) -> None:
    r = await client.get(path)
    assert r.status == 200
    assert r.headers["Content-Type"] == media
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert await r.read() == (ui.STATIC / path.removeprefix("/ui/")).read_bytes()


async def test_a_matching_etag_is_304(client: TestClient[object, object]) -> None:
    first = await client.get("/ui/app.js")
    etag = first.headers["ETag"]
    again = await client.get("/ui/app.js", headers={"If-None-Match": f'"other", {etag}'})
    assert again.status == 304
    assert await again.read() == b""
    assert (await client.get("/ui/app.js", headers={"If-None-Match": '"other"'})).status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/ui/nope.js",
        "/ui/../gateway/app.py",
        "/ui/%2e%2e/routes.py",
        "/ui/..%2froutes.py",
        "/ui/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/ui//etc/passwd",
        "/ui/static/app.js",
        "/ui/app.js/",
    ],
)
async def test_anything_else_is_a_json_404(client: TestClient[object, object], path: str) -> None:
    r = await client.get(path)
    assert r.status == 404
    assert (await r.json())["error"]["code"] in {"not_found"}


def test_only_files_of_the_folder_with_a_known_type_are_served(tmp_path: Path) -> None:
    (tmp_path / "views").mkdir()
    (tmp_path / "index.html").write_text("<p>")
    (tmp_path / "views" / "a.js").write_text("1")
    (tmp_path / "notes.txt").write_text("no")
    (tmp_path / "link.js").symlink_to("/etc/passwd")
    files = ui.load(tmp_path)
    assert set(files) == {"index.html", "views/a.js"}
    assert files["views/a.js"].content_type.startswith("text/javascript")


def test_every_module_the_page_imports_is_shipped() -> None:
    import re

    for name, f in ui.FILES.items():
        if name.endswith(".js"):
            for dep in re.findall(r'from "\./([\w/.-]+)"', f.body.decode()):
                assert dep in ui.FILES, f"{name} imports {dep}, which is not served"


def test_the_routes_are_open_and_described() -> None:
    paths = management.DOCUMENT["paths"]
    assert paths["/ui"]["get"]["security"] == []
    assert "404" in paths["/ui/{path}"]["get"]["responses"]
    assert "text/html; charset=utf-8" in paths["/ui"]["get"]["responses"]["200"]["content"]
