"""The composition root: every service of a gateway, opened in order and closed in reverse.

Both servers get the one `Services` explicitly: the front server (`gateway.front`) and the
management application (`gateway.app`). Adding a service is one attribute and one step
in `Services.open`, with its closing pushed on the same stack.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from gateway import db
from gateway.auth import Gate
from gateway.deploy import Deployer
from gateway.invoke import Invoker
from gateway.jobs.store import JobStore
from gateway.keys import KeyCache, KeyStore
from gateway.queue.service import QueueService
from gateway.ratelimit import RateLimiter
from gateway.records import Recorder
from gateway.schedules.store import ScheduleStore
from gateway.schedules.ticker import Ticker
from gateway.settings import Settings
from gateway.store import FunctionStore
from gateway.supervisor import Supervisor
from gateway.upstream import Upstreams
from gateway.vault import SecretCipher, SecretFiles, Secrets, SecretStore
from gateway.webhooks.store import WebhookStore
from scheduler.autoscaler import AutoscalerConfig
from scheduler.builder import ImageBuilder
from scheduler.docker_backend import DockerBackend
from scheduler.pool import PoolConfig
from scheduler.prewarm import PrewarmPool
from scheduler.scheduler import Scheduler

log = logging.getLogger("kapal.gateway")


@dataclass(frozen=True)
class Services:
    settings: Settings
    # The management API's connections (the queue has a pool of its own).
    pg: asyncpg.Pool
    backend: DockerBackend
    functions: FunctionStore
    scheduler: Scheduler
    recorder: Recorder
    upstreams: Upstreams
    invoker: Invoker
    key_store: KeyStore
    keys: KeyCache
    gate: Gate
    secrets: Secrets
    deployer: Deployer
    queue: QueueService
    # Features built on the queue.
    webhooks: WebhookStore
    jobs: JobStore
    schedules: ScheduleStore

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: Settings, secret_key: bytes) -> AsyncIterator[Services]:
        """Every service, started; `secret_key` is the secrets key, loaded (and checked) once."""
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(log.info, "gateway stopped")
            pg = await db.connect(settings.database_url)
            stack.push_async_callback(pg.close)
            backend = _backend(settings)
            stack.callback(backend.close)
            await backend.ensure_network()
            stack.push_async_callback(_remove_network, backend)
            functions = FunctionStore(pg)
            scheduler = _scheduler(settings, backend, functions)
            recorder = Recorder(pg, settings.records_flush_s, settings.records_retention_days)
            upstreams = Upstreams()
            invoker = Invoker(
                settings, scheduler, recorder, upstreams, oom_killed=backend.oom_killed
            )
            secrets = Secrets(
                SecretStore(pg, SecretCipher(secret_key)),
                SecretFiles(settings.secrets_root, settings.runtime_uid),
            )
            stack.callback(secrets.files.clear)
            key_store = KeyStore(pg)
            if settings.bootstrap_key_file is not None:
                await bootstrap_admin_key(key_store, settings.bootstrap_key_file)
            keys = KeyCache(key_store, settings.keys_refresh_s)
            await keys.start()
            stack.push_async_callback(keys.close)

            specs = await functions.current_specs()
            for spec in specs:
                await secrets.mount(spec)
            stack.push_async_callback(recorder.close)
            stack.push_async_callback(scheduler.close)
            await scheduler.start(specs)
            recorder.start()
            stack.callback(upstreams.close)

            queue = await QueueService.open(settings, scheduler, invoker)
            stack.push_async_callback(queue.close)
            await queue.start()
            schedules = ScheduleStore(queue.pg, queue.store)
            # Feature loops stop before the queue they feed.
            features = Supervisor()
            features.add("kapal-schedules", Ticker(schedules, scheduler, settings.queue_poll_s).run)
            features.start()
            stack.push_async_callback(features.close)

            log.info(
                "gateway started",
                extra={
                    "listen": settings.listen,
                    "functions": len(specs),
                    "namespace": settings.namespace,
                },
            )
            yield cls(
                settings=settings,
                pg=pg,
                backend=backend,
                functions=functions,
                scheduler=scheduler,
                recorder=recorder,
                upstreams=upstreams,
                invoker=invoker,
                key_store=key_store,
                keys=keys,
                gate=Gate(keys, RateLimiter(), settings.key_rps),
                secrets=secrets,
                deployer=Deployer(
                    settings,
                    functions,
                    scheduler,
                    ImageBuilder(backend.api, settings.namespace, settings.base_images()),
                    backend,
                    secrets,
                ),
                queue=queue,
                webhooks=WebhookStore(queue.pg),
                jobs=JobStore(queue.pg),
                schedules=schedules,
            )


def _backend(settings: Settings) -> DockerBackend:
    return DockerBackend(
        settings.namespace,
        settings.network,
        secrets_root=settings.secrets_root,
        isolate_host=settings.isolate_host,
    )


def _scheduler(settings: Settings, backend: DockerBackend, functions: FunctionStore) -> Scheduler:
    prewarm = None
    if settings.prewarm_python:
        prewarm = PrewarmPool(
            backend,
            {"python": settings.runtime_image_python},
            settings.prewarm_python,
            functions,
            settings.start_timeout_s,
        )
    return Scheduler(
        backend,
        PoolConfig(
            start_timeout_s=settings.start_timeout_s,
            buffer_size=settings.buffer_size,
            stop_grace_s=settings.stop_grace_s,
            pause=settings.pause_standbys,
            target_utilization=settings.autoscale_target_utilization,
        ),
        AutoscalerConfig(
            target_utilization=settings.autoscale_target_utilization,
            stable_window_s=settings.autoscale_stable_window_s,
            panic_window_s=settings.autoscale_panic_window_s,
        ),
        prewarm,
    )


async def _remove_network(backend: DockerBackend) -> None:
    try:
        await backend.remove_network()
    except Exception as e:  # still in use by containers we do not own
        log.warning("network not removed", extra={"error": str(e)})


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
