"""Loading the function's handler once, calling it, and turning what it returns into a reply."""

import base64
import binascii
import contextvars
import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from multidict import CIMultiDict

from kapal_runtime.event import Context, Event
from kapal_runtime.stream import Stream, is_stream
from kapal_runtime.threads import HandlerThreads

CONTENT_TYPE = "Content-Type"
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
BINARY_TYPE = "application/octet-stream"

# The server computes these itself; a handler's value would only corrupt the framing.
DROPPED_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class InvalidReturnValue(ValueError):
    """The handler returned something that cannot become an HTTP response."""


@dataclass(slots=True)
class Reply:
    """A response ready to send: status, headers and body bytes (or a body made as sent)."""

    status: int
    headers: CIMultiDict[str]
    body: bytes | Stream


@dataclass(frozen=True, slots=True)
class LoadedHandler:
    """The user's callable, inspected once at load so each call does no inspection."""

    # The handler convention; other styles are adapters in kapal_runtime/styles/.
    style: ClassVar[str] = "native"
    spec: str
    # Called as call(event, context) whatever the user's function takes.
    call: Callable[[Event, Context], Any]
    is_async: bool
    takes_context: bool

    async def run(self, event: Event, context: Context, threads: HandlerThreads) -> Reply:
        """Call the handler (async ones on the loop, sync ones on a thread) and adapt it."""
        if self.is_async:
            return to_reply(await self.call(event, context))
        # In a copy of this context: what the handler writes carries this invocation's tag.
        run_in_context = contextvars.copy_context().run
        outcome = await threads.run(run_in_context, self._run_sync, event, context)
        if inspect.iscoroutine(outcome):
            # A sync wrapper around an async function: its coroutine runs here, on the loop
            # (blocking the calling thread on it would wait for the loop to be handed on).
            return to_reply(await outcome)
        reply: Reply = outcome
        return reply

    def _run_sync(self, event: Event, context: Context) -> Reply | Coroutine[Any, Any, Any]:
        result = self.call(event, context)
        if inspect.iscoroutine(result):
            return result
        # Serialising here keeps large JSON bodies off the event loop.
        return to_reply(result)


def parse_spec(spec: str) -> tuple[str, str]:
    """Split "pkg.mod.fn" (or "pkg.mod:fn") into module "pkg.mod" and attribute "fn"."""
    module, sep, attr = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    names = [*module.split("."), attr]
    if not sep or not all(name.isidentifier() for name in names):
        raise ValueError(f"handler {spec!r} is not of the form 'module.function'")
    return module, attr


def load_handler(spec: str, code_dir: Path) -> LoadedHandler:
    """Import the handler's module from `code_dir` and check the callable's shape.

    Raises whatever the import raises (ImportError, SyntaxError, ...), AttributeError,
    or TypeError when the object is not a callable taking (event, context) or (event).
    """
    return native_handler(spec, import_target(spec, code_dir))


def import_target(spec: str, code_dir: Path) -> object:
    """The object `spec` names, its module imported from `code_dir`."""
    module_name, attr = parse_spec(spec)
    code = str(code_dir)
    if code not in sys.path:
        sys.path.insert(0, code)
    if code_dir.is_dir():
        os.chdir(code_dir)
    # The directory may have been filled after start-up (by /_/init): forget stale listings.
    importlib.invalidate_caches()
    if module_name == "__main__":
        # OpenWhisk's zip actions: their __main__.py, imported as OpenWhisk imports it
        # ("main__"), never this process's own __main__.
        module = _import_file(code_dir / "__main__.py", "main__")
    else:
        module = importlib.import_module(module_name)
    return getattr(module, attr)


def native_handler(spec: str, fn: object) -> LoadedHandler:
    """`fn` as a native handler: (event, context) or (event), sync or async."""
    if not callable(fn):
        raise TypeError(f"{spec} is not callable (it is a {type(fn).__name__})")
    takes_context = _takes_context(fn, spec)
    call: Callable[[Event, Context], Any] = fn if takes_context else _drop_context(fn)
    return LoadedHandler(spec, call, is_async(fn), takes_context)


def _import_file(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}", path=str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _takes_context(fn: Callable[..., Any], spec: str) -> bool:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C callables have none
        return True
    for args in ((None, None), (None,)):
        try:
            signature.bind(*args)
        except TypeError:
            continue
        return len(args) == 2
    raise TypeError(f"{spec} must accept (event, context) or (event), not {signature}")


def is_async(fn: Callable[..., Any]) -> bool:
    # Also instances of a class with `async def __call__`.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def _drop_context(fn: Callable[[Event], Any]) -> Callable[[Event, Context], Any]:
    def call(event: Event, context: Context) -> Any:
        return fn(event)

    return call


def to_reply(value: object) -> Reply:
    """Adapt a handler's return value.

    None → 204; str → text; bytes → octet-stream; a dict with "statusCode" → that response
    (AWS Lambda / OpenFaaS style); an iterator or async iterator → a streamed body
    (stream.py); anything else → 200 JSON.
    """
    if value is None:
        return Reply(204, CIMultiDict(), b"")
    if isinstance(value, str):
        return Reply(200, CIMultiDict({CONTENT_TYPE: TEXT_TYPE}), value.encode("utf-8"))
    if isinstance(value, bytes | bytearray | memoryview):
        return Reply(200, CIMultiDict({CONTENT_TYPE: BINARY_TYPE}), bytes(value))
    if isinstance(value, dict) and "statusCode" in value:
        return _from_response_dict(value)
    if is_stream(value):
        return Reply(200, CIMultiDict(), Stream(value))
    return Reply(200, CIMultiDict({CONTENT_TYPE: JSON_TYPE}), to_json(value))


def _from_response_dict(value: Mapping[str, Any]) -> Reply:
    status = value["statusCode"]
    if type(status) is not int or not 200 <= status <= 599:
        raise InvalidReturnValue(f"statusCode must be an int in 200..599, not {status!r}")
    headers = response_headers(value.get("headers"), value.get("multiValueHeaders"))
    for cookie in value.get("cookies") or ():
        headers.add("Set-Cookie", header_value("Set-Cookie", cookie))
    body = value.get("body")
    if value.get("isBase64Encoded"):
        if not isinstance(body, str | bytes):
            raise InvalidReturnValue("isBase64Encoded needs a str body")
        try:
            data = base64.b64decode(body, validate=True)
        except binascii.Error as exc:
            raise InvalidReturnValue(f"body is not valid base64: {exc}") from None
        headers.setdefault(CONTENT_TYPE, BINARY_TYPE)
        return Reply(status, headers, data)
    if body is None:
        return Reply(status, headers, b"")
    if isinstance(body, str):
        headers.setdefault(CONTENT_TYPE, TEXT_TYPE)
        return Reply(status, headers, body.encode("utf-8"))
    if isinstance(body, bytes | bytearray | memoryview):
        headers.setdefault(CONTENT_TYPE, BINARY_TYPE)
        return Reply(status, headers, bytes(body))
    if is_stream(body):
        return Reply(status, headers, Stream(body))
    headers.setdefault(CONTENT_TYPE, JSON_TYPE)
    return Reply(status, headers, to_json(body))


def response_headers(single: object, multi: object) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for source in (single, multi):
        if source is None:
            continue
        if not isinstance(source, Mapping):
            raise InvalidReturnValue(f"headers must be a dict, not {type(source).__name__}")
        for name, value in source.items():
            if not isinstance(name, str) or not name or not _is_clean(name):
                raise InvalidReturnValue(f"invalid header name {name!r}")
            if name.lower() in DROPPED_HEADERS:
                continue
            values = value if isinstance(value, list | tuple) else (value,)
            for item in values:
                headers.add(name, header_value(name, item))
    return headers


def header_value(name: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidReturnValue(f"header {name} must be a str, not {type(value).__name__}")
    text = str(value)
    if not _is_clean(text):
        raise InvalidReturnValue(f"header {name} contains a line break or NUL")
    return text


def _is_clean(text: str) -> bool:
    return "\r" not in text and "\n" not in text and "\0" not in text


def to_json(value: object) -> bytes:
    try:
        return _ENCODER.encode(value).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidReturnValue(f"cannot serialize the return value as JSON: {exc}") from None
