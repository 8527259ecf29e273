"""`python -m infra setup|up|test|down`: make this machine ready, run Kapal, test it."""

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import docker

from infra import host
from infra.engine import Engine, ensure_engine, stop_engine, stop_recorded_engine
from infra.errors import InfraError
from infra.images import ensure_base_images
from infra.postgres import (
    Postgres,
    ensure_postgres,
    stop_recorded_postgres,
)
from infra.registry import REGISTRY_TOOLS
from infra.state import state_dir
from infra.swarm import BRIDGE_GATEWAY, LocalSwarm, swarm_down, swarm_up
from infra.swarm_lab import POSTGRES_PORT, start_kapal

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LISTEN = "127.0.0.1:8080"
# Commands the tests use beyond the engine (command -> Debian package), installed when
# missing: wrk for the load tests, Chromium for the dashboard's browser tests, and for the
# image-function tests a registry on the host (distribution's) with htpasswd credentials.
TEST_TOOLS = {"wrk": "wrk", "chromium": "chromium", **REGISTRY_TOOLS}

USAGE = """\
usage: python -m infra COMMAND [ARGS]

  setup            install and start Docker if needed, build the base runtime images
  up               setup, start Postgres, run the gateway until Ctrl-C
  test [ARGS...]   setup (and wrk, chromium), run pytest with ARGS, stop what was started
  down             stop a Postgres or dockerd that an earlier `up` left running
  swarm up [N]     a local Docker Swarm of N (default 3) docker-in-docker nodes and a registry
        [--kapal]  and Kapal on it: Postgres over TCP, two gateways as a Swarm service
  swarm down       remove the local swarm, its nodes, its registry, Kapal on it and their data
"""


class Terminated(SystemExit):
    """SIGTERM arrived; raised so that `finally` blocks stop what we started."""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    commands: dict[str, Callable[[list[str]], int]] = {
        "setup": cmd_setup,
        "up": cmd_up,
        "test": cmd_test,
        "down": cmd_down,
        "swarm": cmd_swarm,
    }
    if command not in commands:
        print(f"unknown command {command!r}\n{USAGE}", end="", file=sys.stderr)
        return 2
    if command not in ("test", "swarm") and rest:
        print(f"{command} takes no arguments, got {rest}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return commands[command](rest)
    except InfraError as err:
        print(f"kapal infra: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def cmd_setup(_: list[str]) -> int:
    engine = _setup(state_dir())
    if engine.started_by_us:
        print(f"dockerd keeps running (pid {engine.started_pid}); `python -m infra down` stops it")
    engine.client.close()
    return 0


def cmd_up(_: list[str]) -> int:
    state = state_dir()
    engine = _setup(state)
    postgres: Postgres | None = None
    try:
        with _timed("postgres"):
            postgres = ensure_postgres(state)
        os.environ["KAPAL_DATABASE_URL"] = postgres.url
        # The gateway writes the first admin key here (0600) when the database has none;
        # the CLI reads it from the same place.
        key_file = state / "admin.key"
        os.environ.setdefault("KAPAL_BOOTSTRAP_KEY_FILE", str(key_file))
        try:
            from gateway.main import run
        except ImportError as err:
            raise InfraError(f"the gateway cannot be imported yet: {err}") from err
        listen = os.environ.get("KAPAL_LISTEN", DEFAULT_LISTEN)
        print(
            f"\nKapal gateway on http://{listen} (database {postgres.url}); Ctrl-C stops it.\n"
            f"The CLI uses the admin API key in {key_file} (or $KAPAL_API_KEY).\n"
            "First things to try:\n"
            f"  curl http://{listen}/healthz\n"
            f"  kapal deploy examples/hello --public && curl 'http://{listen}/fn/hello?name=kapal'\n",
            flush=True,
        )
        run()
    finally:
        if postgres is not None:
            postgres.stop()
        stop_engine(engine)
    return 0


def cmd_test(pytest_args: list[str]) -> int:
    state = state_dir()
    engine = _setup(state, extra_commands=TEST_TOOLS)
    try:
        argv = [sys.executable, "-m", "pytest", *pytest_args]
        print(f"running {' '.join(argv[2:])}", flush=True)
        code = _run_forwarding_sigterm(argv, REPO_ROOT)
        _warn_leftover_containers(engine)
        return code
    finally:
        stop_engine(engine)


def cmd_swarm(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra swarm", exit_on_error=False)
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("nodes", nargs="?", type=int)
    parser.add_argument("--kapal", action="store_true", help="and Kapal's gateways on it")
    parser.add_argument("--name", default="kapal", help="of the swarm (one runs at a time)")
    try:
        options = parser.parse_args(args)
    except argparse.ArgumentError as err:
        print(f"{err}\n{parser.format_usage()}", end="", file=sys.stderr)
        return 2
    if options.action == "down" and (options.kapal or options.nodes is not None):
        print("swarm down takes only --name", file=sys.stderr)
        return 2
    state = state_dir()
    engine = ensure_engine(state)
    folder = state / "swarm"
    if options.action == "down":
        if not swarm_down(engine.client, folder, name=options.name):
            print(f"no local swarm {options.name} to remove")
        return 0
    runtime_images = ensure_base_images(engine.client, REPO_ROOT) if options.kapal else {}
    swarm = swarm_up(engine.client, folder, name=options.name, nodes=options.nodes or 3)
    for node in swarm.nodes:
        print(f"  {node.name}  {node.address}  {'manager' if node.manager else 'worker'}")
    print(
        f"\nThe manager's engine: DOCKER_HOST={swarm.manager.api_url} docker node ls\n"
        f"Overlay network for functions: {swarm.overlay}.\n"
        f"Registry: push from this host to {swarm.registry.push}/NAME:TAG; "
        f"nodes pull {swarm.registry.address}/NAME@sha256:...\n"
        f"`python -m infra swarm down --name {swarm.name}` removes it all."
    )
    if options.kapal:
        try:
            _kapal_on_swarm(engine.client, swarm, folder / swarm.name, runtime_images)
        except BaseException:
            swarm_down(engine.client, folder, name=swarm.name)
            raise
    if engine.started_by_us:
        print(f"dockerd keeps running (pid {engine.started_pid}); `python -m infra down` stops it")
    return 0


def _kapal_on_swarm(
    client: docker.DockerClient, swarm: LocalSwarm, folder: Path, runtime_images: dict[str, str]
) -> None:
    """Postgres over TCP on the swarm's bridge, and two gateways (one on a 1-node swarm)."""
    # KAPAL_BACKEND of this shell, when set, is the gateways' (e.g. docker: the manager's
    # engine as a plain one).
    env = {"KAPAL_BACKEND": os.environ["KAPAL_BACKEND"]} if "KAPAL_BACKEND" in os.environ else {}
    with _timed("kapal on the swarm"):
        lab = start_kapal(
            client,
            swarm,
            folder,
            REPO_ROOT,
            namespace="kapal",
            runtime_images=runtime_images,
            gateways=min(2, len(swarm.nodes)),
            env=env,
        )
    urls, database_url = lab.urls, lab.database_url
    from gateway.keys import write_private  # as in `up`: infra runs before the gateway can

    # Files only root (or this user) can read: the key and the password are the way in.
    key_file = folder / "admin.key"
    write_private(key_file, lab.admin_key + "\n")
    write_private(folder / "database.url", database_url + "\n")
    print(
        f"\nKapal gateways: {' '.join(urls)}\n"
        f"Database: postgres on {BRIDGE_GATEWAY}:{POSTGRES_PORT}, "
        f"its URL in {folder / 'database.url'}\n"
        f"Admin API key in {key_file}. First things to try:\n"
        f"  curl {urls[0]}/healthz\n"
        f'  curl -H "Authorization: Bearer $(cat {key_file})" {urls[0]}/v1/functions\n'
        f"  KAPAL_URL={urls[0]} KAPAL_API_KEY=$(cat {key_file}) kapal ls"
    )


def cmd_down(_: list[str]) -> int:
    state = state_dir()
    stopped_pg = stop_recorded_postgres(state)
    stopped_engine = stop_recorded_engine(state)
    if not (stopped_pg or stopped_engine):
        print("nothing to stop: no Postgres or dockerd started by an earlier run is running")
    return 0


def _setup(state: Path, extra_commands: dict[str, str] | None = None) -> Engine:
    with _timed("docker engine"):
        engine = ensure_engine(state)
        how = f"started dockerd (pid {engine.started_pid})" if engine.started_by_us else "running"
        print(f"docker engine: {how}")
    try:
        if extra_commands and host.missing_packages(extra_commands):
            with _timed("tools"):
                try:
                    host.ensure_commands(extra_commands)
                except InfraError as err:  # tests needing the tool skip; the rest still run
                    print(f"warning: {err}", file=sys.stderr)
        with _timed("base images"):
            images = ensure_base_images(engine.client, REPO_ROOT)
            print("base images: " + ", ".join(f"{k}={v}" for k, v in images.items()))
            # The gateway (`up`) and the tests' gateways build on exactly these.
            for runtime, tag in images.items():
                os.environ.setdefault(f"KAPAL_RUNTIME_IMAGE_{runtime.upper()}", tag)
    except BaseException:
        stop_engine(engine)
        raise
    return engine


def _run_forwarding_sigterm(argv: list[str], cwd: Path) -> int:
    """Run pytest to its end. Ctrl-C reaches it directly (the terminal signals the whole
    process group), so this process only waits. A SIGTERM becomes a SIGINT for pytest,
    which then tears its fixtures down (containers, gateways); a second one kills it."""
    child = subprocess.Popen(argv, cwd=cwd)
    terminated = False

    def forward(signum: int, _: FrameType | None) -> None:
        nonlocal terminated
        child.send_signal(signal.SIGTERM if terminated else signal.SIGINT)
        terminated = True

    before_term = signal.signal(signal.SIGTERM, forward)
    before_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = child.wait()
    finally:
        signal.signal(signal.SIGTERM, before_term)
        signal.signal(signal.SIGINT, before_int)
    if terminated:
        return 128 + signal.SIGTERM
    return 128 - code if code < 0 else code


def _warn_leftover_containers(engine: Engine) -> None:
    try:
        leftovers = engine.client.containers.list(
            all=True, filters={"label": "kapal.managed=true"}, ignore_removed=True
        )
    except Exception as err:  # a warning must not hide the tests' result
        print(f"warning: could not list leftover containers: {err}", file=sys.stderr)
        return
    if leftovers:
        names = ", ".join(f"{c.name} ({c.status})" for c in leftovers)
        print(f"warning: {len(leftovers)} kapal.managed containers left: {names}", file=sys.stderr)


@contextmanager
def _timed(what: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    print(f"{what}: done in {time.monotonic() - started:.2f} s", flush=True)


def _raise_terminated(signum: int, _: FrameType | None) -> None:
    raise Terminated(128 + signum)
