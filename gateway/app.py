"""The gateway application and its one lifespan: resources opened in order, closed in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from gateway import api, db, invoke
from gateway.auth import Gate, auth_middleware, gate_key, keys_key
from gateway.catalog import Catalog
from gateway.cluster import Cluster
from gateway.deploy import Deployer
from gateway.errors import error_middleware
from gateway.jobs import routes as job_routes
from gateway.keys import KeyCache, KeyStore
from gateway.queue import routes as queue_routes
from gateway.queue.service import QueueService, queue_key
from gateway.ratelimit import RateLimiter
from gateway.records import Recorder
from gateway.schedules import routes as schedule_routes
from gateway.settings import Settings
from gateway.store import FunctionStore
from gateway.supervisor import Supervisor
from gateway.upstream import Upstreams
from gateway.vault import SecretCipher, SecretFiles, Secrets, SecretStore, load_key
from gateway.webhooks import routes as webhook_routes
from scheduler.autoscaler import AutoscalerConfig
from scheduler.builder import ImageBuilder
from scheduler.docker_backend import DockerBackend
from scheduler.pool import PoolConfig
from scheduler.prewarm import PrewarmPool
from scheduler.scheduler import Scheduler

log = logging.getLogger("kapal.gateway")

# Serializes creating the function networks between gateways of one namespace.
NETWORK_LOCK = "kapal-network:"


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, auth_middleware],
        client_max_size=settings.max_code_bytes + (1 << 20),
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
    key = load_key(
        settings.secret_key.get_secret_value() if settings.secret_key else None,
        settings.key_file(),
    )
    backend = DockerBackend(
        settings.namespace,
        settings.network,
        secrets_root=settings.secrets_root,
        isolate_host=settings.isolate_host,
    )
    async with pg.acquire() as conn:  # gateways starting together create it once
        await conn.execute(
            "SELECT pg_advisory_lock(hashtext($1))", NETWORK_LOCK + settings.namespace
        )
        try:
            await backend.ensure_network()
        finally:
            await conn.execute(
                "SELECT pg_advisory_unlock(hashtext($1))", NETWORK_LOCK + settings.namespace
            )
    store = FunctionStore(pg)
    prewarm = None
    if settings.prewarm_python:
        prewarm = PrewarmPool(
            backend,
            {"python": settings.runtime_image_python},
            settings.prewarm_python,
            store,
            settings.start_timeout_s,
        )
    limiter = RateLimiter()
    cluster = Cluster(settings.database_url, settings.namespace, limiter)
    scheduler = Scheduler(
        backend,
        PoolConfig(
            start_timeout_s=settings.start_timeout_s,
            buffer_size=settings.buffer_size,
            stop_grace_s=settings.stop_grace_s,
            pause=settings.pause_standbys,
        ),
        AutoscalerConfig(
            target_utilization=settings.autoscale_target_utilization,
            stable_window_s=settings.autoscale_stable_window_s,
            panic_window_s=settings.autoscale_panic_window_s,
        ),
        prewarm,
        peers=cluster,
    )
    cluster.scheduler = scheduler
    recorder = Recorder(pg, settings.records_flush_s, settings.records_retention_days)
    builder = ImageBuilder(backend.api, settings.namespace, settings.base_images())
    upstreams = Upstreams()
    invoker = invoke.Invoker(
        settings, scheduler, recorder, upstreams, oom_killed=backend.oom_killed
    )
    secrets = Secrets(
        SecretStore(pg, SecretCipher(key)), SecretFiles(settings.secrets_root, settings.runtime_uid)
    )
    key_store = KeyStore(pg)
    keys = KeyCache(key_store)
    catalog = Catalog(store, scheduler, secrets, keys, settings.catalog_refresh_s)
    secrets.users_of = catalog.users_of
    catalog.on_change.append(lambda specs: limiter.forget_missing(specs))
    loops = Supervisor()
    loops.add("kapal-catalog", lambda stop: catalog.run(settings.database_url, stop))
    loops.add("kapal-cluster", cluster.run)
    queue: QueueService | None = None
    started = False
    try:
        if settings.bootstrap_key_file is not None:
            await bootstrap_admin_key(key_store, settings.bootstrap_key_file)
        specs = await catalog.load()
        app[api.key_store_key] = key_store
        app[keys_key] = keys
        app[gate_key] = Gate(keys, limiter, settings.key_rps)
        await scheduler.start(specs)
        started = True
        loops.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cluster.tried.wait(), 10.0)
        recorder.start()
        queue = await QueueService.open(settings, scheduler, invoker)
        await queue.start()
        app[queue_key] = queue
        app[api.store_key] = store
        app[api.scheduler_key] = scheduler
        app[api.recorder_key] = recorder
        app[api.invoker_key] = invoker
        app[api.secrets_key] = secrets
        app[api.catalog_key] = catalog
        app[api.deployer_key] = Deployer(settings, store, builder, backend, secrets, catalog)
        log.info(
            "gateway started",
            extra={
                "listen": settings.listen,
                "functions": len(specs),
                "namespace": settings.namespace,
                "gateway": cluster.id,
            },
        )
        yield
    finally:
        if queue is not None:
            await queue.close()
        upstreams.close()
        # Decided before the cluster loop stops: are other gateways staying?
        last = not cluster.others()
        if started:
            await scheduler.close(last=last)
        await loops.close()
        await cluster.leave(pg)
        await recorder.close()
        if last:
            secrets.files.clear()
        await pg.close()
        if last:
            try:
                await backend.remove_network()
            except Exception as e:  # still in use by containers we do not own
                log.warning("network not removed", extra={"error": str(e)})
        backend.close()
        log.info("gateway stopped")


async def bootstrap_admin_key(store: KeyStore, path: Path) -> None:
    """The first admin key, when there is none: written to `path`, shown once on stdout."""
    token = await store.bootstrap(path)
    if token is None:
        return
    # Deliberately not a log record: logs are kept and shipped, this is shown once.
    print(
        f"kapal: created the first admin API key (saved to {path}, mode 0600):\n  {token}",
        flush=True,
    )
    log.info("bootstrap admin key created", extra={"path": str(path)})
