"""`styles`: what each handler style costs next to a native handler, in the runtime alone.

The Python runtime runs on this host (no engine, no gateway, no Postgres), one process per
style, each with a trivial handler answering `GET /?a=1` with "ok" (a sync one for native,
Lambda and OpenWhisk, a WSGI and an ASGI app). wrk drives them one after the other at 8
connections, in interleaved rounds so that other load on the machine falls on every style
alike. Figures: native's p50 and req/s, and each style's as a ratio to native's (median of
the rounds).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import say
from bench.runtime_logs import Runtime
from bench.wrk import wrk

# style -> (handler spec, code of handler.py)
HANDLERS: dict[str, tuple[str, str]] = {
    "native": ("handler.handle", "def handle(event, context):\n    return 'ok'\n"),
    "lambda": (
        "handler.handler",
        "def handler(event, context):\n    return {'statusCode': 200, 'body': 'ok'}\n",
    ),
    "lambda-v1": (
        "handler.handler",
        "def handler(event, context):\n    return {'statusCode': 200, 'body': 'ok'}\n",
    ),
    "openwhisk": ("handler.main", "def main(args):\n    return {'body': 'ok'}\n"),
    "wsgi": (
        "handler.app",
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'ok']\n",
    ),
    "asgi": (
        "handler.app",
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        raise RuntimeError('no lifespan')\n"
        "    await receive()\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'ok'})\n",
    ),
}


def run(quick: bool) -> dict[str, Any]:
    rounds, seconds = (1, 2) if quick else (3, 4)
    p50: dict[str, list[float]] = {style: [] for style in HANDLERS}
    rps: dict[str, list[float]] = {style: [] for style in HANDLERS}
    with tempfile.TemporaryDirectory(prefix="kapal-bench-styles-") as tmp:
        runtimes: dict[str, Runtime] = {}
        try:
            for style, (spec, code) in HANDLERS.items():
                folder = Path(tmp) / style
                folder.mkdir()
                (folder / "handler.py").write_text(code)
                runtimes[style] = Runtime(
                    folder, KAPAL_HANDLER=spec, KAPAL_STYLE=style, KAPAL_EVENT_LOOP="asyncio"
                )
            for n in range(rounds):
                for style, runtime in runtimes.items():
                    result = wrk(f"{runtime.url}/?a=1", connections=8, seconds=seconds)
                    if result.errors or result.non2xx:
                        raise RuntimeError(f"{style}: {result}")
                    p50[style].append(result.p50_us)
                    rps[style].append(result.rps)
                    say(f"round {n + 1} {style}: p50 {result.p50_us:.0f} µs, {result.rps:.0f}/s")
        finally:
            for runtime in runtimes.values():
                runtime.stop()
    native_p50 = statistics.median(p50["native"])
    native_rps = statistics.median(rps["native"])
    out: dict[str, Any] = {
        "native_p50_us": round(native_p50),
        "native_rps": round(native_rps),
    }
    for style in HANDLERS:
        if style == "native":
            continue
        key = style.replace("-", "_")
        out[f"{key}_p50_ratio"] = round(statistics.median(p50[style]) / native_p50, 2)
        out[f"{key}_rps_ratio"] = round(statistics.median(rps[style]) / native_rps, 2)
    return out
