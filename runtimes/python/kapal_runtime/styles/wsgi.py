"""WSGI applications (Flask, Django, any PEP 3333 callable), each call on a handler thread.

The application is mounted at `/fn/<function>` (SCRIPT_NAME), so the URLs it builds
(`url_for`, redirects, `reverse`) are right for callers going through the gateway.
"""

import contextvars
import io
import sys
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from multidict import CIMultiDict

from kapal_runtime.event import Context
from kapal_runtime.handler import DROPPED_HEADERS, InvalidReturnValue, Reply
from kapal_runtime.styles.adapter import StyleHandler
from kapal_runtime.styles.request import HttpRequest
from kapal_runtime.threads import HandlerThreads

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
_SPECIAL = frozenset({"content-type", "content-length"})


def mount_path(function: str) -> str:
    """Where the gateway serves the function: the app's SCRIPT_NAME / ASGI root_path."""
    return f"/fn/{function}" if function else ""


def wire(text: str) -> str:
    """A str as WSGI wants it: the bytes received, each as one latin-1 character."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


class WsgiStyle(StyleHandler):
    style = "wsgi"

    async def run(self, request: HttpRequest, context: Context, threads: HandlerThreads) -> Reply:
        # In a copy of this context: what the app writes carries this invocation's tag.
        run_in_context = contextvars.copy_context().run
        reply: Reply = await threads.run(run_in_context, self.call, request)
        return reply

    def call(self, request: HttpRequest) -> Reply:
        response = _Response()
        result = self.target(environ(request, mount_path(self.function)), response.start)
        try:
            for chunk in result:
                response.write(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return response.reply()


def environ(request: HttpRequest, script_name: str) -> dict[str, Any]:
    headers = request.headers
    host = headers.get("Host", "localhost")
    name, _, port = host.rpartition(":")
    if not port.isdigit():
        name, port = host, ""
    env: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": wire(request.path),
        "QUERY_STRING": request.query_string,
        "SERVER_NAME": name,
        "SERVER_PORT": port or "80",
        "SERVER_PROTOCOL": f"HTTP/{request.http_version}",
        "REMOTE_ADDR": request.source_ip,
        "RAW_URI": wire(request.raw_path),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": headers.get("X-Forwarded-Proto", "http"),
        "wsgi.input": io.BytesIO(request.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        # The whole body is read already: reading to EOF is safe.
        "wsgi.input_terminated": True,
    }
    content_type = headers.get("Content-Type")
    if content_type is not None:
        env["CONTENT_TYPE"] = wire(content_type)
    if request.body or "Content-Length" in headers:
        env["CONTENT_LENGTH"] = str(len(request.body))
    for key, value in request.joined_headers().items():
        if key in _SPECIAL:
            continue
        env["HTTP_" + key.upper().replace("-", "_")] = wire(value)
    return env


class _Response:
    """What the application gives `start_response` and yields, gathered into a Reply."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.chunks: list[bytes] = []

    def start(
        self, status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = None
    ) -> Callable[[bytes], None]:
        if self.status is not None and exc_info is None:
            raise AssertionError("start_response called twice without exc_info")
        # Nothing is sent before the app returns, so an error page may replace a response.
        code = status.partition(" ")[0]
        if not code.isdigit() or not 200 <= int(code) <= 599:
            raise InvalidReturnValue(f"WSGI status must start with a code 200..599: {status!r}")
        self.status = int(code)
        self.headers = CIMultiDict()
        for name, value in headers:
            if name.lower() not in DROPPED_HEADERS:
                self.headers.add(name, value)
        return self.write

    def write(self, data: bytes | bytearray | Iterable[int]) -> None:
        chunk = bytes(data)
        if chunk and self.status is None:
            raise AssertionError("the WSGI app wrote a body before start_response")
        self.chunks.append(chunk)

    def reply(self) -> Reply:
        if self.status is None:
            raise InvalidReturnValue("the WSGI app returned without calling start_response")
        return Reply(self.status, self.headers, b"".join(self.chunks))
