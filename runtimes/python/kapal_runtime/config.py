"""Runtime settings, read once from KAPAL_* environment variables; a bad value fails fast."""

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

DEFAULT_HANDLER = "handler.handle"
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
# Handler conventions (kapal_runtime/styles/); none given: detected from the handler.
STYLES = ("native", "lambda", "lambda-v1", "openwhisk", "wsgi", "asgi")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """An environment variable has a value the runtime cannot use."""


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    # TCP port to listen on (all interfaces).
    port: int = 8080
    # Function name and version, reported to handlers in `context`.
    function: str = ""
    version: int = 0
    # "module.function" (or "pkg.mod.fn", "pkg.mod:fn") inside code_dir.
    handler: str = DEFAULT_HANDLER
    # The handler's convention, one of STYLES; None: detected when the handler is loaded.
    style: str | None = None
    # Where the function's code lives; also the working directory.
    code_dir: Path = Path("/opt/kapal/function")
    # Where /_/init unpacks the function's dependencies.
    deps_dir: Path = Path("/opt/kapal/deps")
    # Default time budget per invocation and for draining at SIGTERM, in seconds.
    timeout_s: float = 30.0
    # Largest invocation body accepted (413 above it).
    max_body_bytes: int = 64 * 1024 * 1024
    # Largest /_/init body accepted (base64 code and dependencies).
    max_init_bytes: int = 512 * 1024 * 1024
    # Start without a handler and wait for POST /_/init.
    prewarm: bool = False
    # Invocations in flight at once before new ones are answered 503 busy (0: unlimited).
    concurrency: int = 0
    # Threads that blocking sync handlers may hold while the loop goes on (threads.py).
    threads: int = 64
    # "auto" uses uvloop when it can be imported.
    event_loop: str = "auto"
    # TCP port the gateway pulls log lines from (GET /_/logs); 0: no capture, output
    # stays on stdout and stderr (for running the runtime by hand).
    log_port: int = 8081
    # Level of the root logger (handlers' `logging` calls below it are not recorded).
    log_level: str = "info"
    # Bytes of output one invocation may write; past it, one marker line, then nothing.
    log_invocation_bytes: int = 64 * 1024
    # Longest line kept; a longer one is cut, saying how many bytes were cut.
    log_line_bytes: int = 16 * 1024
    # Bytes of lines not yet pulled and acked; past it, new lines are dropped and counted.
    log_buffer_bytes: int = 8 * 1024 * 1024
    # After the drain at SIGTERM, how long to wait for the gateway to ack the last lines.
    log_drain_s: float = 2.0
    # TCP port of the zygote that forks more workers on demand (zygote.py); 0: none, this
    # process is the one runtime (running it by hand).
    zygote_port: int = 0
    # Workers the zygote forks at most besides worker 0.
    workers_max: int = 15

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RuntimeConfig":
        env = os.environ if env is None else env
        d = cls()
        config = cls(
            port=_read(env, "KAPAL_PORT", int, d.port, lambda v: 0 < v < 65536),
            function=env.get("KAPAL_FUNCTION", d.function),
            version=_read(env, "KAPAL_VERSION", int, d.version, lambda v: v >= 0),
            handler=env.get("KAPAL_HANDLER") or d.handler,
            style=_read(env, "KAPAL_STYLE", _lower, d.style, STYLES.__contains__),
            code_dir=Path(env.get("KAPAL_CODE_DIR") or d.code_dir).absolute(),
            deps_dir=Path(env.get("KAPAL_DEPS_DIR") or d.deps_dir).absolute(),
            timeout_s=_read(env, "KAPAL_TIMEOUT_S", float, d.timeout_s, lambda v: 0 < v < 1e9),
            max_body_bytes=_read(env, "KAPAL_MAX_BODY_BYTES", int, d.max_body_bytes, _positive),
            max_init_bytes=_read(env, "KAPAL_MAX_INIT_BYTES", int, d.max_init_bytes, _positive),
            prewarm=_read(env, "KAPAL_PREWARM", _flag, d.prewarm, lambda v: True),
            concurrency=_read(env, "KAPAL_CONCURRENCY", int, d.concurrency, lambda v: v >= 0),
            threads=_read(env, "KAPAL_THREADS", int, d.threads, lambda v: 0 < v <= 4096),
            event_loop=_read(env, "KAPAL_EVENT_LOOP", str, d.event_loop, EVENT_LOOPS.__contains__),
            log_port=_read(env, "KAPAL_LOG_PORT", int, d.log_port, lambda v: 0 <= v < 65536),
            log_level=_read(env, "KAPAL_LOG_LEVEL", _lower, d.log_level, LOG_LEVELS.__contains__),
            log_invocation_bytes=_read(
                env, "KAPAL_LOG_INVOCATION_BYTES", int, d.log_invocation_bytes, _positive
            ),
            log_line_bytes=_read(env, "KAPAL_LOG_LINE_BYTES", int, d.log_line_bytes, _positive),
            log_buffer_bytes=_read(
                env, "KAPAL_LOG_BUFFER_BYTES", int, d.log_buffer_bytes, _positive
            ),
            log_drain_s=_read(env, "KAPAL_LOG_DRAIN_S", float, d.log_drain_s, _duration),
            zygote_port=_read(env, "KAPAL_ZYGOTE_PORT", int, d.zygote_port, _port_or_off),
            workers_max=_read(env, "KAPAL_WORKERS_MAX", int, d.workers_max, _workers),
        )
        if config.log_port and config.log_port == config.port:
            raise ConfigError(f"KAPAL_LOG_PORT={config.log_port} is also KAPAL_PORT")
        if config.zygote_port:
            # Workers take port + 2k and log port + 2k, k = 0..workers_max.
            taken = {config.port + 2 * k for k in range(config.workers_max + 1)}
            if config.log_port:
                logs = {config.log_port + 2 * k for k in range(config.workers_max + 1)}
                if logs & taken:
                    raise ConfigError("a worker's log port would be another worker's port")
                taken |= logs
            if config.zygote_port in taken:
                raise ConfigError(f"KAPAL_ZYGOTE_PORT={config.zygote_port} is a worker's port")
            if max(taken) >= 65536:
                raise ConfigError("the workers' ports go past 65535: lower KAPAL_WORKERS_MAX")
        return config


def _read(
    env: Mapping[str, str],
    key: str,
    parse: Callable[[str], T],
    default: T,
    valid: Callable[[T], bool],
) -> T:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a valid {parse.__name__.lstrip('_')}") from None
    if not valid(value):
        raise ConfigError(f"{key}={raw!r} is not an accepted value")
    return value


def _positive(value: int) -> bool:
    return value > 0


def _port_or_off(value: int) -> bool:
    return 0 <= value < 65536


def _workers(value: int) -> bool:
    return 0 <= value <= 64


def _duration(value: float) -> bool:
    return 0 <= value < 1e9  # also refuses nan


def _lower(raw: str) -> str:
    return raw.lower()


def _flag(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
