"""Postgres for Kapal: the one named by KAPAL_DATABASE_URL, else an embedded server."""

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from infra.errors import InfraError
from infra.host import Log

if TYPE_CHECKING:  # importing pgserver reads XDG_RUNTIME_DIR, which is set first
    from pgserver.postgres_server import PostgresServer

DATABASE = "kapal"
_MARKER = "postgres.started"  # says an earlier `up` started the embedded server


@dataclass
class Postgres:
    """A reachable Postgres and whether this process started it."""

    url: str  # asyncpg/libpq URL of the `kapal` database
    pgdata: Path | None = None  # the embedded server's data dir; None for an external server
    started_by_us: bool = False
    server: "PostgresServer | None" = field(default=None, repr=False)  # pgserver's handle

    def stop(self) -> None:
        """Stop the embedded server if this process started it; otherwise do nothing."""
        if self.pgdata is None or not self.started_by_us:
            return
        if self.server is not None:
            # Let pgserver drop its cached handle, so a later start gets a fresh one.
            self.server.cleanup()
            type(self.server)._instances.pop(self.pgdata, None)
        _pg_ctl_stop(self.pgdata)
        self.started_by_us = False


def ensure_postgres(state_dir: Path, log: Log = print) -> Postgres:
    """KAPAL_DATABASE_URL when set; else the embedded server under `state_dir`, started."""
    external = os.environ.get("KAPAL_DATABASE_URL")
    if external:
        return Postgres(url=external)
    _ensure_runtime_dir(state_dir)
    from pgserver.postgres_server import get_server

    pgdata = (state_dir / "pg").resolve()
    was_running = _postmaster_running(pgdata)
    log(f"postgres: {'using the running' if was_running else 'starting the'} server in {pgdata}")
    server = get_server(pgdata, cleanup_mode=None)
    _create_database(server.get_uri())
    if not was_running:
        (state_dir / _MARKER).write_text(str(pgdata))
    return Postgres(server.get_uri(DATABASE), pgdata, started_by_us=not was_running, server=server)


def stop_recorded_postgres(state_dir: Path, log: Log = print) -> bool:
    """Stop the embedded server an earlier `up` started. True if there was one."""
    marker = state_dir / _MARKER
    if not marker.exists():
        return False
    _ensure_runtime_dir(state_dir)
    pgdata = Path(marker.read_text().strip())
    stopped = _postmaster_running(pgdata)
    if stopped:
        log(f"stopping the embedded postgres in {pgdata}")
        _pg_ctl_stop(pgdata)
    marker.unlink(missing_ok=True)
    return stopped


def _ensure_runtime_dir(state_dir: Path) -> None:
    # platformdirs warns when XDG_RUNTIME_DIR is unset (as for root without a login
    # session); pgserver reads it at import time for its lock and socket dirs.
    if not os.environ.get("XDG_RUNTIME_DIR"):
        runtime = state_dir / "run"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)


def _postmaster_running(pgdata: Path) -> bool:
    from pgserver.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (OSError, AssertionError, ValueError):
        return False
    return info is not None and info.is_running()


def _bin(name: str) -> str:
    from pgserver._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _create_database(admin_uri: str) -> None:
    exists = _psql(admin_uri, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")
    if exists.strip() != "1":
        _psql(admin_uri, f"CREATE DATABASE {DATABASE}")


def _psql(uri: str, sql: str) -> str:
    result = subprocess.run(
        [_bin("psql"), "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-tA", "-c", sql, uri],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise InfraError(f"psql {sql!r} failed: {result.stderr.strip()}")
    return result.stdout


def _pg_ctl_stop(pgdata: Path) -> None:
    # As root, pgserver runs the server as its own `pgserver` user; pg_ctl must be that user.
    user = "pgserver" if os.geteuid() == 0 else None
    result = subprocess.run(
        [_bin("pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        user=user,
        cwd=pgdata,
    )
    if result.returncode != 0 and _postmaster_running(pgdata):
        raise InfraError(f"pg_ctl stop failed for {pgdata}: {result.stderr.strip()}")
