"""Handler styles: code written for another platform, run unchanged.

`native` is Kapal's own `handle(event, context)` (handler.py); the others are adapters,
one module each. The style comes from the spec (KAPAL_STYLE, or "style" in /_/init) or,
when none is given, is detected from the object the handler names, where that is not
ambiguous:
- an async callable taking (scope, receive, send): `asgi` (FastAPI, Starlette);
- a Flask-like app (`wsgi_app`), a Django `WSGIHandler`, or a callable whose parameters
  are named (environ, start_response): `wsgi`;
- `__main__.main`, the handler of an OpenWhisk zip action: `openwhisk`;
- anything else: `native`. A Lambda handler (event, context) and an OpenWhisk `main(args)`
  have the same shape as a native handler, so they need `style`.
"""

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kapal_runtime.handler import LoadedHandler, import_target, is_async, native_handler, parse_spec
from kapal_runtime.styles import lambda_, openwhisk
from kapal_runtime.styles.adapter import StyleHandler
from kapal_runtime.styles.asgi import AsgiStyle
from kapal_runtime.styles.lambda_ import LambdaStyle, LambdaV1Style
from kapal_runtime.styles.openwhisk import OpenWhiskStyle
from kapal_runtime.styles.wsgi import WsgiStyle

Handler = LoadedHandler | StyleHandler

ADAPTERS: dict[str, type[StyleHandler]] = {
    cls.style: cls for cls in (LambdaStyle, LambdaV1Style, OpenWhiskStyle, WsgiStyle, AsgiStyle)
}
# The arguments each style calls the user's object with, to check it at load.
_ARITY = {"lambda": 2, "lambda-v1": 2, "openwhisk": 1, "wsgi": 2, "asgi": 3}
# Variables a style's platform sets, which its code may read as it is imported.
_ENVIRONMENT: dict[str, Callable[[str, int, Path], None]] = {
    "lambda": lambda_.prepare_environment,
    "lambda-v1": lambda_.prepare_environment,
    "openwhisk": openwhisk.prepare_environment,
}


def load_handler(
    spec: str, style: str | None, code_dir: Path, function: str, version: int
) -> Handler:
    """Import what `spec` names and wrap it for its style (given, or detected).

    Raises what the import raises, AttributeError, or TypeError when the object does not
    fit the style.
    """
    if style in _ENVIRONMENT:
        _ENVIRONMENT[style](function, version, code_dir)
    target = import_target(spec, code_dir)
    chosen = style or detect(spec, target)
    if chosen == "native":
        return native_handler(spec, target)
    if chosen == "openwhisk" and style is None:
        openwhisk.prepare_environment(function, version, code_dir)
    _check(spec, target, chosen)
    return ADAPTERS[chosen](spec, target, function, version)


def detect(spec: str, target: object) -> str:
    if parse_spec(spec)[0] == "__main__":
        return "openwhisk"
    if callable(target) and is_async(target) and _arity(target) == 3:
        return "asgi"
    if _is_wsgi(target):
        return "wsgi"
    return "native"


def _is_wsgi(target: object) -> bool:
    if not callable(target) or is_async(target):
        return False
    if callable(getattr(target, "wsgi_app", None)):  # Flask, and apps built like it
        return True
    if any(cls.__name__ == "WSGIHandler" for cls in type(target).__mro__):  # Django
        return True
    try:
        names = list(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return False
    return names == ["environ", "start_response"]


def _arity(target: Callable[..., Any]) -> int | None:
    """How many positional arguments `target` takes, when that is one number."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # some builtins and C callables have none
        return None
    fits = []
    for count in (1, 2, 3):
        try:
            signature.bind(*([None] * count))
        except TypeError:
            continue
        fits.append(count)
    return fits[0] if len(fits) == 1 else None


def _check(spec: str, target: object, style: str) -> None:
    if not callable(target):
        raise TypeError(f"{spec} is not callable (it is a {type(target).__name__})")
    arity = _arity(target)
    wanted = _ARITY[style]
    if arity is not None and arity != wanted:
        raise TypeError(f"{spec} takes {arity} argument(s); {style} handlers take {wanted}")
    if style == "asgi" and not is_async(target):
        raise TypeError(f"{spec} is not an async callable (scope, receive, send)")
