"""Running the gateway: `python -m gateway` (reads KAPAL_* settings).

The public port is served by the raw front server (`gateway.front`); the aiohttp
management application listens on a private unix socket behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from pathlib import Path

import uvloop
from aiohttp import web
from pydantic import ValidationError

from gateway import api, logs
from gateway.app import create_app
from gateway.auth import gate_key
from gateway.connections import ConnectionLimits, ConnectionTable
from gateway.front import Front
from gateway.http1 import ClientConnection
from gateway.server import GatewayRunner
from gateway.settings import Settings
from gateway.vault import SecretKeyError, load_key

log = logging.getLogger("kapal.gateway")


def load_settings() -> Settings:
    try:
        return Settings()  # type: ignore[call-arg]
    except ValidationError as e:
        for err in e.errors():
            key = "KAPAL_" + "_".join(str(p) for p in err["loc"]).upper()
            print(f"kapal: bad setting {key}: {err['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def check_secret_key(settings: Settings) -> None:
    """Fail at once, naming the setting, when the secrets key is unusable."""
    raw = settings.secret_key.get_secret_value() if settings.secret_key else None
    try:
        load_key(raw, settings.key_file())
    except (SecretKeyError, OSError) as e:
        print(f"kapal: bad secrets key: {e}", file=sys.stderr)
        raise SystemExit(2) from None


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Serve until `stop` is set, then drain in-flight work and close everything."""
    loop = asyncio.get_running_loop()
    app = create_app(settings)
    # Requests aiohttp cannot parse get a JSON error too (see gateway.server).
    runner = GatewayRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=settings.stop_grace_s
    )
    with tempfile.TemporaryDirectory(prefix="kapal-gw-") as tmp:
        socket_path = str(Path(tmp) / "management.sock")
        await runner.setup()
        try:
            await web.UnixSite(runner, socket_path).start()
            invoker = app[api.invoker_key]
            front = Front(
                settings, invoker, app[gate_key], invoker.upstreams, f"unix:{socket_path}"
            )
            table: ConnectionTable[ClientConnection] = ConnectionTable(
                ConnectionLimits.from_settings(settings)
            )
            server = await loop.create_server(
                lambda: ClientConnection(front, table),
                settings.host,
                settings.port,
                reuse_address=True,
                backlog=4096,
            )
            log.info("listening", extra={"listen": settings.listen})
            await stop.wait()
            log.info("stopping: draining in-flight requests")
            server.close()
            await front.drain(settings.stop_grace_s)
        finally:
            await runner.cleanup()


def run() -> None:
    settings = load_settings()
    check_secret_key(settings)
    logs.setup(settings.log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main())
