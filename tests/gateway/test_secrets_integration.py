"""Secrets: stored sealed, mounted read-only as files, never shown, never in env or logs."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import GatewayFactory
from tests.support import GatewayProcess, deploy

pytestmark = pytest.mark.integration

VALUE = "hunter2-" + "s3cr3t-value"

READER = """
import os

def handle(event, context):
    out = {"files": sorted(os.listdir("/run/secrets"))}
    with open("/run/secrets/db-password") as f:
        out["value"] = f.read()
    out["in_env"] = any("hunter2" in v for v in os.environ.values())
    st = os.stat("/run/secrets/db-password")
    out["mode"] = oct(st.st_mode & 0o777)
    try:
        open("/run/secrets/db-password", "w").write("x")
        out["writable"] = True
    except OSError as e:
        out["writable"] = e.__class__.__name__
    return out
"""


async def put_secret(
    http: aiohttp.ClientSession, gw: GatewayProcess, name: str, value: str
) -> tuple[int, Any]:
    body = {"name": name, "value": value}
    async with http.post(f"{gw.url}/v1/secrets", json=body, headers=gw.headers) as r:
        return r.status, await r.json()


@pytest.fixture(scope="module")
def gw(shared_gateway: GatewayProcess) -> GatewayProcess:
    async def setup() -> None:
        async with aiohttp.ClientSession() as http:
            assert (await put_secret(http, shared_gateway, "db-password", VALUE))[0] == 201
            assert (await put_secret(http, shared_gateway, "api.token", "t0ken"))[0] == 201
            spec = {"name": "reader", "secrets": ["db-password", "api.token"]}
            status, body = await deploy(http, shared_gateway, {"handler.py": READER}, spec)
            assert status == 201, body

    asyncio.run(setup())
    return shared_gateway


async def test_function_reads_its_secrets_as_read_only_files(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gw.url}/fn/reader", headers=gw.headers) as r:
        assert r.status == 200, await r.text()
        got = await r.json()
    assert got["files"] == ["api.token", "db-password"]
    assert got["value"] == VALUE
    assert got["in_env"] is False
    assert got["mode"] == "0o400"
    assert got["writable"] in ("OSError", "PermissionError")


async def test_values_are_never_returned_logged_or_stored_in_clear(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gw.url}/v1/secrets", headers=gw.headers) as r:
        listed = await r.json()
    assert [s["name"] for s in listed["secrets"]] == ["api.token", "db-password"]
    assert VALUE not in str(listed)
    async with http.get(f"{gw.url}/v1/functions/reader", headers=gw.headers) as r:
        fn = await r.json()
    assert fn["secrets"] == ["db-password", "api.token"] and VALUE not in str(fn)
    assert VALUE not in gw.logs()
    conn = await asyncpg.connect(gw.database_url)
    try:
        rows = await conn.fetch("SELECT sealed FROM secrets")
        specs = await conn.fetch("SELECT spec::text FROM function_versions")
    finally:
        await conn.close()
    assert rows and not [r for r in rows if VALUE.encode() in bytes(r["sealed"])]
    assert not [s for s in specs if VALUE in s["spec"]]


async def test_unknown_secret_fails_the_deploy_naming_it(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    spec = {"name": "nosecret", "secrets": ["db-password", "missing-one"]}
    status, body = await deploy(http, gw, {"handler.py": READER}, spec)
    assert status == 422
    assert "missing-one" in body["error"]["message"]
    assert "db-password" not in body["error"]["message"]


async def test_updating_a_secret_reaches_running_instances(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    assert (await put_secret(http, gw, "db-password", "rotated"))[0] == 200
    async with http.get(f"{gw.url}/fn/reader", headers=gw.headers) as r:
        assert (await r.json())["value"] == "rotated"
    await put_secret(http, gw, "db-password", VALUE)


async def test_a_used_secret_cannot_be_deleted(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.delete(f"{gw.url}/v1/secrets/db-password", headers=gw.headers) as r:
        assert r.status == 409
        assert "reader" in (await r.json())["error"]["message"]
    assert (await put_secret(http, gw, "spare", "x"))[0] == 201
    async with http.delete(f"{gw.url}/v1/secrets/spare", headers=gw.headers) as r:
        assert r.status == 204
    async with http.delete(f"{gw.url}/v1/secrets/spare", headers=gw.headers) as r:
        assert r.status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "../etc", "value": "x"}, "name"),
        ({"name": ".hidden", "value": "x"}, "name"),
        ({"name": "ok"}, "value"),
        ({"name": "ok", "value": 3}, "value"),
    ],
)
async def test_bad_secret_bodies_are_422(
    gw: GatewayProcess, http: aiohttp.ClientSession, body: dict[str, Any], field: str
) -> None:
    async with http.post(f"{gw.url}/v1/secrets", json=body, headers=gw.headers) as r:
        assert r.status == 422
        assert (await r.json())["error"]["message"].startswith(field)


async def test_secrets_need_an_admin_key(gw: GatewayProcess, http: aiohttp.ClientSession) -> None:
    body = {"name": "deployer", "scopes": ["deploy"]}
    async with http.post(f"{gw.url}/v1/keys", json=body, headers=gw.headers) as r:
        deployer = {"Authorization": f"Bearer {(await r.json())['key']}"}
    async with http.get(f"{gw.url}/v1/secrets", headers=deployer) as r:
        assert r.status == 403


async def test_cli_secrets_set_ls_rm(
    gw: GatewayProcess,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    from kapal import cli

    monkeypatch.setenv("KAPAL_API_KEY", str(gw.admin_key))
    monkeypatch.setattr("sys.stdin", io.StringIO("from-stdin\n"))
    assert await cli.run(["--url", gw.url, "secrets", "set", "cli-secret"]) == 0
    assert await cli.run(["--url", gw.url, "secrets", "ls"]) == 0
    out = capsys.readouterr().out
    assert "cli-secret\n" in out and "from-stdin" not in out
    assert await cli.run(["--url", gw.url, "secrets", "rm", "cli-secret"]) == 0
    assert await cli.run(["--url", gw.url, "secrets", "rm", "cli-secret"]) == 1


def test_a_bad_secrets_key_stops_the_gateway_at_start_up(
    make_gateway: GatewayFactory,
) -> None:
    with pytest.raises(RuntimeError) as err:
        make_gateway(KAPAL_SECRET_KEY="bm90IDMyIGJ5dGVz")
    assert "KAPAL_SECRET_KEY must be 32 bytes" in str(err.value)
    assert "Traceback" not in str(err.value)
