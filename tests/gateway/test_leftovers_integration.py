"""A gateway killed with -9 leaves networks and firewall rules; the next one cleans them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker
import pytest

from scheduler.docker_backend import bridge_interface
from scheduler.firewall import guarded_interfaces
from tests.conftest import GatewayFactory, PostgresServer
from tests.support import GatewayProcess, cleanup_namespace, new_namespace

pytestmark = pytest.mark.integration

QUIET = {"KAPAL_PREWARM_PYTHON": "0"}


def bridges(client: docker.DockerClient, namespace: str) -> list[str]:
    names = (f"{namespace}-functions", f"{namespace}-functions-internal")
    return sorted(bridge_interface(n.attrs) for n in client.networks.list(names=list(names)))


def guarded() -> dict[str, int]:
    out = subprocess.run(["iptables", "-w", "5", "-S", "INPUT"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return guarded_interfaces(out.stdout)


def test_a_killed_gateways_leftovers_go_when_another_starts(
    make_gateway: GatewayFactory,
    postgres: PostgresServer,
    docker_client: docker.DockerClient,
    log_dir: Path,
) -> None:
    live = make_gateway(**QUIET)
    killed = GatewayProcess(postgres.new_database(), new_namespace(), log_dir, **QUIET)
    killed.start()
    try:
        left = bridges(docker_client, killed.namespace)
        assert len(left) == 2 and all(guarded().get(b) == 2 for b in left)
        killed.kill()
        assert bridges(docker_client, killed.namespace) == left  # nothing cleaned it up

        make_gateway(**QUIET)
        assert bridges(docker_client, killed.namespace) == []
        assert not set(left) & set(guarded())
        # A live gateway's networks and rules are untouched.
        kept = bridges(docker_client, live.namespace)
        assert len(kept) == 2 and all(guarded().get(b) == 2 for b in kept)
    finally:
        killed.kill()
        cleanup_namespace(docker_client, killed.namespace)


def test_rules_of_bridges_removed_behind_the_gateways_back_are_cleaned(
    make_gateway: GatewayFactory,
    postgres: PostgresServer,
    docker_client: docker.DockerClient,
    log_dir: Path,
) -> None:
    killed = GatewayProcess(postgres.new_database(), new_namespace(), log_dir, **QUIET)
    killed.start()
    left = bridges(docker_client, killed.namespace)
    killed.kill()
    cleanup_namespace(docker_client, killed.namespace)  # networks gone, rules not
    assert all(guarded().get(b) == 2 for b in left)
    make_gateway(**QUIET)
    assert not set(left) & set(guarded())
