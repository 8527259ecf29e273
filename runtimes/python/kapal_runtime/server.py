"""The runtime's HTTP server: /_/health, /_/init, and every other request as an invocation.

Each invocation is tagged for the logs (capture.py) while it runs; the lines are served on
a port of their own (logport.py), which outlives this server's drain at SIGTERM.
"""

import asyncio
import contextlib
import enum
import json
import math
import os
import platform
import signal
import site
import time
from collections.abc import AsyncIterator

from kapal_runtime.tls import ca_file_deferred

# First of the runtime's modules to import aiohttp (they all reach it through here).
with ca_file_deferred():
    from aiohttp import web

from kapal_runtime.bundle import InitSpec, InvalidInit, install, parse_init, preload_unpacking
from kapal_runtime.capture import Capture
from kapal_runtime.config import RuntimeConfig
from kapal_runtime.deadlines import DeadlineWatch
from kapal_runtime.errors import REQUEST_ID, error, json_response, not_allowed
from kapal_runtime.event import Context, Event, InvalidJSONBody
from kapal_runtime.handler import LoadedHandler
from kapal_runtime.log import describe, log_event, log_traceback
from kapal_runtime.logport import LogPort
from kapal_runtime.stream import Stream, StreamSender
from kapal_runtime.styles import Handler, load_handler
from kapal_runtime.styles.adapter import StyleHandler
from kapal_runtime.styles.request import HttpRequest
from kapal_runtime.threads import HandlerThreads
from kapal_runtime.websocket import WebSocket, WebSocketHandler, find_handler, is_websocket

DEADLINE = "X-Kapal-Deadline"


class State(enum.Enum):
    PREWARM = "prewarm"  # no handler yet; waiting for /_/init
    INITIALIZING = "initializing"  # an /_/init is unpacking and loading
    READY = "ready"  # handler loaded
    FAILED = "failed"  # loading (or init) failed; every invocation answers 500


# A busy answer keeps the connection when the unread body is this small (aiohttp reads and
# drops it after answering); a larger or chunked one closes it rather than read it all.
BUSY_DRAIN_BYTES = 64 * 1024


class BodyTooLarge(Exception):
    pass


class Runtime:
    """One runtime process: its configuration, its handler and the threads that run it."""

    def __init__(self, config: RuntimeConfig, capture: Capture | None = None) -> None:
        self.config = config
        # Tags what each invocation writes; None when output is not captured.
        self.capture = capture
        self.function = config.function
        self.version = config.version
        self.state = State.PREWARM
        self.handler: Handler | None = None
        # The function's `websocket(ws, context)`, when it accepts websockets.
        self.websocket: WebSocketHandler | None = None
        # (code, one-line message) answered by health and invocations once FAILED.
        self.failure: tuple[str, str] = ("handler_load_failed", "")
        self.concurrency = config.concurrency
        self.threads = HandlerThreads(config.threads)
        # Invocations admitted and not yet answered.
        self._open = 0
        self.deadlines = DeadlineWatch()

    def load(self, spec: str, style: str | None) -> bool:
        """Import the handler; on failure log why and answer 500 from then on."""
        started = time.perf_counter()
        try:
            handler = load_handler(spec, style, self.config.code_dir, self.function, self.version)
            # Native handlers only: other styles bring their own (an ASGI app's websockets).
            websocket = find_handler(spec) if isinstance(handler, LoadedHandler) else None
        except (Exception, SystemExit) as exc:
            log_traceback(exc)
            self._fail("handler_load_failed", describe(exc))
            log_event("handler_load_failed", "error", handler=spec, error=self.failure[1])
            return False
        self.handler = handler
        self.websocket = websocket
        self.state = State.READY
        log_event(
            "handler_loaded",
            handler=spec,
            style=handler.style,
            is_async=handler.is_async,
            takes_context=handler.takes_context if isinstance(handler, LoadedHandler) else None,
            websocket=websocket is not None,
            load_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return True

    async def start(self) -> bool:
        """Run what the handler's style does before its first invocation (ASGI startup)."""
        handler = self.handler
        if not isinstance(handler, StyleHandler):
            return True
        try:
            await handler.startup()
        except Exception as exc:
            log_traceback(exc)
            self.handler = None
            self._fail("handler_load_failed", describe(exc))
            log_event("handler_load_failed", "error", handler=handler.spec, error=self.failure[1])
            return False
        return True

    @property
    def in_flight(self) -> int:
        """Invocations being served, plus sync handlers still running past their answer."""
        return self._open + self.threads.late

    def _fail(self, code: str, message: str) -> None:
        self.state = State.FAILED
        self.failure = (code, message)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        request_id = request.headers.get(REQUEST_ID) or os.urandom(16).hex()
        path = request.path
        if path.startswith("/_/"):
            return await self._control(request, path, request_id)
        return await self._invoke(request, path, request_id)

    async def _invoke(self, request: web.Request, path: str, request_id: str) -> web.StreamResponse:
        handler = self.handler
        if handler is None:
            if self.state is State.FAILED:
                return error(*self.failure, request_id)
            return error("not_initialized", "this runtime awaits POST /_/init", request_id)
        limit = self.concurrency
        if limit and self.in_flight >= limit:
            return _busy(request, limit, request_id)
        self._open += 1
        capture = self.capture
        token = capture.begin(request_id) if capture is not None else None
        try:
            if is_websocket(request):
                return await self._websocket(request, path, request_id)
            return await self._run(handler, request, path, request_id)
        finally:
            self._open -= 1
            if capture is not None and token is not None:
                capture.end(token)

    async def _run(
        self, handler: Handler, request: web.Request, path: str, request_id: str
    ) -> web.StreamResponse:
        headers = request.headers
        deadline = _deadline(headers.get(DEADLINE), self.config.timeout_s)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = self.config.max_body_bytes
            return error("body_too_large", f"request body exceeds {limit} bytes", request_id)
        if deadline <= time.time():
            return error("timeout", "the deadline passed before the handler started", request_id)
        context = Context(self.function, self.version, request_id, deadline)
        task = asyncio.current_task()
        assert task is not None
        self.deadlines.watch(task, deadline)
        sender: StreamSender | None = None
        try:
            if isinstance(handler, LoadedHandler):
                event = Event(body, headers, request.method, path, request.query)
                reply = await handler.run(event, context, self.threads)
            else:
                reply = await handler.run(HttpRequest.of(request, body), context, self.threads)
            reply.headers[REQUEST_ID] = request_id
            out = reply.body
            if isinstance(out, Stream):
                sender = StreamSender(request, reply.status, reply.headers, out, self.threads)
                return await sender.send()
        except asyncio.CancelledError:
            if not self.deadlines.release(task):
                raise  # shutting down, not late
            log_event("handler_timeout", "warning", request_id=request_id)
            if sender is not None and sender.started:
                return sender.cut()
            return error("timeout", "the handler did not finish by the deadline", request_id)
        except InvalidJSONBody as exc:
            return error("invalid_json", str(exc), request_id)
        except (Exception, SystemExit) as exc:
            log_traceback(exc)
            if sender is not None and sender.started:
                return sender.cut()
            return error("handler_error", describe(exc), request_id)
        finally:
            self.deadlines.release(task)
        return web.Response(status=reply.status, body=out, headers=reply.headers)

    async def _websocket(
        self, request: web.Request, path: str, request_id: str
    ) -> web.StreamResponse:
        """An upgrade to a websocket: the function's `websocket(ws, context)` runs for the
        life of the connection, within the invocation's deadline."""
        accept = self.websocket
        if accept is None:
            message = (
                f"function {self.function} does not accept websockets"
                " (its handler module defines no `async def websocket(ws, context)`)"
            )
            return _closing(error("websocket_not_supported", message, request_id))
        if request.method != "GET" or not web.WebSocketResponse().can_prepare(request).ok:
            message = "not a valid websocket handshake (GET with Sec-WebSocket-Key and -Version)"
            return _closing(error("invalid_websocket", message, request_id))
        headers = request.headers
        deadline = _deadline(headers.get(DEADLINE), self.config.timeout_s)
        event = Event(b"", headers, request.method, path, request.query)
        context = Context(self.function, self.version, request_id, deadline)
        ws = WebSocket(request, event, self.config.max_body_bytes)
        task = asyncio.current_task()
        assert task is not None
        self.deadlines.watch(task, deadline)
        try:
            await accept(ws, context)
        except asyncio.CancelledError:
            if not self.deadlines.release(task):
                raise
            log_event("handler_timeout", "warning", request_id=request_id)
            if ws.response is None:
                message = "the handler did not finish by the deadline"
                return _closing(error("timeout", message, request_id))
            await ws.close(1001, "the function's time limit passed")
            return ws.response
        except (Exception, SystemExit) as exc:
            log_traceback(exc)
            if ws.response is None:
                return _closing(error("handler_error", describe(exc), request_id))
            await ws.close(1011, "the function failed")
            return ws.response
        finally:
            self.deadlines.release(task)
        if ws.response is None:
            message = "the function's websocket handler refused the connection"
            return _closing(error("websocket_refused", message, request_id))
        await ws.close()
        return ws.response

    async def _control(self, request: web.Request, path: str, request_id: str) -> web.Response:
        if path == "/_/health":
            if request.method not in ("GET", "HEAD"):
                return not_allowed("GET, HEAD", request_id)
            return self._health(request_id)
        if path == "/_/init":
            if request.method != "POST":
                return not_allowed("POST", request_id)
            return await self._init(request, request_id)
        return error("not_found", f"no runtime endpoint {path}", request_id)

    def _health(self, request_id: str) -> web.Response:
        if self.state is State.READY:
            return json_response(200, self._status_ok(), request_id)
        if self.state is State.PREWARM:
            return json_response(200, _STATUS_PREWARM, request_id)
        if self.state is State.INITIALIZING:
            return json_response(503, _STATUS_INITIALIZING, request_id)
        return error(*self.failure, request_id)

    async def _init(self, request: web.Request, request_id: str) -> web.Response:
        if self.state is not State.PREWARM:
            return error("already_initialized", self._why_no_init(), request_id)
        # Claimed before the first await, so two concurrent inits cannot both proceed.
        self.state = State.INITIALIZING
        started = time.perf_counter()
        try:
            raw = await _read_at_most(request, self.config.max_init_bytes)
            spec = await self.threads.run(parse_init, raw)
            await self.threads.run(install, spec, self.config.code_dir, self.config.deps_dir)
        except BodyTooLarge:
            self.state = State.PREWARM
            limit = self.config.max_init_bytes
            return error("body_too_large", f"init body exceeds {limit} bytes", request_id)
        except InvalidInit as exc:
            self.state = State.PREWARM
            log_event("init_refused", "warning", error=str(exc))
            return error("invalid_init", str(exc), request_id)
        except Exception as exc:
            log_traceback(exc)
            self._fail("init_failed", describe(exc))
            log_event("init_failed", "error", error=self.failure[1])
            return error(*self.failure, request_id)
        self._apply(spec)
        loaded = self.load(spec.handler, spec.style) and await self.start()
        log_event(
            "initialized",
            function=spec.function,
            version=spec.version,
            handler=spec.handler,
            ok=loaded,
            code_bytes=len(spec.code or b""),
            deps_bytes=len(spec.deps or b""),
            init_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        if not loaded:
            return error(*self.failure, request_id)
        return json_response(200, self._status_ok(), request_id)

    def _status_ok(self) -> bytes:
        # function and version let a restarted gateway adopt a prewarm-specialized container;
        # in_flight tells it when the container is idle (before pausing it).
        status = {
            "status": "ok",
            "function": self.function,
            "version": self.version,
            "in_flight": self.in_flight + self._background(),
        }
        return json.dumps(status, separators=(",", ":")).encode()

    def _background(self) -> int:
        # Work an app does after its answer (ASGI background tasks) takes no slot, but an
        # instance running it is not idle (a pause would freeze it).
        handler = self.handler
        return handler.late if isinstance(handler, StyleHandler) else 0

    def _why_no_init(self) -> str:
        if not self.config.prewarm:
            return "this runtime was started with a handler; only KAPAL_PREWARM=1 runtimes init"
        if self.state is State.INITIALIZING:
            return "an init is already in progress"
        return "this runtime is already initialized"

    def _apply(self, spec: InitSpec) -> None:
        """Make the unpacked function look as if the container had been started for it."""
        self.function, self.version = spec.function, spec.version
        if spec.concurrency is not None:
            self.concurrency = spec.concurrency
            os.environ["KAPAL_CONCURRENCY"] = str(spec.concurrency)
        os.environ.update(spec.env)
        os.environ["KAPAL_FUNCTION"] = spec.function
        os.environ["KAPAL_VERSION"] = str(spec.version)
        os.environ["KAPAL_HANDLER"] = spec.handler
        if spec.style is not None:
            os.environ["KAPAL_STYLE"] = spec.style
        if spec.deps is not None:
            site.addsitedir(str(self.config.deps_dir))  # also honours the deps' .pth files

    async def draining(self, app: web.Application) -> None:
        # The listening socket is closed; in-flight invocations get up to the timeout.
        log_event("draining", in_flight=self.in_flight, timeout_s=self.config.timeout_s)

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        log_event(
            "started",
            port=self.config.port,
            log_port=self.config.log_port if self.capture else None,
            function=self.function,
            version=self.version,
            state=self.state.value,
            concurrency=self.concurrency,
            handler=self.handler.spec if self.handler else None,
            python=platform.python_version(),
            loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        )
        sweeper = asyncio.create_task(self.deadlines.run(), name="deadline-sweeper")
        await self.start()  # before the port listens: no invocation precedes the startup
        yield
        sweeper.cancel()
        if isinstance(self.handler, StyleHandler):
            await self.handler.shutdown()  # after the drain, as ASGI servers do
        # Requests have drained by now (bounded by the shutdown timeout); a thread still
        # running a handler past its deadline is not waited for (threads.py).
        log_event("stopped")


def build_app(runtime: Runtime) -> web.Application:
    app = web.Application(client_max_size=runtime.config.max_body_bytes)
    app.router.add_route("*", "/{path:.*}", runtime.dispatch)
    if runtime.capture is not None:
        config = runtime.config
        port = LogPort(
            runtime.capture.buffer,
            config.log_port,
            lambda: (runtime.function, runtime.version),
            config.log_drain_s,
        )
        # First in, last out: it opens before the runtime starts and closes after it stopped.
        app.cleanup_ctx.append(port.lifespan)
    app.cleanup_ctx.append(runtime.lifespan)
    app.on_shutdown.append(runtime.draining)
    return app


def run(config: RuntimeConfig, capture: Capture | None = None) -> None:
    """Load the handler (unless prewarm), serve until SIGTERM or SIGINT, drain, let the
    gateway pull the last lines, return."""
    loop = new_event_loop(config.event_loop)
    # Current before the handler is imported, for modules that look up the loop at import.
    asyncio.set_event_loop(loop)
    runtime = Runtime(config, capture)
    if not config.prewarm:
        runtime.load(config.handler, config.style)
    else:
        preload_unpacking()
    stopping = asyncio.Event()

    def on_signal(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(stopping.set)

    # Handled on this thread, which only waits while the loop runs on the handler threads.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    runtime.threads.serve(loop, serve(build_app(runtime), config, stopping))


async def serve(app: web.Application, config: RuntimeConfig, stopping: asyncio.Event) -> None:
    """What `web.run_app` does, on a loop it does not run: serve until `stopping`, drain."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.timeout_s)
    await runner.setup()
    try:
        await web.TCPSite(runner, "0.0.0.0", config.port).start()
        await stopping.wait()
    finally:
        await runner.cleanup()


def preload(config: RuntimeConfig) -> None:
    """Import in the zygote what every worker imports at start beyond this module's own
    imports: the event loop's module, and what a prewarmed one's /_/init unpacks with."""
    if config.prewarm:
        preload_unpacking()
    if config.event_loop != "asyncio":
        with contextlib.suppress(Exception):  # new_event_loop says why, in the worker
            import uvloop  # noqa: F401


def new_event_loop(choice: str) -> asyncio.AbstractEventLoop:
    if choice != "asyncio":
        try:
            import uvloop
        except Exception:  # absent, or a broken build among the function's dependencies
            if choice == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _closing(response: web.Response) -> web.Response:
    # An upgrade refused: what the client sends next may be websocket frames, not HTTP.
    response.force_close()
    return response


def _busy(request: web.Request, limit: int, request_id: str) -> web.Response:
    """503 busy at once, the handler not run and the body not awaited."""
    message = f"this instance already runs its limit of {limit} invocations"
    response = error("busy", message, request_id)
    length = request.content_length
    if (length is None and request.can_read_body) or (length or 0) > BUSY_DRAIN_BYTES:
        response.force_close()
    return response


_STATUS_PREWARM = b'{"status":"prewarm","in_flight":0}'
_STATUS_INITIALIZING = b'{"status":"initializing"}'


def _deadline(header: str | None, timeout_s: float) -> float:
    """Unix epoch seconds: the X-Kapal-Deadline header if it is a number, else now + timeout."""
    if header:
        try:
            value = float(header)
        except ValueError:
            pass
        else:
            if math.isfinite(value):
                return value
    return time.time() + timeout_s


async def _read_at_most(request: web.Request, limit: int) -> bytes:
    # Init bodies carry whole archives, so they have their own, larger limit.
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
