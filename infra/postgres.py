"""Postgres for Kapal: the one named by KAPAL_DATABASE_URL, else an embedded server.

The embedded server is pgserver's build of Postgres, started here with its own initdb and
pg_ctl (pgserver's `get_server`, run as root, adds o+rx to every parent of the data dir
and of its binaries, up to `/`). Postgres refuses to run as root, so as root it runs as
the system user `kapal-postgres`, which owns the data dir, in a mount namespace of its
own where the data dir and the binaries are bind-mounted under a fresh `/mnt`: it needs
no way through their parents (`/root` is 0700), and no mode or owner outside the data dir
changes. Not root, it runs as the caller, where it is. Clients connect over the unix
socket in the data dir, as root or as the caller, without a password. Asked to, the server
also listens on TCP at one address (a swarm's tasks cannot reach a unix socket of the
host), where every login needs the password: whatever else reaches that address (function
containers on the same bridge) must not get in.
"""

import importlib.util
import os
import pwd
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from infra.errors import InfraError
from infra.host import Log

DATABASE = "kapal"
SERVER_USER = "kapal-postgres"
_MARKER = "postgres.started"  # says an earlier `up` started the embedded server
# Where the server sees its data dir and binaries when run as SERVER_USER.
_MOUNT = Path("/mnt")
PORT = 5432
# The unix socket is named after the port the server listens on (TCP or not).
_SOCKET = ".s.PGSQL.{port}"
# sun_path is 108 bytes on Linux, the final NUL included.
_MAX_SOCKET_PATH = 107
_STOP_WAIT_S = 60.0

# Run as root: make the namespace's /mnt, bind there the data dir and, read-only, the
# pgserver package with its bundled libraries (the binaries find them at
# $ORIGIN/../../../pgserver.libs), then become SERVER_USER with no groups and no way to
# gain privileges.
_AS_SERVER_USER = """
mount -t tmpfs -o mode=0755,size=1m kapal-postgres "$MOUNT"
mkdir "$MOUNT/data"
mount --bind "$1" "$MOUNT/data"
for part in pgserver pgserver.libs; do
    if [ -d "$2/$part" ]; then
        mkdir "$MOUNT/$part"
        mount --bind "$2/$part" "$MOUNT/$part"
        mount -o remount,bind,ro "$MOUNT/$part"
    fi
done
shift 2
exec setpriv --reuid="$SERVER_UID" --regid="$SERVER_GID" --clear-groups --no-new-privs -- "$@"
"""


@dataclass(frozen=True)
class TcpAccess:
    """The embedded server listening on TCP too, where every login needs `password`."""

    address: str  # one address of this host (e.g. a swarm bridge's), not 0.0.0.0
    port: int
    password: str

    def url(self, database: str = DATABASE) -> str:
        """The URL clients elsewhere use: user postgres, the password, over TCP."""
        password = quote(self.password, safe="")
        return f"postgresql://postgres:{password}@{self.address}:{self.port}/{database}"


# With TCP: the unix socket stays trusted (only this host's root or the caller reach it),
# every TCP login proves the password (scram-sha-256), from wherever it comes.
_TCP_HBA = """\
local all all trust
host all all 0.0.0.0/0 scram-sha-256
host all all ::/0 scram-sha-256
"""


@dataclass
class Postgres:
    """A reachable Postgres and whether this process started it."""

    url: str  # asyncpg/libpq URL of the `kapal` database
    pgdata: Path | None = None  # the embedded server's data dir; None for an external server
    started_by_us: bool = False

    def stop(self) -> None:
        """Stop the embedded server if this process started it; otherwise do nothing."""
        if self.pgdata is None or not self.started_by_us:
            return
        stop_embedded(self.pgdata)
        self.started_by_us = False


def ensure_postgres(state_dir: Path, log: Log = print) -> Postgres:
    """KAPAL_DATABASE_URL when set; else the embedded server under `state_dir`, started."""
    external = os.environ.get("KAPAL_DATABASE_URL")
    if external:
        return Postgres(url=external)
    pgdata = (state_dir / "pg").resolve()
    was_running = postmaster_pid(pgdata) is not None
    log(f"postgres: {'using the running' if was_running else 'starting the'} server in {pgdata}")
    start_embedded(pgdata)
    _create_database(url(pgdata, "postgres"))
    if not was_running:
        (state_dir / _MARKER).write_text(str(pgdata))
    return Postgres(url(pgdata, DATABASE), pgdata, started_by_us=not was_running)


def stop_recorded_postgres(state_dir: Path, log: Log = print) -> bool:
    """Stop the embedded server an earlier `up` started. True if there was one."""
    marker = state_dir / _MARKER
    if not marker.exists():
        return False
    pgdata = Path(marker.read_text().strip())
    stopped = postmaster_pid(pgdata) is not None
    if stopped:
        log(f"stopping the embedded postgres in {pgdata}")
        stop_embedded(pgdata)
    marker.unlink(missing_ok=True)
    return stopped


def url(pgdata: Path, database: str, port: int = PORT) -> str:
    """The libpq URL of `database` on the embedded server of `pgdata` (its unix socket)."""
    return f"postgresql://postgres:@/{database}?host={pgdata}" + (
        "" if port == PORT else f"&port={port}"
    )


def serve_over_tcp(pgdata: Path, tcp: TcpAccess, database: str = DATABASE) -> str:
    """The embedded server of `pgdata` started listening on TCP as `tcp` says, with
    `database` in it; the URL of that database over TCP (tcp.url)."""
    start_embedded(pgdata, tcp)
    _create_database(url(pgdata, "postgres", tcp.port), database)
    return tcp.url(database)


def start_embedded(pgdata: Path, tcp: TcpAccess | None = None) -> None:
    """The embedded server of `pgdata` running: made when new, started when stopped.

    With `tcp`, it also listens at tcp.address:tcp.port, password-checked; a server that
    already runs is left as it is.
    """
    port = PORT if tcp is None else tcp.port
    if len(str(pgdata / _SOCKET.format(port=port))) > _MAX_SOCKET_PATH:
        raise InfraError(
            f"the data dir {pgdata} is too long a path for its unix socket: "
            "set KAPAL_HOME to a shorter one, or KAPAL_DATABASE_URL"
        )
    if postmaster_pid(pgdata) is not None:
        return
    server = _Server(pgdata)
    server.prepare()
    if not (pgdata / "PG_VERSION").exists():
        server.run(
            "initdb",
            "--auth=trust",
            "--auth-local=trust",
            "--encoding=utf8",
            "-U",
            "postgres",
        )
    seen = server.seen
    if tcp is None:
        listen = '-h ""'  # no TCP: the unix socket only
    else:
        server.write(pgdata / "pg_hba.conf", _TCP_HBA)
        listen = f"-h {tcp.address} -p {tcp.port} -c password_encryption=scram-sha-256"
    server.run(
        "pg_ctl",
        "-w",
        "-o",
        listen,
        "-o",
        f"-k {seen}",
        "-l",
        str(seen / "log"),
        "start",
    )
    if tcp is not None:
        # Sent on psql's stdin: a password on a command line is readable by every user.
        secret = tcp.password.replace("'", "''")
        _psql(url(pgdata, "postgres", port), f"ALTER ROLE postgres PASSWORD '{secret}'")


def stop_embedded(pgdata: Path) -> None:
    """Stop the server of `pgdata` (a fast shutdown) and wait until it is gone."""
    pid = postmaster_pid(pgdata)
    if pid is None:
        return
    # A signal, not pg_ctl: pg_ctl would have to see the data dir as the server does.
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + _STOP_WAIT_S
    while _is_postgres(pid):
        if time.monotonic() > deadline:
            raise InfraError(f"postgres (pid {pid}) in {pgdata} did not stop")
        time.sleep(0.1)


def postmaster_pid(pgdata: Path) -> int | None:
    """The pid of the server running on `pgdata`, or None."""
    try:
        first = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not first.strip().isdigit():
        return None
    pid = int(first)
    return pid if _is_postgres(pid) else None


def _is_postgres(pid: int) -> bool:
    """A live (not zombie) process named postgres."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    name, _, rest = stat.partition(" (")[2].rpartition(") ")
    return name == "postgres" and rest[:1] not in ("Z", "X")


def _pginstall() -> Path:
    # Found without importing pgserver, which reads XDG_RUNTIME_DIR and sets up its locks.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise InfraError("pgserver is not installed: pip install -e '.[dev]'")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


class _Server:
    """How the server's own commands (initdb, pg_ctl) are run on `pgdata`."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.pginstall = _pginstall()
        self.as_root = os.geteuid() == 0
        # The data dir as the server sees it.
        self.seen = _MOUNT / "data" if self.as_root else pgdata

    def prepare(self) -> None:
        """The data dir exists, 0700, owned by whoever runs the server."""
        self.pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.as_root:
            user = _server_user()
            owner = (user.pw_uid, user.pw_gid)
            st = self.pgdata.stat()
            if (st.st_uid, st.st_gid) != owner:  # new, or made by pgserver as its own user
                for path in (self.pgdata, *self.pgdata.rglob("*")):
                    os.lchown(path, *owner)
        os.chmod(self.pgdata, 0o700)

    def write(self, path: Path, text: str) -> None:
        """A file of the data dir, owned like the rest of it."""
        path.write_text(text)
        if self.as_root:
            user = _server_user()
            os.lchown(path, user.pw_uid, user.pw_gid)
        os.chmod(path, 0o600)

    def run(self, command: str, *args: str) -> None:
        if self.as_root:
            user = _server_user()
            binary = _MOUNT / "pgserver" / "pginstall" / "bin" / command
            env = {
                **os.environ,
                "MOUNT": str(_MOUNT),
                "SERVER_UID": str(user.pw_uid),
                "SERVER_GID": str(user.pw_gid),
            }
            argv = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-euc",
                _AS_SERVER_USER,
                "sh",
                str(self.pgdata),
                str(self.pginstall.parent.parent),  # where the pgserver package is
            ]
        else:
            binary, env, argv = self.pginstall / "bin" / command, dict(os.environ), []
        argv += [str(binary), "-D", str(self.seen), *args]
        # Files, not pipes: the server pg_ctl starts would hold a pipe open.
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                cwd="/",
                check=False,
            )
            out.seek(0)
            output = out.read()
        if result.returncode != 0:
            log = self.pgdata / "log"
            tail = log.read_text()[-2000:] if command == "pg_ctl" and log.exists() else ""
            raise InfraError(f"postgres {command} failed: {output.strip()}\n{tail}".strip())


def _server_user() -> pwd.struct_passwd:
    """SERVER_USER, made a system user without a home or a login shell when missing."""
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        pass
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            SERVER_USER,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 and "already exists" not in result.stderr:
        raise InfraError(f"useradd {SERVER_USER} failed: {result.stderr.strip()}")
    return pwd.getpwnam(SERVER_USER)


def _bin(name: str) -> str:
    return str(_pginstall() / "bin" / name)


def _create_database(admin_uri: str, database: str = DATABASE) -> None:
    exists = _psql(admin_uri, f"SELECT 1 FROM pg_database WHERE datname = '{database}'")
    if exists.strip() != "1":
        _psql(admin_uri, f"CREATE DATABASE {database}")


def _psql(uri: str, sql: str) -> str:
    # The statement goes on stdin, never onto a command line other users can read.
    result = subprocess.run(
        [_bin("psql"), "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-tA", uri],
        input=sql,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        what = sql.split(" PASSWORD ")[0]  # an error message must not show a password
        raise InfraError(f"psql {what!r} failed: {result.stderr.strip()}")
    return result.stdout
