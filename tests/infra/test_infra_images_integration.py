"""The base runtime image, built on the real engine (offline fallback included)."""

from pathlib import Path

import docker
import pytest

from infra.images import ensure_base_images
from infra.recipes import INPUTS_LABEL, NODEJS_RUNTIME_REPO, RUNTIME_IMAGE, RUNTIME_REPO

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_ensure_base_images_is_a_no_op_when_the_image_is_current(
    docker_client: docker.DockerClient,
) -> None:
    images = ensure_base_images(docker_client, REPO_ROOT, log=lambda _: None)
    tag = images["python"]
    before = docker_client.images.get(tag)
    lines: list[str] = []
    assert ensure_base_images(docker_client, REPO_ROOT, log=lines.append) == images
    assert lines == []
    assert set(images) == {"python", "nodejs"}
    assert images["nodejs"].startswith(f"{NODEJS_RUNTIME_REPO}:")
    assert docker_client.images.get(tag).id == before.id
    # The tag names the inputs: another checkout's runtime gets a tag of its own.
    assert tag == f"{RUNTIME_REPO}:{before.labels[INPUTS_LABEL][:16]}"
    assert tag != RUNTIME_IMAGE


def test_runtime_image_runs_python_with_aiohttp_offline(
    docker_client: docker.DockerClient,
) -> None:
    tag = ensure_base_images(docker_client, REPO_ROOT, log=lambda _: None)["python"]
    output = docker_client.containers.run(
        tag,
        [
            "python3",
            "-c",
            "import aiohttp, kapal_runtime, os, sys; print(sys.version_info[:2], os.getuid())",
        ],
        network_mode="none",
        remove=True,
    )
    assert output.decode().strip() == "(3, 11) 10001"


def test_nodejs_runtime_image_runs_debians_node_offline(
    docker_client: docker.DockerClient,
) -> None:
    tag = ensure_base_images(docker_client, REPO_ROOT, log=lambda _: None)["nodejs"]
    script = (
        "const fs = require('fs');"
        "console.log(process.versions.node.split('.')[0], process.getuid(),"
        " fs.existsSync('/opt/kapal/runtime/main.js'), fs.readlinkSync('/opt/kapal/node_modules'))"
    )
    output = docker_client.containers.run(
        tag, ["node", "-e", script], network_mode="none", remove=True
    )
    assert output.decode().strip() == "18 10001 true deps/node_modules"
