"""What every gateway on a local swarm is told, whichever backend it runs."""

from gateway.settings import Settings
from infra.registry import RunningRegistry
from infra.swarm import LocalSwarm, SwarmNode
from infra.swarm_kapal import gateway_env, gateway_service

SWARM = LocalSwarm(
    "lab",
    (SwarmNode("lab-node-1", "10.213.0.11", True), SwarmNode("lab-node-2", "10.213.0.12", False)),
    "lab-functions",
    RunningRegistry("lab-registry", "10.213.0.2:5000", "127.0.0.1:40000"),
)


def test_gateways_are_told_the_manager_overlay_registry_database_and_images() -> None:
    env = gateway_env(
        SWARM,
        {"python": "kapal/runtime-python:abc", "nodejs": "kapal/runtime-nodejs:def"},
        "postgresql://postgres:pw@10.213.0.1:5432/kapal",
        "kst",
    )
    assert env == {
        "KAPAL_BACKEND": "swarm",
        "KAPAL_SWARM_MANAGER": "tcp://10.213.0.11:2375",
        "DOCKER_HOST": "tcp://10.213.0.11:2375",
        "KAPAL_SWARM_NETWORK": "lab-functions",
        "KAPAL_REGISTRY": "10.213.0.2:5000",
        "KAPAL_DATABASE_URL": "postgresql://postgres:pw@10.213.0.1:5432/kapal",
        "KAPAL_NAMESPACE": "kst",
        "KAPAL_ISOLATE_HOST": "false",
        "KAPAL_PREWARM_PYTHON": "0",
        "KAPAL_PAUSE_STANDBYS": "false",
        "KAPAL_SECRET_KEY_FILE": "/run/secrets/kapal-secret-key",
        "KAPAL_RUNTIME_IMAGE_PYTHON": "kapal/runtime-python:abc",
        "KAPAL_RUNTIME_IMAGE_NODEJS": "kapal/runtime-nodejs:def",
    }
    assert gateway_service("kst") == "kst-gateway"


def test_the_settings_a_gateway_reads_accept_that_environment() -> None:
    # Given as arguments, which win over this process's own KAPAL_* environment.
    env = gateway_env(SWARM, {"python": "kapal/runtime-python:abc"}, "postgresql://x/kapal", "kst")
    settings = Settings(
        **{k.removeprefix("KAPAL_").lower(): v for k, v in env.items() if k.startswith("KAPAL_")}
    )
    assert settings.backend == "swarm"
    assert settings.network == "lab-functions"
    assert settings.registry == "10.213.0.2:5000"
    assert settings.runtime_image_python == "kapal/runtime-python:abc"
    assert settings.isolate_host is False and settings.prewarm_python == 0
