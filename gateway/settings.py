"""All gateway settings, from KAPAL_* environment variables, validated once at start-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAPAL_", extra="ignore")

    # host:port the gateway listens on.
    listen: str = "127.0.0.1:8080"
    # Postgres URL (required; `make up` provides an embedded one).
    database_url: str
    # Prefix of every container, network and image this gateway owns.
    namespace: str = Field(default="kapal", pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")
    # What runs function instances: containers on one Docker engine ("docker"), or
    # services of a Docker Swarm whose replica counts the autoscaler sets ("swarm").
    backend: Literal["docker", "swarm"] = "docker"
    # Engine API of a swarm manager (e.g. tcp://10.0.0.5:2375); unset: DOCKER_HOST or the
    # local socket. Function images are built on that engine too.
    swarm_manager: str | None = None
    # The attachable overlay network function tasks and gateways share; default
    # NAMESPACE-functions (made when missing).
    swarm_network: str | None = None
    # Registry function images are pushed to and pulled from by the swarm's nodes
    # (host:port); required with the swarm backend.
    registry: str | None = None
    # Credentials for that registry (else the engine's docker config, if any).
    registry_user: str | None = None
    registry_password: SecretStr | None = None
    # Base image per runtime that function images are built FROM (`make up` and the tests
    # name the image of their checkout, tagged by its inputs).
    runtime_image_python: str = "kapal/runtime-python:latest"
    runtime_image_nodejs: str = "kapal/runtime-nodejs:latest"
    # Largest code archive accepted by a deploy, in bytes.
    max_code_bytes: int = 50 * 1024 * 1024
    # Largest unpacked code folder, in bytes.
    max_unpacked_bytes: int = 200 * 1024 * 1024
    # Most files a code archive may hold.
    max_code_files: int = 10_000
    # Largest invocation request body, in bytes.
    max_body_bytes: int = 64 * 1024 * 1024
    # Longest request line or header field, in bytes (past it: 414 or 431).
    max_header_bytes: int = Field(default=8190, ge=256)
    # Most header fields in one request (past it: 431).
    max_headers: int = Field(default=100, ge=8)
    # Seconds a client has to send a whole request head (past it: 408, then close).
    header_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # Longest pause, in seconds, while a request body is arriving (past it: 408, then close).
    body_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    # Seconds a kept-alive client connection may sit idle between requests (then closed).
    keepalive_timeout_s: float = Field(default=75.0, gt=0, le=86400)
    # Seconds a response may wait on a client that stopped reading it (then the connection
    # is dropped; at most one write buffer is held meanwhile).
    send_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    # Open client connections on the public port; past it the longest-idle one is closed
    # (and with none idle, new connections only reach the management API and /healthz).
    # Counted by each worker process (KAPAL_WORKERS), as is the per-address cap.
    max_connections: int = Field(default=10_000, ge=16)
    # Open client connections from one address (0: no limit).
    max_connections_per_address: int = Field(default=1000, ge=0)
    # Seconds a request may wait for a free instance slot before a 503.
    queue_timeout_s: float = 30.0
    # Requests that may wait per function before a 503.
    buffer_size: int = 1000
    # Seconds a new instance has to pass its health check.
    start_timeout_s: float = 30.0
    # Seconds in-flight work gets when an instance is stopped.
    stop_grace_s: float = 5.0
    # Seconds of history behind a normal scaling decision (and before scale to zero).
    autoscale_stable_window_s: float = Field(default=60.0, gt=0)
    # Seconds of history behind a burst (panic) decision.
    autoscale_panic_window_s: float = Field(default=6.0, gt=0)
    # Fraction of each instance's concurrency the autoscaler aims to use.
    autoscale_target_utilization: float = Field(default=0.7, gt=0, le=1)
    # Prewarmed generic containers kept ready per runtime (0: none).
    prewarm_python: int = Field(default=4, ge=0, le=50)
    # Prewarmed Node.js containers (none unless asked: most deployments run Python alone).
    prewarm_nodejs: int = Field(default=0, ge=0, le=50)
    # Prewarmed containers per runtime at most, kept after as many recent cold starts
    # (a runtime's own count above is the least kept).
    prewarm_max: int = Field(default=24, ge=0, le=50)
    # Containers the engine is asked to start at once (0: no bound); more wait their turn.
    starts_at_once: int = Field(default=2, ge=0, le=64)
    # Keep a network namespace ready per functions network for the next new container
    # (Docker backend; scheduler/netns.py): its start skips building one.
    spare_netns: bool = True
    # Pause scaled-down instances as standbys before removing them.
    pause_standbys: bool = True
    # Grow Python instances under a burst by forking workers in running containers
    # (milliseconds) while new containers start (hundreds of ms each).
    forks: bool = True
    # Keep-alive of idle instances: "learned" from each function's idle times (bounded
    # by its `idle_timeout_s`), or "fixed" (ready, paused, removed after the timeout).
    keepalive: Literal["learned", "fixed"] = "learned"
    # How often buffered invocation records are written, in seconds.
    records_flush_s: float = 0.25
    # Days invocation records are kept.
    records_retention_days: int = 7
    # Where the first admin key is written (0600) when the database has none; unset: never.
    bootstrap_key_file: Path | None = None
    # Seconds between full reloads of the catalog (functions, keys, secrets), which
    # otherwise follows notifications: a missed one heals within this.
    catalog_refresh_s: float = Field(default=2.0, gt=0)
    # Gateway processes serving the port on this host (SO_REUSEPORT), each a full gateway.
    workers: int = Field(default=1, ge=1, le=64)
    # host:port where GET /metrics is served too (and nothing else), worker I on port + I:
    # on the shared public port a scrape reaches whichever worker the kernel picks.
    metrics_listen: str | None = None
    # Requests a second one API key may make, unless the key sets its own; 0: unlimited.
    key_rps: float = Field(default=1000.0, ge=0)
    # Invocations a second of a function without `limits.rps`; 0: unlimited.
    function_rps: float = Field(default=0.0, ge=0)
    # Key that encrypts secrets at rest (32 bytes, base64); else read from secret_key_file.
    secret_key: SecretStr | None = None
    # File holding that key; made (0600) on first start when missing.
    secret_key_file: Path | None = None
    # Host folder (a tmpfs) holding each function's secret files; default under /dev/shm.
    secrets_dir: Path | None = None
    # uid:gid of the runtime's user in function images (owner of mounted secrets).
    runtime_uid: int = 10001
    # Reject new connections from function networks to the host (iptables INPUT rules).
    isolate_host: bool = True
    # Seconds a queue worker's claim on an invocation holds without a heartbeat.
    queue_lease_s: float = Field(default=30.0, gt=0.5)
    # Seconds between queue polls when no notification arrives (also retry resolution).
    queue_poll_s: float = Field(default=1.0, gt=0)
    # Delay before the first retry of a queued invocation, doubled per attempt (seconds).
    queue_retry_base_s: float = Field(default=1.0, gt=0)
    # Longest delay between retries, in seconds.
    queue_retry_cap_s: float = Field(default=300.0, gt=0)
    # Queued invocations this gateway runs at once, across functions.
    queue_concurrency: int = Field(default=512, ge=1)
    # Rows claimed per round trip.
    queue_claim_batch: int = Field(default=200, ge=1)
    # Largest body of an async invocation or webhook delivery, in bytes.
    queue_max_body_bytes: int = 6 * 1024 * 1024
    # Days finished async invocations and jobs are kept (dead letters stay until re-driven).
    queue_retention_days: int = Field(default=7, ge=1)
    # Seconds a result callback (X-Callback-Url) may take.
    callback_timeout_s: float = Field(default=10.0, gt=0)
    # Deliveries of a callback before it is given up.
    callback_max_attempts: int = Field(default=8, ge=1)
    # How often pulled function log lines are written, in seconds.
    logs_flush_s: float = Field(default=0.2, gt=0)
    # Days function log lines are kept.
    logs_retention_days: int = Field(default=7, ge=1)
    # Log lines a second a function may write (across its instances); more are dropped
    # and counted, with a marker line. 0: unlimited.
    log_rate_lines_s: float = Field(default=20_000.0, ge=0)
    # Bytes of output one invocation may write; then one "truncated" marker line.
    log_invocation_bytes: int = Field(default=64 * 1024, ge=1024)
    # Longest log line kept, in bytes; longer ones are cut.
    log_line_bytes: int = Field(default=16 * 1024, ge=256)
    # Log level of the gateway's structured logs.
    log_level: str = "INFO"
    # Host folder of resolved function dependencies and the wheels they came from, shared
    # by the gateways of this host; default: deps/ in KAPAL_HOME.
    deps_cache_dir: Path | None = None
    # Most MiB of resolved dependency folders kept (least recently used go first), and
    # as many of downloaded wheels.
    deps_cache_mb: int = Field(default=4096, ge=16)

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"must be host:port, got {v!r}")
        return v

    @model_validator(mode="after")
    def _swarm_needs_registry(self) -> Settings:
        if self.backend == "swarm" and not self.registry:
            raise ValueError("KAPAL_BACKEND=swarm needs KAPAL_REGISTRY (host:port)")
        if (self.registry_user is None) != (self.registry_password is None):
            raise ValueError("KAPAL_REGISTRY_USER and KAPAL_REGISTRY_PASSWORD go together")
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def metrics_address(self, worker: int) -> tuple[str, int] | None:
        """Where worker `worker` serves GET /metrics on a port of its own, if anywhere."""
        if self.metrics_listen is None:
            return None
        host, _, port = self.metrics_listen.rpartition(":")
        return host, int(port) + worker

    @property
    def network(self) -> str:
        if self.backend == "swarm" and self.swarm_network:
            return self.swarm_network
        return f"{self.namespace}-functions"

    @property
    def secrets_root(self) -> Path:
        return self.secrets_dir or Path("/dev/shm") / f"kapal-{self.namespace}-secrets"

    @property
    def home(self) -> Path:
        """Kapal's state folder on this host: KAPAL_HOME, else the user data dir."""
        home = os.environ.get("KAPAL_HOME")
        return Path(home).expanduser() if home else Path(platformdirs.user_data_dir("kapal"))

    def key_file(self) -> Path:
        if self.secret_key_file is not None:
            return self.secret_key_file
        return self.home / "secret.key"

    @property
    def deps_cache(self) -> Path:
        return self.deps_cache_dir or self.home / "deps"

    def runtime_env(self) -> dict[str, str]:
        """What every function container is told about logging."""
        return {
            "KAPAL_LOG_INVOCATION_BYTES": str(self.log_invocation_bytes),
            "KAPAL_LOG_LINE_BYTES": str(self.log_line_bytes),
        }

    def base_images(self) -> dict[str, str]:
        return {"python": self.runtime_image_python, "nodejs": self.runtime_image_nodejs}

    def prewarm_sizes(self) -> dict[str, int]:
        """Prewarmed containers kept ready per runtime."""
        return {"python": self.prewarm_python, "nodejs": self.prewarm_nodejs}
