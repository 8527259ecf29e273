"""Function dependencies: resolved on the host once, reused by code-only re-deploys,
compiled wheels that work in the container, and requirements that cannot be resolved."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from kapal import cli
from tests.conftest import GatewayFactory
from tests.support import GatewayProcess, deploy, tar_gz

pytestmark = pytest.mark.integration

SIX = "six==1.16.0\n"


def says(word: str) -> str:
    return f"import six\ndef handle(event, context):\n    return '{word} ' + six.__version__\n"


async def streamed(
    http: aiohttp.ClientSession,
    gw: GatewayProcess,
    files: dict[str, str | bytes],
    name: str,
    *,
    update: bool = False,
) -> list[dict[str, Any]]:
    """A deploy with its progress streamed; its events."""
    form = aiohttp.FormData()
    form.add_field("spec", json.dumps({"name": name}), content_type="application/json")
    form.add_field("code", tar_gz(files), filename="code.tar.gz")
    headers = {**gw.headers, "Accept": "application/x-ndjson"}
    url = f"{gw.url}/v1/functions" + (f"/{name}" if update else "")
    async with http.request("PUT" if update else "POST", url, data=form, headers=headers) as r:
        assert r.status == 200, await r.text()
        return [json.loads(line) async for line in r.content if line.strip()]


def one(events: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [e for e in events if e["event"] == kind]
    assert len(found) == 1, events
    return found[0]


async def call(http: aiohttp.ClientSession, gw: GatewayProcess, name: str) -> tuple[int, str]:
    async with http.get(f"{gw.url}/fn/{name}", headers=gw.headers) as r:
        return r.status, await r.text()


def layers(client: docker.DockerClient, image: str) -> list[str]:
    return list(client.images.get(image).attrs["RootFS"]["Layers"])


def deps_gateway(make_gateway: GatewayFactory, tmp_path: Path) -> GatewayProcess:
    """A gateway with a dependency cache of its own, empty at first."""
    return make_gateway(KAPAL_DEPS_CACHE_DIR=str(tmp_path / "deps"))


async def test_a_code_only_redeploy_reuses_the_dependency_layer(
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    gw = deps_gateway(make_gateway, tmp_path)
    first = await streamed(http, gw, {"requirements.txt": SIX, "handler.py": says("one")}, "reuse")
    resolved = one(first, "dependencies")
    assert resolved["reused"] is False and resolved["bytes"] > 0
    assert resolved["line"] == f"dependencies: resolved in {resolved['seconds']:.1f} s" + (
        f" (sha {resolved['sha256'][:12]})"
    )
    assert first[-1]["event"] == "done", first[-1]
    assert await call(http, gw, "reuse") == (200, "one 1.16.0")

    # Only the code changed (the requirements only in their comments and spacing).
    files = {"requirements.txt": "# pinned\n  six==1.16.0  \n\n", "handler.py": says("two")}
    second = await streamed(http, gw, files, "reuse", update=True)
    reused = one(second, "dependencies")
    assert reused["reused"] is True
    assert reused["sha256"] == resolved["sha256"]
    assert reused["line"] == f"dependencies: reused (cached, sha {resolved['sha256'][:12]})"
    assert not any("resolving" in e.get("line", "") for e in second), second
    # Docker's build cache gave the deps layer (COPY function/ and the labels are new).
    assert sum("Using cache" in e.get("line", "") for e in second) == 1, second
    assert second[-1]["event"] == "done" and second[-1]["function"]["version"] == 2
    assert await call(http, gw, "reuse") == (200, "two 1.16.0")

    # The deps layer is the same layer (Docker's cache hit), the code layer is not.
    base = layers(docker_client, os.environ["KAPAL_RUNTIME_IMAGE_PYTHON"])
    v1 = layers(docker_client, f"{gw.namespace}-fn/reuse:1")
    v2 = layers(docker_client, f"{gw.namespace}-fn/reuse:2")
    assert v1[: len(base)] == v2[: len(base)] == base
    assert v1[len(base)] == v2[len(base)]  # COPY deps/
    assert v1[len(base) + 1] != v2[len(base) + 1]  # COPY function/
    assert (
        docker_client.images.get(f"{gw.namespace}-fn/reuse:2").labels["kapal.deps"]
        == (resolved["sha256"])
    )

    # Other requirements: resolved anew, a deps layer of their own.
    files = {"requirements.txt": "six==1.15.0\n", "handler.py": says("three")}
    third = await streamed(http, gw, files, "reuse", update=True)
    changed = one(third, "dependencies")
    assert changed["reused"] is False and changed["sha256"] != resolved["sha256"]
    v3 = layers(docker_client, f"{gw.namespace}-fn/reuse:3")
    assert v3[len(base)] != v1[len(base)]
    assert await call(http, gw, "reuse") == (200, "three 1.15.0")


async def test_two_gateways_share_the_cache_safely(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    first = deps_gateway(make_gateway, tmp_path)
    other = deps_gateway(make_gateway, tmp_path)  # another database and namespace
    files = {"requirements.txt": SIX, "handler.py": says("shared")}
    # At once: one resolves, the other waits for it and reuses what it made.
    both = await asyncio.gather(
        streamed(http, first, files, "shared"), streamed(http, other, files, "shared")
    )
    deps = [one(events, "dependencies") for events in both]
    assert sorted(d["reused"] for d in deps) == [False, True]
    assert deps[0]["sha256"] == deps[1]["sha256"]
    assert await call(http, first, "shared") == (200, "shared 1.16.0")
    assert await call(http, other, "shared") == (200, "shared 1.16.0")


NUMPY_PILLOW = """\
import io

import numpy as np
from PIL import Image


def handle(event, context):
    pixels = (np.arange(12 * 8 * 3) % 256).astype(np.uint8).reshape(8, 12, 3)
    image = Image.fromarray(pixels, "RGB")
    out = io.BytesIO()
    image.save(out, format="PNG")
    back = np.asarray(Image.open(io.BytesIO(out.getvalue())))
    return {
        "sum": int(pixels.sum()),
        "inverse": np.linalg.inv(np.array([[2.0, 0.0], [0.0, 4.0]])).tolist(),
        "size": list(image.size),
        "png": out.getvalue()[:4].hex(),
        "round_trip": bool((back == pixels).all()),
    }
"""


async def test_compiled_wheels_work_in_the_function(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gw = deps_gateway(make_gateway, tmp_path)
    files = {"requirements.txt": "numpy\nPillow\n", "handler.py": NUMPY_PILLOW}
    events = await streamed(http, gw, files, "numeric")
    assert events[-1]["event"] == "done", events[-1]
    async with http.post(f"{gw.url}/fn/numeric", headers=gw.headers) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    assert body == {
        "sum": sum(i % 256 for i in range(12 * 8 * 3)),
        "inverse": [[0.5, 0.0], [0.0, 0.25]],
        "size": [12, 8],
        "png": "89504e47",
        "round_trip": True,
    }


async def test_an_unresolvable_requirement_is_a_422_naming_it(
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    gw = deps_gateway(make_gateway, tmp_path)
    handler = "def handle(event, context):\n    return 'ok'\n"
    bad = {"requirements.txt": "six==1.16.0\nnosuchpkg-xyz==1.0\n", "handler.py": handler}

    status, body = await deploy(http, gw, bad, {"name": "baddeps"})
    assert status == 422, body
    assert body["error"]["code"] == "requirements_unresolvable"
    assert "nosuchpkg-xyz" in body["error"]["message"]
    async with http.get(f"{gw.url}/v1/functions/baddeps", headers=gw.headers) as r:
        assert r.status == 404

    # An update that cannot be resolved leaves the current version alone.
    assert (await deploy(http, gw, {"handler.py": handler}, {"name": "kept"}))[0] == 201
    status, body = await deploy(http, gw, bad, {"name": "kept"}, name="kept", update=True)
    assert (status, body["error"]["code"]) == (422, "requirements_unresolvable")
    async with http.get(f"{gw.url}/v1/functions/kept/versions", headers=gw.headers) as r:
        assert [v["version"] for v in (await r.json())["versions"]] == [1]
    tags = [t for img in docker_client.images.list(f"{gw.namespace}-fn/kept") for t in img.tags]
    assert tags == [f"{gw.namespace}-fn/kept:1"]
    assert await call(http, gw, "kept") == (200, "ok")
    # Nothing half-made stays in the cache.
    assert list((tmp_path / "deps" / "entries").iterdir()) == []
    assert list((tmp_path / "deps" / "staging").iterdir()) == []


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("-r /etc/passwd", "pip options"),
        ("--index-url http://example.com/simple", "pip options"),
        ("pkg @ file:///etc/passwd", "local paths"),
        ("/etc/passwd", "local paths"),
        ("pkg==${KAPAL_SECRET_KEY}", "environment references"),
        ("six==1.16.0 --install-option=--prefix=/", "other than --hash"),
    ],
)
async def test_requirement_lines_that_would_read_the_host_are_refused(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession, line: str, words: str
) -> None:
    files = {"requirements.txt": f"six==1.16.0\n{line}\n", "handler.py": says("x")}
    status, body = await deploy(http, shared_gateway, files, {"name": "refused"})
    assert status == 422, body
    assert body["error"]["code"] == "requirements_unresolvable"
    assert "line 2" in body["error"]["message"] and words in body["error"]["message"]


async def test_kapal_deploy_says_when_the_dependency_layer_was_reused(
    make_gateway: GatewayFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw = deps_gateway(make_gateway, tmp_path)
    folder = tmp_path / "cli-deps"
    folder.mkdir()
    (folder / "requirements.txt").write_text(SIX)
    (folder / "handler.py").write_text(says("cli"))
    argv = ["--url", gw.url, "--api-key", gw.admin_key or ""]

    assert await cli.run([*argv, "deploy", str(folder)]) == 0
    first = capsys.readouterr()
    assert "dependencies: resolved in " in first.err, first.err

    (folder / "handler.py").write_text(says("cli again"))
    assert await cli.run([*argv, "deploy", str(folder)]) == 0
    again = capsys.readouterr()
    assert "dependencies: reused (cached, sha " in again.err, again.err

    (folder / "handler.py").write_text(says("cli json"))
    assert await cli.run([*argv, "--json", "deploy", str(folder)]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    deps = one(events, "dependencies")
    assert deps["reused"] is True and deps["line"].startswith("dependencies: reused (cached, sha ")
