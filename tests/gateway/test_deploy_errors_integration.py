"""Bad specs and archives get a clear 4xx and leave nothing behind."""

from __future__ import annotations

import io
import json
import tarfile

import aiohttp
import docker
import pytest

from tests.support import GatewayProcess, deploy, tar_gz, zip_bytes

pytestmark = pytest.mark.integration

HANDLER = {"handler.py": "def handle(event, context):\n    return 'ok'\n"}


def tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("handler.py")
        body = HANDLER["handler.py"].encode()
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        tar.addfile(member, io.BytesIO(data) if data else None)
    return buf.getvalue()


def member(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = size
    return info


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"name": "Bad_Name"}, "name"),
        ({"name": "-x"}, "name"),
        ({"name": "x" * 64}, "name"),
        ({}, "name"),
        ({"name": "ok", "runtime": "cobol"}, "runtime"),
        ({"name": "ok", "handler": "no-dots"}, "handler"),
        ({"name": "ok", "limits": {"timeout_s": 0}}, "limits.timeout_s"),
        ({"name": "ok", "limits": {"memory_mb": "lots"}}, "limits.memory_mb"),
        ({"name": "ok", "scaling": {"min": 5, "max": 2}}, "scaling.max"),
        ({"name": "ok", "scaling": {"concurrency": 0}}, "scaling.concurrency"),
        ({"name": "ok", "env": {"1BAD": "x"}}, "env"),
        ({"name": "ok", "env": {"KAPAL_X": "x"}}, "env"),
        ({"name": "ok", "color": "blue"}, "color"),
    ],
)
async def test_bad_spec_is_422_naming_the_field(
    shared_gateway: GatewayProcess,
    http: aiohttp.ClientSession,
    spec: dict[str, object],
    field: str,
) -> None:
    status, body = await deploy(http, shared_gateway, HANDLER, spec)
    assert status == 422, body
    assert body["error"]["code"] == "invalid_spec"
    assert field in body["error"]["message"]


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (b"not an archive at all", "zip or .tar.gz"),
        (b"", "empty"),
        (b"\x1f\x8b\x08\x00garbage", "valid .tar.gz"),
        (tar_with(member("../evil.py", size=1), b"x"), "escapes"),
        (tar_with(member("/etc/evil.py", size=1), b"x"), "absolute"),
        (tar_with(member("link", tarfile.SYMTYPE, "/etc/passwd")), "link"),
        (tar_with(member("hard", tarfile.LNKTYPE, "handler.py")), "link"),
        (tar_with(member("dev", tarfile.CHRTYPE)), "not a regular file"),
        (tar_with(member("fifo", tarfile.FIFOTYPE)), "not a regular file"),
        (zip_bytes({"../../x.py": "x", "handler.py": HANDLER["handler.py"]}), "escapes"),
        (tar_gz({"other.py": "x = 1\n"}), "handler.py"),
    ],
)
async def test_bad_archive_is_400(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession, code: bytes, words: str
) -> None:
    status, body = await deploy(http, shared_gateway, code, {"name": "arch"})
    assert status == 400, body
    assert body["error"]["code"] == "invalid_archive"
    assert words in body["error"]["message"]


async def test_zip_bomb_is_refused(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    bomb = zip_bytes({"handler.py": HANDLER["handler.py"], "big.bin": b"\0" * (64 << 20)})
    status, body = await deploy(http, shared_gateway, bomb, {"name": "bomb"})
    assert status == 400, body
    assert "ratio" in body["error"]["message"]


async def test_body_that_is_not_multipart_is_400(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{shared_gateway.url}/v1/functions", json={"name": "x"}, headers=shared_gateway.headers
    ) as r:
        assert r.status == 400
        assert "multipart" in (await r.json())["error"]["message"]


async def test_missing_parts_and_bad_json_are_400(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    form = aiohttp.FormData()
    form.add_field("spec", json.dumps({"name": "x"}), content_type="application/json")
    async with http.post(
        f"{shared_gateway.url}/v1/functions", data=form, headers=shared_gateway.headers
    ) as r:
        assert r.status == 400
        assert "code" in (await r.json())["error"]["message"]
    form = aiohttp.FormData()
    form.add_field("spec", "{not json", content_type="application/json")
    form.add_field("code", tar_gz(HANDLER), filename="c.tar.gz")
    async with http.post(
        f"{shared_gateway.url}/v1/functions", data=form, headers=shared_gateway.headers
    ) as r:
        assert r.status == 400
        assert "JSON" in (await r.json())["error"]["message"]


async def test_duplicate_name_is_409_and_unknown_update_is_404(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    status, body = await deploy(http, shared_gateway, HANDLER, {"name": "dup"})
    assert status == 201, body
    status, body = await deploy(http, shared_gateway, HANDLER, {"name": "dup"})
    assert status == 409
    assert body["error"]["code"] == "function_exists"
    status, body = await deploy(http, shared_gateway, HANDLER, {}, name="nobody", update=True)
    assert status == 404
    status, body = await deploy(
        http, shared_gateway, HANDLER, {"name": "other"}, name="dup", update=True
    )
    assert status == 422
    async with http.delete(
        f"{shared_gateway.url}/v1/functions/dup", headers=shared_gateway.headers
    ) as r:
        assert r.status == 204


async def test_unknown_routes_and_methods_are_json(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{shared_gateway.url}/v2/nothing", headers=shared_gateway.headers) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "not_found"
    async with http.patch(
        f"{shared_gateway.url}/v1/functions", headers=shared_gateway.headers
    ) as r:
        assert r.status == 405
        assert (await r.json())["error"]["code"] == "method_not_allowed"
    async with http.get(
        f"{shared_gateway.url}/v1/functions/Not_Valid", headers=shared_gateway.headers
    ) as r:
        assert r.status == 400


async def test_failed_deploys_leave_no_state(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession, docker_client: docker.DockerClient
) -> None:
    async with http.get(f"{shared_gateway.url}/v1/functions", headers=shared_gateway.headers) as r:
        names = [f["name"] for f in (await r.json())["functions"]]
    assert "arch" not in names and "bomb" not in names and "ok" not in names
    tags = [t for img in docker_client.images.list() for t in img.tags]
    assert not [t for t in tags if t.startswith(f"{shared_gateway.namespace}-fn/arch")]
