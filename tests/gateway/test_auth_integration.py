"""API keys, scopes and public/private functions on a real gateway."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import GatewayFactory
from tests.support import GatewayProcess, deploy

pytestmark = pytest.mark.integration

ECHO_AUTH = """
def handle(event, context):
    return {"authorization": event.headers.get("Authorization")}
"""


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def new_key(
    http: aiohttp.ClientSession, gw: GatewayProcess, scopes: list[str], **extra: object
) -> dict[str, object]:
    body = {"name": f"test {'+'.join(scopes)}", "scopes": scopes, **extra}
    async with http.post(f"{gw.url}/v1/keys", json=body, headers=gw.headers) as r:
        assert r.status == 201, await r.text()
        return dict(await r.json())


@pytest.fixture(scope="module")
def gw(shared_gateway: GatewayProcess) -> GatewayProcess:
    async def deploy_all() -> None:
        async with aiohttp.ClientSession() as http:
            for name, public in (("private", False), ("open", True)):
                spec = {"name": name, "public": public}
                status, body = await deploy(http, shared_gateway, {"handler.py": ECHO_AUTH}, spec)
                assert status == 201, body

    asyncio.run(deploy_all())
    return shared_gateway


def test_bootstrap_key_file_is_private(gw: GatewayProcess) -> None:
    assert gw.admin_key is not None and gw.admin_key.startswith("kpl_")
    assert stat.S_IMODE(os.stat(gw.key_path).st_mode) == 0o600
    # Shown once on stdout, never in a structured log record.
    records = [line for line in gw.logs().splitlines() if line.startswith("{")]
    assert records and not [line for line in records if gw.admin_key in line]
    assert gw.logs().count(gw.admin_key) == 1


async def test_management_needs_a_key(gw: GatewayProcess, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{gw.url}/v1/functions") as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await r.json())["error"]["code"] == "unauthorized"
    async with http.get(f"{gw.url}/v1/functions", headers=bearer("kpl_nope")) as r:
        assert r.status == 401
    async with http.get(f"{gw.url}/v1/functions", headers={"Authorization": "Basic eDp5"}) as r:
        assert r.status == 401
    async with http.get(f"{gw.url}/healthz") as r:
        assert r.status == 200


async def test_scopes_are_enforced(gw: GatewayProcess, http: aiohttp.ClientSession) -> None:
    invoke = str((await new_key(http, gw, ["invoke"]))["key"])
    deployer = str((await new_key(http, gw, ["deploy"]))["key"])
    async with http.get(f"{gw.url}/v1/functions", headers=bearer(invoke)) as r:
        assert r.status == 403
        assert "deploy" in (await r.json())["error"]["message"]
    async with http.get(f"{gw.url}/v1/functions", headers=bearer(deployer)) as r:
        assert r.status == 200
    async with http.get(f"{gw.url}/v1/keys", headers=bearer(deployer)) as r:
        assert r.status == 403
    async with http.get(f"{gw.url}/fn/private", headers=bearer(deployer)) as r:
        assert r.status == 403
    async with http.get(f"{gw.url}/fn/private", headers=bearer(invoke)) as r:
        assert r.status == 200


async def test_private_function_needs_an_invoke_key_public_does_not(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gw.url}/fn/private") as r:
        assert r.status == 401
    # An unknown function looks like a private one to a caller without a key.
    async with http.get(f"{gw.url}/fn/no-such-function") as r:
        assert r.status == 401
    async with http.get(f"{gw.url}/fn/open") as r:
        assert r.status == 200
        assert (await r.json()) == {"authorization": None}
    async with http.get(f"{gw.url}/v1/functions/open", headers=gw.headers) as r:
        assert (await r.json())["public"] is True


async def test_the_callers_key_never_reaches_the_function(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gw.url}/fn/private", headers=gw.headers) as r:
        assert r.status == 200
        assert (await r.json()) == {"authorization": None}
    async with http.get(f"{gw.url}/fn/open", headers={"Authorization": "Bearer app-token"}) as r:
        assert (await r.json()) == {"authorization": "Bearer app-token"}


async def test_create_list_revoke(gw: GatewayProcess, http: aiohttp.ClientSession) -> None:
    created = await new_key(http, gw, ["invoke"], rps=50)
    key, key_id = str(created["key"]), str(created["id"])
    assert key.startswith(f"kpl_{key_id}_")
    assert created["scopes"] == ["invoke"] and created["rps"] == 50
    async with http.get(f"{gw.url}/v1/keys", headers=gw.headers) as r:
        listed = (await r.json())["keys"]
    mine = [k for k in listed if k["id"] == key_id]
    assert mine and "key" not in mine[0] and key not in str(listed)
    async with http.get(f"{gw.url}/fn/private", headers=bearer(key)) as r:
        assert r.status == 200
    async with http.delete(f"{gw.url}/v1/keys/{key_id}", headers=gw.headers) as r:
        assert r.status == 204
    # Revocation takes effect at once on this gateway (the cache is refreshed).
    async with http.get(f"{gw.url}/fn/private", headers=bearer(key)) as r:
        assert r.status == 401
    async with http.delete(f"{gw.url}/v1/keys/{key_id}", headers=gw.headers) as r:
        assert r.status == 404
    async with http.get(f"{gw.url}/v1/keys", headers=gw.headers) as r:
        assert key_id not in {k["id"] for k in (await r.json())["keys"]}


async def test_a_key_cannot_revoke_itself(gw: GatewayProcess, http: aiohttp.ClientSession) -> None:
    admin_id = str(gw.admin_key).split("_")[1]
    async with http.delete(f"{gw.url}/v1/keys/{admin_id}", headers=gw.headers) as r:
        assert r.status == 409
        assert (await r.json())["error"]["code"] == "conflict"
    async with http.get(f"{gw.url}/v1/keys", headers=gw.headers) as r:
        assert r.status == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "scopes": ["root"]}, "scopes.0"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "", "scopes": ["invoke"]}, "name"),
        ({"scopes": ["invoke"]}, "name"),
        ({"name": "x", "scopes": ["invoke"], "rps": -1}, "rps"),
        ({"name": "x", "scopes": ["invoke"], "extra": 1}, "extra"),
    ],
)
async def test_bad_key_bodies_are_422_naming_the_field(
    gw: GatewayProcess, http: aiohttp.ClientSession, body: dict[str, object], field: str
) -> None:
    async with http.post(f"{gw.url}/v1/keys", json=body, headers=gw.headers) as r:
        assert r.status == 422
        assert (await r.json())["error"]["message"].startswith(field)


async def test_keys_made_on_one_gateway_work_on_another(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    first = make_gateway()
    second = make_gateway(database_url=first.database_url)
    assert not second.key_path.exists(), "a second gateway must not make another admin key"
    created = await new_key(http, first, ["deploy"])
    for _ in range(100):  # the periodic refresh picks it up
        async with http.get(f"{second.url}/v1/functions", headers=bearer(str(created["key"]))) as r:
            if r.status == 200:
                break
        await asyncio.sleep(0.1)
    assert r.status == 200


async def test_cli_keys_create_ls_rm(
    gw: GatewayProcess,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from kapal import cli

    monkeypatch.setenv("KAPAL_HOME", str(tmp_path))
    monkeypatch.delenv("KAPAL_API_KEY", raising=False)
    assert await cli.run(["--url", gw.url, "keys", "ls"]) == 1
    assert "KAPAL_API_KEY" in capsys.readouterr().err
    # The key `kapal up` saves in the state folder; the environment overrides it.
    (tmp_path / "admin.key").write_text(f"{gw.admin_key}\n")
    argv = ["--url", gw.url, "keys", "create", "ci", "--scope", "invoke", "--scope", "deploy"]
    assert await cli.run(argv) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith("kpl_") and "shown this once" in out.err
    key_id = key.split("_")[1]
    assert await cli.run(["--url", gw.url, "keys", "ls"]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "deploy,invoke" in listing and key not in listing
    monkeypatch.setenv("KAPAL_API_KEY", key)
    assert await cli.run(["--url", gw.url, "keys", "ls"]) == 1  # not an admin key
    assert "admin" in capsys.readouterr().err
    monkeypatch.delenv("KAPAL_API_KEY")
    assert await cli.run(["--url", gw.url, "keys", "rm", key_id]) == 0
    assert capsys.readouterr().out == f"revoked {key_id}\n"
    assert await cli.run(["--url", gw.url, "keys", "ls"]) == 0
    assert key_id not in capsys.readouterr().out
