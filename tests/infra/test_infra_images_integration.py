"""The base runtime image, built on the real engine (offline fallback included)."""

from pathlib import Path

import docker
import pytest

from infra.images import ensure_base_images
from infra.recipes import INPUTS_LABEL, RUNTIME_IMAGE

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_ensure_base_images_is_a_no_op_when_the_image_is_current(
    docker_client: docker.DockerClient,
) -> None:
    ensure_base_images(docker_client, REPO_ROOT, log=lambda _: None)  # builds if stale
    before = docker_client.images.get(RUNTIME_IMAGE)
    lines: list[str] = []
    assert ensure_base_images(docker_client, REPO_ROOT, log=lines.append) == {
        "python": RUNTIME_IMAGE
    }
    assert lines == []
    assert docker_client.images.get(RUNTIME_IMAGE).id == before.id
    assert before.labels[INPUTS_LABEL]


def test_runtime_image_runs_python_with_aiohttp_offline(
    docker_client: docker.DockerClient,
) -> None:
    ensure_base_images(docker_client, REPO_ROOT, log=lambda _: None)
    output = docker_client.containers.run(
        RUNTIME_IMAGE,
        [
            "python3",
            "-c",
            "import aiohttp, kapal_runtime, os, sys; print(sys.version_info[:2], os.getuid())",
        ],
        network_mode="none",
        remove=True,
    )
    assert output.decode().strip() == "(3, 11) 10001"
