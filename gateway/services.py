"""The composition root: every service of a gateway, opened in order and closed in reverse.

Both servers get the one `Services` explicitly: the front server (`gateway.front`) and the
management application (`gateway.app`). Adding a service is one attribute and one step
in `Services.open`, with its closing pushed on the same stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from gateway import db
from gateway.auth import Gate
from gateway.catalog import Catalog
from gateway.cluster import Cluster
from gateway.deploy import Backend, Deployer
from gateway.exporter import CachedQueueStats, Exporter
from gateway.invoke import Invoker
from gateway.jobs.store import JobStore
from gateway.keys import KeyCache, KeyStore
from gateway.logs.service import Logs
from gateway.metrics import Metrics
from gateway.queue.service import QueueService
from gateway.queue.store import QueueStore
from gateway.ratelimit import RateLimiter
from gateway.records import Recorder
from gateway.schedules.store import ScheduleStore
from gateway.schedules.ticker import Ticker
from gateway.settings import Settings
from gateway.store import FunctionStore
from gateway.supervisor import Supervisor
from gateway.upstream import Upstreams
from gateway.vault import SecretCipher, SecretFiles, Secrets, SecretStore
from gateway.webhooks.store import WebhookStore, seal_plaintext
from scheduler.autoscaler import AutoscalerConfig
from scheduler.backend import ContainerBackend
from scheduler.builder import ImageBuilder
from scheduler.depcache import DependencyCache
from scheduler.docker_backend import DockerBackend
from scheduler.forks import Zygotes
from scheduler.images import ImageResolver
from scheduler.keepalive import KeepAliveConfig
from scheduler.pool import PoolConfig
from scheduler.prewarm import PrewarmPool
from scheduler.scheduler import Scheduler
from scheduler.start_gate import StartGate
from scheduler.swarm_backend import SwarmBackend

log = logging.getLogger("kapal.gateway")


# Serializes creating the function networks between gateways of one namespace.
NETWORK_LOCK = "kapal-network:"
# How long a starting gateway waits to hear its peers before it decides it is alone.
PEERS_WAIT_S = 10.0


@dataclass(frozen=True)
class Services:
    settings: Settings
    # The management API's connections (the queue has a pool of its own).
    pg: asyncpg.Pool
    backend: Backend
    functions: FunctionStore
    scheduler: Scheduler
    cluster: Cluster
    catalog: Catalog
    recorder: Recorder
    logs: Logs
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
    # Counts other parts bump for /metrics (e.g. `log_lines_dropped[(function, reason)]`).
    metrics: Metrics
    # GET /metrics.
    exporter: Exporter

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: Settings, secret_key: bytes) -> AsyncIterator[Services]:
        """Every service, started; `secret_key` is the secrets key, loaded (and checked) once.

        Several gateways may share one database and one engine: what they share (the
        network, the containers, the secret files) is removed only by the last to leave.
        """
        departure = _Departure()
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(log.info, "gateway stopped")
            backend = _backend(settings)
            stack.callback(backend.close)
            pg = await db.connect(settings.database_url)
            stack.push_async_callback(departure.remove_network, backend)
            stack.push_async_callback(pg.close)
            cipher = SecretCipher(secret_key)
            await seal_plaintext(pg, cipher)
            await _ensure_network(pg, backend, settings.namespace)
            functions = FunctionStore(pg)
            limiter = RateLimiter()
            cluster = Cluster(settings.database_url, settings.namespace, limiter)
            scheduler = _scheduler(settings, backend, functions, cluster)
            cluster.scheduler = scheduler
            metrics = Metrics()
            recorder = Recorder(
                pg,
                settings.records_flush_s,
                settings.records_retention_days,
                fold=metrics.invocations.fold,
            )
            logs = Logs.build(settings, pg, scheduler, metrics, backend)
            upstreams = Upstreams()
            scheduler.preconnect = upstreams.preconnect
            invoker = Invoker(
                settings,
                scheduler,
                recorder,
                upstreams,
                oom_killed=backend.oom_killed,
                metrics=metrics,
            )
            secrets = Secrets(
                SecretStore(pg, cipher),
                SecretFiles(settings.secrets_root, settings.runtime_uid),
            )
            stack.callback(departure.clear_secrets, secrets)
            key_store = KeyStore(pg)
            if settings.bootstrap_key_file is not None:
                await bootstrap_admin_key(key_store, settings.bootstrap_key_file)
            keys = KeyCache(key_store)
            catalog = Catalog(functions, scheduler, secrets, keys, settings.catalog_refresh_s)
            secrets.users_of = catalog.users_of
            catalog.on_change.append(limiter.forget_missing)
            stack.push_async_callback(recorder.close)
            stack.push_async_callback(cluster.leave, pg)
            specs = await catalog.load()

            logs.writer.start()
            stack.push_async_callback(logs.writer.close)
            loops = Supervisor()
            loops.add("kapal-catalog", lambda stop: catalog.run(settings.database_url, stop))
            loops.add("kapal-cluster", cluster.run)
            loops.add("kapal-logs-collector", logs.collector.run)
            loops.add("kapal-logs-feed", logs.feed.run)
            loops.add("kapal-loop-lag", metrics.watch_loop_lag)
            await scheduler.start()  # the catalog has given it what is deployed
            stack.push_async_callback(loops.close)
            stack.push_async_callback(departure.close_scheduler, scheduler)
            # Decided while the cluster loop still runs: are other gateways staying?
            stack.push_async_callback(departure.decide, cluster)
            loops.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cluster.tried.wait(), PEERS_WAIT_S)
            recorder.start()
            stack.callback(upstreams.close)

            queue = await QueueService.open(settings, scheduler, invoker, catalog, metrics)
            stack.push_async_callback(queue.close)
            await queue.start()
            schedules = ScheduleStore(queue.pg, queue.store)
            # Feature loops stop before the queue they feed.
            features = Supervisor()
            features.add("kapal-schedules", Ticker(schedules, catalog, settings.queue_poll_s).run)
            features.start()
            stack.push_async_callback(features.close)

            log.info(
                "gateway started",
                extra={
                    "listen": settings.listen,
                    "functions": len(specs),
                    "namespace": settings.namespace,
                    "gateway": cluster.id,
                },
            )
            yield cls(
                settings=settings,
                pg=pg,
                backend=backend,
                functions=functions,
                scheduler=scheduler,
                cluster=cluster,
                catalog=catalog,
                recorder=recorder,
                logs=logs,
                upstreams=upstreams,
                invoker=invoker,
                key_store=key_store,
                keys=keys,
                gate=Gate(keys, limiter, settings.key_rps),
                secrets=secrets,
                deployer=Deployer(
                    settings,
                    functions,
                    ImageBuilder(
                        backend.api,
                        settings.namespace,
                        settings.base_images(),
                        DependencyCache(settings.deps_cache, settings.deps_cache_mb << 20),
                    ),
                    backend,
                    ImageResolver(backend.api),
                    secrets,
                    catalog,
                    metrics,
                    logs.writer.event,
                ),
                queue=queue,
                webhooks=WebhookStore(queue.pg, cipher),
                jobs=JobStore(queue.pg),
                schedules=schedules,
                metrics=metrics,
                # The management API's connections: the queue's are for its workers.
                exporter=Exporter(
                    metrics, recorder, scheduler, CachedQueueStats(QueueStore(pg).stats)
                ),
            )


class _Departure:
    """What a stopping gateway leaves for the others: everything, unless it is the last."""

    def __init__(self) -> None:
        # Unknown until decided (a start that failed early shares nothing it may remove).
        self.last = False

    async def decide(self, cluster: Cluster) -> None:
        self.last = not await cluster.others_staying()

    async def close_scheduler(self, scheduler: Scheduler) -> None:
        await scheduler.close(last=self.last)

    def clear_secrets(self, secrets: Secrets) -> None:
        if self.last:
            secrets.files.clear()

    async def remove_network(self, backend: Backend) -> None:
        if not self.last:
            return
        try:
            await backend.remove_network()
        except Exception as e:  # still in use by containers we do not own
            log.warning("network not removed", extra={"error": str(e)})


async def _ensure_network(pg: asyncpg.Pool, backend: Backend, namespace: str) -> None:
    async with pg.acquire() as conn:  # gateways starting together create it once
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", NETWORK_LOCK + namespace)
        try:
            await backend.ensure_network()
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", NETWORK_LOCK + namespace)


def _backend(settings: Settings) -> Backend:
    if settings.backend == "swarm":
        assert settings.registry is not None  # checked with the settings
        auth = None
        if settings.registry_user is not None and settings.registry_password is not None:
            auth = (settings.registry_user, settings.registry_password.get_secret_value())
        return SwarmBackend(
            settings.namespace,
            settings.network,
            manager_url=settings.swarm_manager,
            registry=settings.registry,
            registry_auth=auth,
            secrets_root=settings.secrets_root,
            runtime_env=settings.runtime_env(),
        )
    return DockerBackend(
        settings.namespace,
        settings.network,
        secrets_root=settings.secrets_root,
        isolate_host=settings.isolate_host,
        runtime_env=settings.runtime_env(),
        # Holders run `sleep` from the Python runtime's image, always on the engine.
        netns_image=settings.runtime_image_python if settings.spare_netns else None,
    )


def _scheduler(
    settings: Settings, backend: Backend, functions: FunctionStore, peers: Cluster
) -> Scheduler:
    # Swarm runs a count of replicas per version: no standbys to pause, no generic
    # containers to specialize (a task is only ever its own service's).
    swarm = backend if isinstance(backend, SwarmBackend) else None
    # Pools and the prewarm pool share it: one bound on what the engine is asked.
    pools: ContainerBackend = backend
    if swarm is None and settings.starts_at_once:
        pools = StartGate(backend, settings.starts_at_once)
    prewarm = None
    if swarm is None and any(settings.prewarm_sizes().values()):
        prewarm = PrewarmPool(
            pools,
            settings.base_images(),
            settings.prewarm_sizes(),
            functions,
            settings.start_timeout_s,
            cap=settings.prewarm_max,
        )
    return Scheduler(
        pools,
        PoolConfig(
            start_timeout_s=settings.start_timeout_s,
            buffer_size=settings.buffer_size,
            stop_grace_s=settings.stop_grace_s,
            pause=settings.pause_standbys and swarm is None,
        ),
        AutoscalerConfig(
            target_utilization=settings.autoscale_target_utilization,
            stable_window_s=settings.autoscale_stable_window_s,
            panic_window_s=settings.autoscale_panic_window_s,
        ),
        prewarm,
        peers=peers,
        replicas=swarm,
        keepalive=KeepAliveConfig() if settings.keepalive == "learned" else None,
        forks=Zygotes(backend.resize)
        if isinstance(backend, DockerBackend) and settings.forks
        else None,
    )


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
