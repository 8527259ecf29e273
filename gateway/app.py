"""The gateway application and its one lifespan: resources opened in order, closed in reverse."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway import api, db, invoke
from gateway.deploy import Deployer
from gateway.errors import error_middleware
from gateway.jobs import routes as job_routes
from gateway.queue import routes as queue_routes
from gateway.queue.service import QueueService, queue_key
from gateway.records import Recorder
from gateway.schedules import routes as schedule_routes
from gateway.settings import Settings
from gateway.store import FunctionStore
from gateway.webhooks import routes as webhook_routes
from scheduler.builder import ImageBuilder
from scheduler.docker_backend import DockerBackend
from scheduler.pool import PoolConfig
from scheduler.scheduler import Scheduler

log = logging.getLogger("kapal.gateway")


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware], client_max_size=settings.max_code_bytes + (1 << 20)
    )
    app[api.settings_key] = settings
    app.cleanup_ctx.append(lifespan)
    api.add_routes(app)
    queue_routes.add_routes(app)
    webhook_routes.add_routes(app)
    job_routes.add_routes(app)
    schedule_routes.add_routes(app)
    return app


async def lifespan(app: web.Application) -> AsyncIterator[None]:
    settings = app[api.settings_key]
    pg = await db.connect(settings.database_url)
    backend = DockerBackend(settings.namespace, settings.network)
    await backend.ensure_network()
    scheduler = Scheduler(
        backend,
        PoolConfig(
            start_timeout_s=settings.start_timeout_s,
            buffer_size=settings.buffer_size,
            stop_grace_s=settings.stop_grace_s,
        ),
    )
    store = FunctionStore(pg)
    recorder = Recorder(pg, settings.records_flush_s, settings.records_retention_days)
    builder = ImageBuilder(backend.api, settings.namespace, settings.base_images())
    invoker = invoke.Invoker(settings, scheduler, recorder)
    queue: QueueService | None = None
    try:
        specs = await store.current_specs()
        await scheduler.start(specs)
        recorder.start()
        await invoker.start()
        queue = await QueueService.open(settings, scheduler, invoker)
        await queue.start()
        app[queue_key] = queue
        app[api.store_key] = store
        app[api.scheduler_key] = scheduler
        app[api.recorder_key] = recorder
        app[api.invoker_key] = invoker
        app[api.deployer_key] = Deployer(settings, store, scheduler, builder, backend)
        invoke.add_routes(app, invoker)
        log.info(
            "gateway started",
            extra={
                "listen": settings.listen,
                "functions": len(specs),
                "namespace": settings.namespace,
            },
        )
        yield
    finally:
        if queue is not None:
            await queue.close()
        await invoker.close()
        await scheduler.close()
        await recorder.close()
        await pg.close()
        try:
            await backend.remove_network()
        except Exception as e:  # still in use by containers we do not own
            log.warning("network not removed", extra={"error": str(e)})
        backend.close()
        log.info("gateway stopped")
