"""`GET /ui[/{path}]`: the dashboard's static files, read once from `static/`.

Only files found in that folder at start-up are served (a path outside it, `..`
included, is simply not one of them: 404). Open, since the page holds no data: it asks
for an API key and calls the JSON API with it. Not fingerprinted, so every answer is
revalidated (`no-cache` with an ETag; a match is 304).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import web

from gateway.errors import NotFound
from gateway.routing import OPEN, Content, Route
from gateway.services import Services

STATIC = Path(__file__).with_name("static")
INDEX = "index.html"
TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page loads only its own files and talks only to this gateway.
HEADERS: Final = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load(folder: Path = STATIC) -> dict[str, StaticFile]:
    """Every servable file under `folder` by its path relative to it ("views/jobs.js")."""
    files: dict[str, StaticFile] = {}
    root = folder.resolve()
    for path in sorted(folder.rglob("*")):
        content_type = TYPES.get(path.suffix)
        # A link could point anywhere: only plain files inside the folder.
        inside = path.resolve().is_relative_to(root)
        if content_type is None or path.is_symlink() or not path.is_file() or not inside:
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        files[path.relative_to(folder).as_posix()] = StaticFile(body, content_type, etag)
    return files


FILES = load()


def answer(request: web.Request, name: str) -> web.Response:
    found = FILES.get(name or INDEX)
    if found is None:
        raise NotFound(f"no dashboard file {request.path}")
    headers = {**HEADERS, "ETag": found.etag}
    wanted = request.headers.get("If-None-Match", "")
    if found.etag in (tag.strip() for tag in wanted.split(",")):
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.body, headers={**headers, "Content-Type": found.content_type})


async def ui_index(request: web.Request, svc: Services) -> web.Response:
    return answer(request, INDEX)


async def ui_file(request: web.Request, svc: Services) -> web.Response:
    return answer(request, request.match_info["path"])


PAGE = Content(
    {media: {"schema": {"type": "string"}} for media in sorted(set(TYPES.values()))},
    description="the dashboard's page, script, style sheet or image",
)

ROUTES = (
    Route(
        "GET", "/ui", ui_index, "the dashboard (sign in with an API key)", scope=OPEN, response=PAGE
    ),
    Route(
        "GET",
        "/ui/{path:.*}",
        ui_file,
        "a file of the dashboard (revalidated: 304 when the ETag matches)",
        scope=OPEN,
        response=PAGE,
        errors=(404,),
    ),
)
