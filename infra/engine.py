"""The Docker engine: use the one that answers, else install and start `dockerd`."""

import enum
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import docker
import requests
from docker.errors import DockerException

from infra import host
from infra.errors import InfraError
from infra.processes import descendants, pid_alive, process_name, read_pidfile, stop_process

Connect = Callable[[], "docker.DockerClient | None"]

START_TIMEOUT = 60.0
STOP_GRACE = 20.0
_DEFAULT_HOSTS = ("", "unix:///var/run/docker.sock", "unix:///run/docker.sock")


@dataclass
class Engine:
    """A Docker engine that answers, and whether this package started it."""

    client: docker.DockerClient
    started_pid: int | None = None  # the dockerd we started; None when it was already running
    log_path: Path | None = None  # where that dockerd writes its output
    process: "subprocess.Popen[bytes] | None" = field(default=None, repr=False)

    @property
    def started_by_us(self) -> bool:
        return self.started_pid is not None


class EngineAction(enum.Enum):
    USE_RUNNING = "use the engine that answers"
    START = "start dockerd"
    INSTALL_AND_START = "install docker.io, then start dockerd"


def plan_engine(
    *, answering: bool, docker_host: str, root: bool, debian: bool, dockerd_installed: bool
) -> EngineAction:
    """What to do to get an engine, from facts about this host; raises when nothing can."""
    if answering:
        return EngineAction.USE_RUNNING
    if docker_host not in _DEFAULT_HOSTS:
        raise InfraError(
            f"DOCKER_HOST={docker_host} does not answer: start that engine, "
            "or unset DOCKER_HOST to let Kapal start a local dockerd"
        )
    if not root:
        raise InfraError(
            "no Docker engine answers and starting one needs root: start dockerd "
            "(or Docker Desktop) yourself, or point DOCKER_HOST at a running engine, "
            "or run this as root on Debian so Kapal can install and start docker.io"
        )
    if dockerd_installed:
        return EngineAction.START
    if debian:
        return EngineAction.INSTALL_AND_START
    raise InfraError(
        "no Docker engine answers and dockerd is not installed: install Docker "
        "(https://docs.docker.com/engine/install/) and start it, then run again"
    )


def connect() -> docker.DockerClient | None:
    """A client for the engine named by DOCKER_HOST (or the default socket), if it answers."""
    try:
        client = docker.from_env()
    except DockerException:
        return None
    try:
        client.ping()
    except (DockerException, requests.RequestException, OSError):
        client.close()
        return None
    return client


def ensure_engine(
    state_dir: Path,
    *,
    connect: Connect = connect,
    log: host.Log = print,
    dockerd_args: Sequence[str] = (),
) -> Engine:
    """An engine that answers; starts (and first installs) dockerd when none does."""
    client = connect()
    pidfile = state_dir / "dockerd.pid"
    log_path = state_dir / "dockerd.log"
    if client is not None:
        return Engine(client)  # not ours to stop, even if an earlier run of ours started it
    earlier = _our_dockerd(pidfile)
    if earlier is not None:
        log(f"waiting for the dockerd an earlier run started (pid {earlier})")
        return Engine(_wait_answering(connect, earlier, None, log_path))
    action = plan_engine(
        answering=False,
        docker_host=os.environ.get("DOCKER_HOST", ""),
        root=host.is_root(),
        debian=host.is_debian(),
        dockerd_installed=shutil.which("dockerd") is not None,
    )
    if action is EngineAction.INSTALL_AND_START:
        log("dockerd is not installed; installing Debian's docker.io")
        host.ensure_commands({"dockerd": "docker.io"}, log)
        client = connect()  # a package script may have started it already
        if client is not None:
            return Engine(client)
    return _start_dockerd(connect, pidfile, log_path, dockerd_args, log)


def stop_engine(engine: Engine, log: host.Log = print) -> None:
    """Stop dockerd and the containerd it spawned, only if we started them."""
    engine.client.close()
    if engine.started_pid is not None:
        _stop_dockerd(engine.started_pid, engine.process, log)
        engine.started_pid = None


def stop_recorded_engine(state_dir: Path, log: host.Log = print) -> bool:
    """Stop a dockerd an earlier run started (found by its pid file). True if there was one."""
    pid = _our_dockerd(state_dir / "dockerd.pid")
    if pid is None:
        return False
    _stop_dockerd(pid, None, log)
    return True


def _stop_dockerd(pid: int, process: "subprocess.Popen[bytes] | None", log: host.Log) -> None:
    children = descendants(pid)  # containerd; it outlives a killed dockerd
    log(f"stopping dockerd (pid {pid})")
    if stop_process(pid, STOP_GRACE, process):
        log(f"dockerd did not stop within {STOP_GRACE:.0f} s; killed it")
    for child in children:
        if pid_alive(child):
            log(f"stopping leftover {process_name(child)} (pid {child})")
            stop_process(child, 5.0)


def _our_dockerd(pidfile: Path) -> int | None:
    pid = read_pidfile(pidfile)
    if pid is None or not pid_alive(pid) or process_name(pid) != "dockerd":
        return None
    return pid


def _start_dockerd(
    connect: Connect, pidfile: Path, log_path: Path, extra: Sequence[str], log: host.Log
) -> Engine:
    argv = ["dockerd", "--pidfile", str(pidfile), *extra]
    log(f"starting {' '.join(argv)} (log: {log_path})")
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        client = _wait_answering(connect, process.pid, process, log_path)
    except BaseException:
        stop_process(process.pid, STOP_GRACE, process)
        raise
    return Engine(client, process.pid, log_path, process)


def _wait_answering(
    connect: Connect, pid: int, process: "subprocess.Popen[bytes] | None", log_path: Path
) -> docker.DockerClient:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        client = connect()
        if client is not None:
            return client
        exited = process.poll() is not None if process is not None else not pid_alive(pid)
        if exited:
            raise InfraError(f"dockerd exited while starting; see {log_path}\n{_tail(log_path)}")
        time.sleep(0.25)
    raise InfraError(
        f"dockerd did not answer within {START_TIMEOUT:.0f} s; see {log_path}\n{_tail(log_path)}"
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
