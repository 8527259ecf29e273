"""The stack files for `docker stack deploy` say what Kapal on a swarm needs.

Parsed with PyYAML here; tests/infra/test_swarm_kapal_integration.py deploys the stack
file on a real local swarm.
"""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
STACK = INFRA / "kapal-stack.yml"
POSTGRES = INFRA / "kapal-stack.postgres.yml"


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return load(STACK)


@pytest.fixture(scope="module")
def postgres() -> dict[str, Any]:
    return load(POSTGRES)


@pytest.mark.parametrize("path", [STACK, POSTGRES], ids=lambda p: p.name)
def test_a_format_docker_20_10_deploys_and_no_nested_variables(path: Path) -> None:
    # Docker 20.10's CLI reads stack files up to 3.9, and interpolates no ${A:-${B}}.
    assert load(path)["version"] == "3.8"
    for expression in re.findall(r"\$\{([^}]*)\}", path.read_text()):
        assert "$" not in expression and "{" not in expression, expression


def test_the_gateway_answers_on_a_host_port_of_each_manager_it_runs_on(
    stack: dict[str, Any],
) -> None:
    gateway = stack["services"]["gateway"]
    assert gateway["ports"] == [
        {"target": 8080, "published": 8080, "protocol": "tcp", "mode": "host"}
    ]
    deploy = gateway["deploy"]
    assert deploy["mode"] == "replicated" and deploy["replicas"] >= 2
    assert deploy["endpoint_mode"] == "dnsrr"
    assert deploy["placement"] == {
        "constraints": ["node.role == manager"],
        "max_replicas_per_node": 1,
    }
    # Stopped before its replacement starts: they share the node's port.
    assert deploy["update_config"]["order"] == "stop-first"


def test_the_gateway_drives_the_managers_engine_by_its_socket_unprivileged(
    stack: dict[str, Any],
) -> None:
    gateway = stack["services"]["gateway"]
    assert gateway["user"].startswith("10001:${KAPAL_DOCKER_GID:?")
    volumes = {v["target"]: v for v in gateway["volumes"]}
    assert volumes["/var/run/docker.sock"]["type"] == "bind"
    assert volumes["/var/run/docker.sock"]["source"] == "/var/run/docker.sock"
    assert volumes["/tmp"]["type"] == "tmpfs"
    assert gateway["read_only"] is True
    assert gateway["cap_drop"] == ["ALL"]
    assert gateway["init"] is True
    assert set(gateway["deploy"]["resources"]["limits"]) == {"cpus", "memory"}
    env = gateway["environment"]
    assert env["KAPAL_BACKEND"] == "swarm"
    assert "KAPAL_SWARM_MANAGER" not in env and "DOCKER_HOST" not in env
    assert env["KAPAL_SECRET_KEY_FILE"] == "/run/secrets/kapal_secret_key"
    assert gateway["secrets"][0]["source"] == "kapal_secret_key"
    assert stack["secrets"] == {"kapal_secret_key": {"external": True}}


def test_functions_get_an_attachable_overlay_of_their_own_with_a_subnet(
    stack: dict[str, Any],
) -> None:
    networks = stack["networks"]
    functions = networks["functions"]
    assert functions["driver"] == "overlay" and functions["attachable"] is True
    assert functions["ipam"]["config"][0]["subnet"].startswith("${KAPAL_FUNCTIONS_SUBNET:-")
    gateway = stack["services"]["gateway"]
    assert gateway["environment"]["KAPAL_SWARM_NETWORK"] == functions["name"]
    assert sorted(gateway["networks"]) == ["functions", "functions-internal", "kapal"]
    internal = networks["functions-internal"]
    assert internal["internal"] is True and internal["name"] == functions["name"] + "-internal"
    assert networks["kapal"] == {"driver": "overlay"}
    # Kapal's own services are not on the functions' network.
    assert stack["services"]["registry"]["networks"] == ["kapal"]


def test_the_registry_is_pinned_to_its_volume_and_published_on_its_node(
    stack: dict[str, Any],
) -> None:
    registry = stack["services"]["registry"]
    assert registry["image"].startswith("${KAPAL_REGISTRY_IMAGE:-")
    assert "registry-data:/var/lib/registry" in registry["volumes"]
    assert registry["ports"][0]["mode"] == "host" and registry["ports"][0]["target"] == 5000
    assert registry["deploy"]["placement"]["constraints"] == ["node.labels.kapal-registry == true"]
    assert registry["read_only"] is True and registry["cap_drop"] == ["ALL"]
    assert "registry-data" in stack["volumes"]


def test_the_postgres_file_adds_a_database_the_gateways_default_url_names(
    stack: dict[str, Any], postgres: dict[str, Any]
) -> None:
    service = postgres["services"]["postgres"]
    assert service["image"] == "${KAPAL_POSTGRES_IMAGE:-postgres:16}"
    assert "postgres-data:/var/lib/postgresql/data" in service["volumes"]
    assert "postgres-data" in postgres["volumes"]
    assert service["networks"] == ["kapal"]
    assert "ports" not in service
    assert service["deploy"]["placement"]["constraints"] == ["node.labels.kapal-postgres == true"]
    default_url = stack["services"]["gateway"]["environment"]["KAPAL_DATABASE_URL"]
    assert default_url == "${KAPAL_DATABASE_URL:-postgresql://postgres@postgres:5432/kapal}"
    # One password, given to both sides.
    password = service["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${KAPAL_POSTGRES_PASSWORD:?")
    assert postgres["services"]["gateway"]["environment"] == {"PGPASSWORD": password}
    assert service["environment"]["POSTGRES_DB"] == "kapal"
