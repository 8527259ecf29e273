"""Image functions: a user's image that serves HTTP, pulled with a password, pinned by
digest, hardened like every instance, scaled, paused and logged like any function."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from kapal import cli
from tests.conftest import PostgresServer
from tests.gateway.test_logs_integration import eventually, read_lines
from tests.registry import Registry
from tests.support import GatewayProcess, cleanup_namespace, managed_containers, new_namespace

pytestmark = pytest.mark.integration

USER, PASSWORD = "tester", "s3cret-registry-pass"
PORT = 9000
# The repository of an image only the local engine has (no registry in its name).
LOCAL = "kapal-test-local-image"

# Runs as root in its image (no USER): Kapal runs it as its runtime's uid.
SERVER = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GREETING = os.environ.get("GREETING", "{greeting}")

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            return self.answer(200, {{"ok": True}})
        try:
            open("/kapal-was-here", "w").close()
            root_writable = True
        except OSError:
            root_writable = False
        with open("/tmp/scratch", "w") as f:
            f.write("tmp is writable")
        print(f"served {{self.path}}", flush=True)
        print(f"warned {{self.path}}", file=sys.stderr, flush=True)
        self.answer(200, {{
            "greeting": GREETING,
            "path": self.path,
            "uid": os.getuid(),
            "root_writable": root_writable,
            "function": os.environ.get("KAPAL_FUNCTION"),
            "header": self.headers.get("X-Test"),
        }})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("0.0.0.0", {port}), Handler).serve_forever()
"""

DOCKERFILE = """\
FROM {base}
USER root
COPY server.py /srv/server.py
CMD ["python3", "/srv/server.py"]
"""


def build_and_push(client: docker.DockerClient, registry: Registry, tag: str, greeting: str) -> str:
    """Build the test server image offline FROM the base runtime image; push it."""
    import os

    base = os.environ["KAPAL_RUNTIME_IMAGE_PYTHON"]
    files = {
        "Dockerfile": DOCKERFILE.format(base=base),
        "server.py": SERVER.format(greeting=greeting, port=PORT),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=tag, network_mode="none", rm=True)
    repository, _, version = tag.rpartition(":")
    auth = {"username": USER, "password": PASSWORD}
    for chunk in client.api.push(repository, version, auth_config=auth, stream=True, decode=True):
        assert "error" not in chunk, chunk
    return tag


@pytest.fixture(scope="module")
def registry(docker_client: docker.DockerClient) -> Iterator[Registry]:
    reg = Registry(USER, PASSWORD)
    reg.start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def image(docker_client: docker.DockerClient, registry: Registry) -> Iterator[str]:
    tag = build_and_push(docker_client, registry, f"{registry.host}/kapal-test/web:1", "hello")
    yield tag
    # Whatever of the registry's images this engine has (pulled by the gateway too).
    for img in docker_client.images.list():
        for t in img.tags:
            if t.startswith((f"{registry.host}/", LOCAL)):
                docker_client.images.remove(t, force=True)
    for img in docker_client.images.list(all=True):
        if any(d.startswith(f"{registry.host}/") for d in img.attrs.get("RepoDigests") or []):
            docker_client.images.remove(str(img.id), force=True)


@pytest.fixture(scope="module")
def gw(
    postgres: PostgresServer, docker_client: docker.DockerClient, log_dir: Path, image: str
) -> Iterator[GatewayProcess]:
    """A gateway that scales down fast (for the pause tier), with the registry's secrets."""
    gateway = GatewayProcess(
        postgres.new_database(),
        new_namespace(),
        log_dir,
        KAPAL_AUTOSCALE_STABLE_WINDOW_S="2",
        KAPAL_AUTOSCALE_PANIC_WINDOW_S="1",
    )
    gateway.start()

    async def secrets() -> None:
        async with aiohttp.ClientSession() as http:
            for name, value in (("registry", f"{USER}:{PASSWORD}"), ("bad", f"{USER}:wrong")):
                body = {"name": name, "value": value}
                async with http.post(
                    f"{gateway.url}/v1/secrets", json=body, headers=gateway.headers
                ) as r:
                    assert r.status == 201, await r.text()

    try:
        asyncio.run(secrets())
        yield gateway
    finally:
        gateway.stop()
        leftovers = cleanup_namespace(docker_client, gateway.namespace)
        assert not leftovers, f"left behind after the gateway stopped: {leftovers}"


async def deploy_image(
    http: aiohttp.ClientSession, gw: GatewayProcess, spec: dict[str, Any], *, update: bool = False
) -> tuple[int, Any]:
    """An image function's deploy: its spec alone, as JSON."""
    if update:
        url, method = f"{gw.url}/v1/functions/{spec['name']}", "PUT"
    else:
        url, method = f"{gw.url}/v1/functions", "POST"
    async with http.request(method, url, json=spec, headers=gw.headers) as r:
        return r.status, await r.json()


def web_spec(image: str, name: str = "web", **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "port": PORT,
        "health_path": "/healthz",
        "registry_auth": "registry",
        "public": True,
        **more,
    }


async def test_deployed_with_a_password_served_pinned_and_hardened(
    gw: GatewayProcess,
    image: str,
    registry: Registry,
    docker_client: docker.DockerClient,
    http: aiohttp.ClientSession,
) -> None:
    spec = web_spec(image, limits={"memory_mb": 128, "cpus": 0.5})
    status, body = await deploy_image(http, gw, spec)
    assert status == 201, body
    assert body["runtime"] == "image"
    assert body["image"].startswith(f"{registry.host}/kapal-test/web@sha256:")
    assert (body["port"], body["health_path"], body["registry_auth"]) == (
        PORT,
        "/healthz",
        "registry",
    )

    async with http.get(f"{gw.url}/fn/web/a/b?q=1", headers={"X-Test": "yes"}) as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-Kapal-Cold-Start"] == "new"
        served = await r.json()
    assert served["greeting"] == "hello"
    assert served["path"] == "/a/b?q=1"
    assert served["header"] == "yes"
    assert served["function"] == "web"
    # A root image runs as the runtime's uid, on a read-only root with a writable /tmp.
    assert served["uid"] == 10001
    assert served["root_writable"] is False

    (container,) = managed_containers(docker_client, gw.namespace, "web")
    host = container.attrs["HostConfig"]
    assert container.attrs["Config"]["User"] == "10001:10001"
    assert container.attrs["Config"]["Image"] == body["image"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["PidsLimit"] == 512
    assert host["Memory"] == 128 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert "/tmp" in host["Tmpfs"]
    assert host["NetworkMode"] == f"{gw.namespace}-functions"
    assert container.labels["kapal.port"] == str(PORT)
    assert container.labels["kapal.runtime"] == "image"


async def test_its_output_is_in_the_function_log(
    gw: GatewayProcess, image: str, http: aiohttp.ClientSession
) -> None:
    status, body = await deploy_image(http, gw, web_spec(image, name="talker"))
    assert status == 201, body
    async with http.get(f"{gw.url}/fn/talker/said-this") as r:
        assert r.status == 200

    async def found() -> list[dict[str, Any]]:
        lines = await read_lines(http, gw, "talker")
        return [ln for ln in lines if ln["stream"] in ("stdout", "stderr")]

    async def both() -> bool:
        return len(await found()) >= 2

    await eventually(both)
    lines = await found()
    by_stream = {ln["stream"]: ln["line"] for ln in lines}
    assert by_stream == {"stdout": "served /said-this", "stderr": "warned /said-this"}
    assert {ln["version"] for ln in lines} == {1}


async def test_a_wrong_password_or_unknown_tag_is_422_and_no_version(
    gw: GatewayProcess, image: str, registry: Registry, http: aiohttp.ClientSession
) -> None:
    cases = [
        (web_spec(image, name="bad-pass", registry_auth="bad"), "unauthorized"),
        (web_spec(image, name="no-pass", registry_auth=None), "no basic auth"),
        (web_spec(f"{registry.host}/kapal-test/web:nope", name="bad-tag"), "unknown"),
        (web_spec(image, name="no-secret", registry_auth="missing"), "registry_auth"),
        (web_spec(f"{LOCAL}:absent", name="no-image", registry_auth=None), f"{LOCAL}:absent"),
    ]
    for spec, says in cases:
        status, body = await deploy_image(http, gw, spec)
        assert status == 422, (spec, body)
        assert says in body["error"]["message"].lower(), body
        async with http.get(f"{gw.url}/v1/functions/{spec['name']}", headers=gw.headers) as r:
            assert r.status == 404


async def test_bad_specs_name_the_field(
    gw: GatewayProcess, image: str, http: aiohttp.ClientSession
) -> None:
    cases = [
        ({**web_spec(image, name="x"), "runtime": "python"}, "image"),
        ({**web_spec(image, name="x"), "health_path": "healthz"}, "health_path"),
        ({**web_spec(image, name="x"), "port": 0}, "port"),
        ({**web_spec(image, name="x"), "image": "Not An Image"}, "image"),
        ({"name": "x", "port": 9000}, "image"),
    ]
    for spec, field in cases:
        status, body = await deploy_image(http, gw, spec)
        assert status in (400, 422), (spec, body)
        assert field in body["error"]["message"], body
    # An image function takes no code; a code function's spec alone is not a deploy.
    form = aiohttp.FormData()
    form.add_field("spec", json.dumps(web_spec(image, name="x")), content_type="application/json")
    form.add_field("code", b"x", filename="code.tar.gz", content_type="application/gzip")
    async with http.post(f"{gw.url}/v1/functions", data=form, headers=gw.headers) as r:
        assert r.status == 422
        assert "no code" in (await r.json())["error"]["message"]


async def test_a_retag_upstream_changes_no_version_until_redeployed(
    gw: GatewayProcess,
    registry: Registry,
    docker_client: docker.DockerClient,
    http: aiohttp.ClientSession,
) -> None:
    tag = build_and_push(docker_client, registry, f"{registry.host}/kapal-test/moving:1", "one")
    status, first = await deploy_image(http, gw, web_spec(tag, name="moving"))
    assert status == 201, first
    # The same spec and the same image make no version.
    async with http.put(
        f"{gw.url}/v1/functions/moving?skip_unchanged=true",
        json=web_spec(tag, name="moving"),
        headers=gw.headers,
    ) as r:
        assert r.status == 200 and r.headers["X-Kapal-Version-Created"] == "false"
    build_and_push(docker_client, registry, tag, "two")  # the same tag, other content
    async with http.get(f"{gw.url}/fn/moving") as r:
        assert (await r.json())["greeting"] == "one"
    status, second = await deploy_image(http, gw, web_spec(tag, name="moving"), update=True)
    assert status == 200, second
    assert second["version"] == 2 and second["image"] != first["image"]

    async def new_version_serves() -> bool:
        async with http.get(f"{gw.url}/fn/moving") as r:
            return r.status == 200 and (await r.json())["greeting"] == "two"

    await eventually(new_version_serves)
    async with http.get(f"{gw.url}/v1/functions/moving/versions", headers=gw.headers) as r:
        versions = (await r.json())["versions"]
    assert [v["spec"]["image"] for v in versions] == [first["image"], second["image"]]
    assert versions[0]["code_sha256"] != versions[1]["code_sha256"]


async def test_paused_when_idle_then_resumed(
    gw: GatewayProcess, image: str, http: aiohttp.ClientSession
) -> None:
    status, body = await deploy_image(http, gw, web_spec(image, name="sleeper"))
    assert status == 201, body
    async with http.get(f"{gw.url}/fn/sleeper") as r:
        assert r.status == 200

    async def paused() -> bool:
        async with http.get(f"{gw.url}/v1/functions/sleeper", headers=gw.headers) as r:
            return bool((await r.json())["pool"]["paused"] == 1)

    await eventually(paused)
    async with http.get(f"{gw.url}/fn/sleeper") as r:
        assert r.status == 200
        assert r.headers["X-Kapal-Cold-Start"] == "paused"


async def test_deleting_keeps_the_users_image(
    gw: GatewayProcess,
    image: str,
    docker_client: docker.DockerClient,
    http: aiohttp.ClientSession,
) -> None:
    status, body = await deploy_image(http, gw, web_spec(image, name="gone"))
    assert status == 201, body
    async with http.get(f"{gw.url}/fn/gone") as r:
        assert r.status == 200
    async with http.delete(f"{gw.url}/v1/functions/gone", headers=gw.headers) as r:
        assert r.status == 204
    assert managed_containers(docker_client, gw.namespace, "gone") == []
    docker_client.images.get(body["image"])  # still there
    docker_client.images.get(image)


async def test_the_cli_deploys_an_image(
    gw: GatewayProcess, image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def kapal(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await cli.run(["--url", gw.url, "--api-key", gw.admin_key or "", *argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    options = ["--port", str(PORT), "--health-path", "/healthz", "--public"]
    code, out, err = await kapal(
        "deploy", "--image", image, "--name", "cli-web", "--registry-auth", "registry", *options
    )
    assert code == 0, err
    assert "deployed cli-web version 1 (image 127.0.0.1:" in out
    assert "image pinned as 127.0.0.1:" in err
    code, out, err = await kapal("invoke", "cli-web", "-p", "from-cli")
    assert code == 0, err
    assert json.loads(out)["path"] == "/from-cli"
    code, out, err = await kapal(
        "deploy", "--image", image, "--name", "cli-bad", "--registry-auth", "bad", *options
    )
    assert code == 1
    assert f"error: image {image}: unauthorized" in err


async def test_a_manifest_deploys_an_image_function(
    gw: GatewayProcess, image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "kapal.yaml"
    manifest.write_text(
        "functions:\n"
        "  from-yaml:\n"
        f"    image: {image}\n"
        f"    port: {PORT}\n"
        "    health_path: /healthz\n"
        "    registry_auth: registry\n"
    )
    argv = ["--url", gw.url, "--api-key", gw.admin_key or "", "--json", "deploy", "-f"]
    capsys.readouterr()
    assert await cli.run([*argv, str(manifest)]) == 0, capsys.readouterr().err
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in events if e.get("deploying") == "from-yaml"][-2:] == [
        "resolved",
        "done",
    ]
    # Deployed again: the same image, so no version.
    assert await cli.run([*argv, str(manifest)]) == 0, capsys.readouterr().err
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [f["version_created"] for f in events[-1]["functions"]] == [False]


async def test_an_image_of_the_local_engine_is_pinned_by_its_id(
    gw: GatewayProcess,
    image: str,
    docker_client: docker.DockerClient,
    http: aiohttp.ClientSession,
) -> None:
    local = docker_client.images.get(image)
    local.tag(LOCAL, "1")
    status, body = await deploy_image(
        http, gw, web_spec(f"{LOCAL}:1", name="local", registry_auth=None)
    )
    assert status == 201, body
    assert body["image"] == local.id
    async with http.get(f"{gw.url}/fn/local") as r:
        assert r.status == 200
        assert (await r.json())["greeting"] == "hello"


async def test_another_gateway_routes_to_its_instances(
    gw: GatewayProcess, image: str, log_dir: Path, http: aiohttp.ClientSession
) -> None:
    status, body = await deploy_image(http, gw, web_spec(image, name="shared", scaling={"min": 1}))
    assert status == 201, body
    other = GatewayProcess(gw.database_url, gw.namespace, log_dir, admin_key=gw.admin_key)
    other.start()
    try:
        # Found from the engine's labels (its port) and probed on its health path.
        async def routed() -> bool:
            async with http.get(f"{other.url}/v1/functions/shared", headers=gw.headers) as r:
                return any(i["state"] == "ready" for i in (await r.json())["instances"])

        await eventually(routed)
        async with http.get(f"{other.url}/fn/shared/via-other") as r:
            assert r.status == 200
            assert "X-Kapal-Cold-Start" not in r.headers
            assert (await r.json())["path"] == "/via-other"
    finally:
        other.stop()
