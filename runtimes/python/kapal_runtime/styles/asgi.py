"""ASGI applications (FastAPI, Starlette, any ASGI 3 app) on the event loop, with their
lifespan: `startup` before the first invocation (a failure fails the load), `shutdown`
after the SIGTERM drain, and the state it fills copied into each request's scope.

Each invocation runs the app in a task of its own (the deadline cancels it) and is answered
as soon as the app has sent the whole body; what the app does after that (Starlette's
background tasks) runs on, as under an ASGI server, keeps the instance from looking idle,
and is waited for (bounded) at shutdown.
"""

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from multidict import CIMultiDict

from kapal_runtime.event import Context
from kapal_runtime.handler import DROPPED_HEADERS, InvalidReturnValue, Reply
from kapal_runtime.log import log_event, log_traceback
from kapal_runtime.styles.adapter import StyleHandler
from kapal_runtime.styles.request import HttpRequest
from kapal_runtime.styles.wsgi import mount_path
from kapal_runtime.threads import HandlerThreads

Message = MutableMapping[str, Any]
ASGI = {"version": "3.0", "spec_version": "2.4"}
# How long shutdown waits for the app's lifespan to say it is done.
SHUTDOWN_TIMEOUT_S = 10.0


class LifespanFailed(RuntimeError):
    """The app answered lifespan.startup.failed, or raised during its startup."""


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class AsgiStyle(StyleHandler):
    style = "asgi"

    def __init__(self, spec: str, target: Any, function: str, version: int) -> None:
        super().__init__(spec, target, function, version)
        self.is_async = True
        # Filled by the app during startup; each request's scope gets a shallow copy.
        self.state: dict[str, Any] = {}
        self._lifespan: _Lifespan | None = None
        # Apps still running after their answer was complete (background tasks).
        self._tails: set[asyncio.Future[Any]] = set()

    @property
    def late(self) -> int:
        return len(self._tails)

    async def run(self, request: HttpRequest, context: Context, threads: HandlerThreads) -> Reply:
        response = _Response()
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await response.complete.wait()  # then the client is, as far as the app knows, gone
            return {"type": "http.disconnect"}

        app = asyncio.ensure_future(self.target(self.scope(request), receive, response.send))
        complete = asyncio.ensure_future(response.complete.wait())
        try:
            await asyncio.wait((app, complete), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the deadline passed, or the server is stopping
            app.cancel()
            raise
        finally:
            complete.cancel()
        if not app.done():
            self._tails.add(app)
            app.add_done_callback(self._tail_done)
            return response.reply()
        exc = None if app.cancelled() else app.exception()
        if exc is not None:
            if not response.complete.is_set():
                raise exc
            # Sent first, raised after (Starlette's error middleware does this): keep the
            # answer the app chose and log why, as an ASGI server would.
            log_traceback(exc)
        return response.reply()

    def _tail_done(self, app: asyncio.Future[Any]) -> None:
        # Runs in the invocation's context: what it logs carries the invocation's tag.
        self._tails.discard(app)
        exc = None if app.cancelled() else app.exception()
        if exc is not None:
            log_traceback(exc)

    def scope(self, request: HttpRequest) -> dict[str, Any]:
        root = mount_path(self.function)
        headers = request.headers
        host, _, port = headers.get("Host", "localhost").rpartition(":")
        if not port.isdigit():
            host, port = headers.get("Host", "localhost"), "80"
        return {
            "type": "http",
            "asgi": ASGI,
            "http_version": request.http_version,
            "method": request.method,
            "scheme": headers.get("X-Forwarded-Proto", "http"),
            "path": root + request.path,
            "raw_path": _bytes(root + request.raw_path),
            "query_string": _bytes(request.query_string),
            "root_path": root,
            "headers": [(_bytes(k.lower()), _bytes(v)) for k, v in headers.items()],
            "client": (request.source_ip, 0),
            "server": (host, int(port)),
            "state": dict(self.state),
        }

    async def startup(self) -> None:
        self._lifespan = _Lifespan(self.target, self.state)
        await self._lifespan.startup()

    async def shutdown(self) -> None:
        if self._tails:
            await asyncio.wait(set(self._tails), timeout=SHUTDOWN_TIMEOUT_S)
        if self._lifespan is not None:
            await self._lifespan.shutdown(SHUTDOWN_TIMEOUT_S)


class _Response:
    """The app's http.response.* messages, gathered into a Reply."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.chunks: list[bytes] = []
        self.complete = asyncio.Event()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.status is not None:
                raise RuntimeError("http.response.start sent twice")
            status = message["status"]
            if type(status) is not int or not 200 <= status <= 599:
                raise InvalidReturnValue(f"ASGI status must be an int in 200..599: {status!r}")
            self.status = status
            for name, value in message.get("headers", ()):
                text = bytes(name).decode("latin-1")
                if text.lower() not in DROPPED_HEADERS:
                    self.headers.add(text, bytes(value).decode("latin-1"))
        elif kind == "http.response.body":
            if self.status is None:
                raise RuntimeError("http.response.body sent before http.response.start")
            if self.complete.is_set():
                raise RuntimeError("http.response.body sent after the response was complete")
            self.chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self.complete.set()
        # Other messages (trailers, extensions this server does not announce) are ignored.

    def reply(self) -> Reply:
        if self.status is None:
            raise InvalidReturnValue("the ASGI app returned without sending a response")
        return Reply(self.status, self.headers, b"".join(self.chunks))


class _Lifespan:
    """One `lifespan` scope for the life of the process, in a task of its own."""

    def __init__(
        self,
        app: Callable[[Message, Any, Any], Awaitable[None]],
        state: dict[str, Any],
    ) -> None:
        self._app = app
        self._state = state
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        # (ok, message) of startup and of shutdown; None when the app has no lifespan.
        self._started: asyncio.Future[tuple[bool, str] | None] = loop.create_future()
        self._stopped: asyncio.Future[tuple[bool, str] | None] = loop.create_future()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        self._task = asyncio.create_task(self._main(), name="asgi-lifespan")
        await self._inbox.put({"type": "lifespan.startup"})
        outcome = await self._started
        if outcome is None:
            log_event("asgi_lifespan_unsupported")
            return
        ok, message = outcome
        if not ok:
            raise LifespanFailed(f"ASGI lifespan startup failed: {message}")
        log_event("asgi_lifespan_started")

    async def shutdown(self, timeout_s: float) -> None:
        if self._task is None or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            outcome = await asyncio.wait_for(asyncio.shield(self._stopped), timeout_s)
        except TimeoutError:
            outcome = (False, f"no lifespan.shutdown.complete within {timeout_s:g}s")
        if outcome is not None and not outcome[0]:
            log_event("asgi_lifespan_shutdown_failed", "warning", error=outcome[1])
        self._task.cancel()

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI, "state": self._state}
        try:
            await self._app(scope, self._inbox.get, self._send)
        except Exception as exc:
            if not self._started.done():
                # An app without lifespan support raises on the scope type: run without it
                # (as uvicorn's "auto" mode does), but keep the reason in the logs.
                log_traceback(exc)
                self._started.set_result(None)
            elif not self._stopped.done():
                self._stopped.set_result((False, f"{type(exc).__name__}: {exc}"))
            return
        for future in (self._started, self._stopped):
            if not future.done():
                future.set_result(None)

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        text = str(message.get("message", ""))
        if kind == "lifespan.startup.complete":
            self._started.set_result((True, ""))
        elif kind == "lifespan.startup.failed":
            self._started.set_result((False, text))
        elif kind == "lifespan.shutdown.complete":
            self._stopped.set_result((True, ""))
        elif kind == "lifespan.shutdown.failed":
            self._stopped.set_result((False, text))
