"""Runtime settings, read once from KAPAL_* environment variables; a bad value fails fast."""

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

DEFAULT_HANDLER = "handler.handle"
EVENT_LOOPS = ("auto", "asyncio", "uvloop")


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
    # Threads that run synchronous handlers concurrently.
    threads: int = 64
    # "auto" uses uvloop when it can be imported.
    event_loop: str = "auto"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RuntimeConfig":
        env = os.environ if env is None else env
        d = cls()
        return cls(
            port=_read(env, "KAPAL_PORT", int, d.port, lambda v: 0 < v < 65536),
            function=env.get("KAPAL_FUNCTION", d.function),
            version=_read(env, "KAPAL_VERSION", int, d.version, lambda v: v >= 0),
            handler=env.get("KAPAL_HANDLER") or d.handler,
            code_dir=Path(env.get("KAPAL_CODE_DIR") or d.code_dir).absolute(),
            deps_dir=Path(env.get("KAPAL_DEPS_DIR") or d.deps_dir).absolute(),
            timeout_s=_read(env, "KAPAL_TIMEOUT_S", float, d.timeout_s, lambda v: 0 < v < 1e9),
            max_body_bytes=_read(env, "KAPAL_MAX_BODY_BYTES", int, d.max_body_bytes, _positive),
            max_init_bytes=_read(env, "KAPAL_MAX_INIT_BYTES", int, d.max_init_bytes, _positive),
            prewarm=_read(env, "KAPAL_PREWARM", _flag, d.prewarm, lambda v: True),
            concurrency=_read(env, "KAPAL_CONCURRENCY", int, d.concurrency, lambda v: v >= 0),
            threads=_read(env, "KAPAL_THREADS", int, d.threads, lambda v: 0 < v <= 4096),
            event_loop=_read(env, "KAPAL_EVENT_LOOP", str, d.event_loop, EVENT_LOOPS.__contains__),
        )


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


def _flag(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
