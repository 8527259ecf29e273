"""Running the gateway: `python -m gateway` (reads KAPAL_* settings).

The public port is served by the raw front server (`gateway.front`); the aiohttp
management application listens on a private unix socket behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

import uvloop
from aiohttp import web
from pydantic import ValidationError

from gateway import jsonlog, workers
from gateway.app import create_app, create_metrics_app
from gateway.front import Front
from gateway.http1 import ClientConnection
from gateway.server import GatewayRunner
from gateway.services import Services
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


def load_secret_key(settings: Settings) -> bytes:
    """The secrets key; fails at once, naming the setting, when it is unusable."""
    raw = settings.secret_key.get_secret_value() if settings.secret_key else None
    try:
        return load_key(raw, settings.key_file())
    except (SecretKeyError, OSError) as e:
        print(f"kapal: bad secrets key: {e}", file=sys.stderr)
        raise SystemExit(2) from None


async def serve(
    settings: Settings,
    secret_key: bytes,
    stop: asyncio.Event,
    *,
    reuse_port: bool = False,
    worker: int = 0,
) -> None:
    """Serve until `stop` is set, then drain in-flight work and close everything.

    `reuse_port`: one of several workers listening on the same port (`gateway.workers`),
    this one numbered `worker`.
    """
    loop = asyncio.get_running_loop()
    async with Services.open(settings, secret_key) as svc:
        # Requests aiohttp cannot parse get a JSON error too (see gateway.server).
        runner = GatewayRunner(
            create_app(svc),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=settings.stop_grace_s,
        )
        with tempfile.TemporaryDirectory(prefix="kapal-gw-") as tmp:
            socket_path = str(Path(tmp) / "management.sock")
            await runner.setup()
            metrics_runner: web.AppRunner | None = None
            try:
                await web.UnixSite(runner, socket_path).start()
                if (address := settings.metrics_address(worker)) is not None:
                    host, port = address
                    metrics_runner = web.AppRunner(
                        create_metrics_app(svc), access_log=None, handle_signals=False
                    )
                    await metrics_runner.setup()
                    await web.TCPSite(metrics_runner, host, port).start()
                    log.info("metrics listening", extra={"listen": f"{host}:{port}"})
                front = Front(svc, f"unix:{socket_path}")
                server = await loop.create_server(
                    lambda: ClientConnection(front, front.table),
                    settings.host,
                    settings.port,
                    reuse_address=True,
                    reuse_port=reuse_port,
                    backlog=4096,
                )
                log.info("listening", extra={"listen": settings.listen})
                await stop.wait()
                log.info("stopping: draining in-flight requests")
                server.close()
                await front.drain(settings.stop_grace_s)
            finally:
                if metrics_runner is not None:
                    await metrics_runner.cleanup()
                await runner.cleanup()


def worker_index(argv: list[str]) -> int | None:
    """`--worker I`: this process is worker I of a `KAPAL_WORKERS` group."""
    if len(argv) == 2 and argv[0] == "--worker" and argv[1].isdigit():
        return int(argv[1])
    if argv:
        print(
            f"kapal: unexpected arguments {' '.join(argv)!r} (settings are KAPAL_*)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return None


async def watch_parent(parent: int, stop: asyncio.Event) -> None:
    """A worker whose supervisor died stops too (nothing else would ever stop it)."""
    while not stop.is_set():
        if workers.orphaned(parent):
            log.warning("worker supervisor gone; stopping")
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


def run() -> None:
    settings = load_settings()
    secret_key = load_secret_key(settings)
    jsonlog.setup(settings.log_level)
    index = worker_index(sys.argv[1:])
    if index is None and settings.workers > 1:
        # Time to drain, then to remove what the last one leaves.
        raise SystemExit(workers.supervise(settings.workers, settings.stop_grace_s + 60.0))
    parent = os.getppid()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if index is None:
            await serve(settings, secret_key, stop)
            return
        watcher = asyncio.create_task(watch_parent(parent, stop))
        try:
            await serve(settings, secret_key, stop, reuse_port=True, worker=index)
        finally:
            watcher.cancel()

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main())
