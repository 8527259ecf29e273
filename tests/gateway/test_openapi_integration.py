"""The OpenAPI description covers every route, and the gateway lives up to it under fuzzing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway import app as management
from tests.conftest import GatewayFactory
from tests.gateway.test_openapi import described, front_served, real_app, served
from tests.support import GatewayProcess

pytestmark = pytest.mark.integration


async def test_every_route_is_described(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{shared_gateway.url}/openapi.json") as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["openapi"].startswith("3.")
    # What the running gateway serves is the document generated from the route table...
    assert doc == json.loads(json.dumps(management.DOCUMENT))
    # ...and that table is every route of the real management app and of the front server.
    assert served(real_app()) | front_served() == described(doc)
    for path in ("/v1/jobs", "/v1/webhooks", "/v1/schedules/{id}", "/async/fn/{name}"):
        assert path in doc["paths"], path


@pytest.mark.skipif(
    shutil.which("schemathesis", path=str(Path(sys.executable).parent)) is None,
    reason="schemathesis is not installed (pip install -e '.[dev]')",
)
def test_fuzzing_finds_no_server_error_or_schema_violation(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = make_gateway()
    exe = str(Path(sys.executable).parent / "schemathesis")
    argv = [
        exe,
        "run",
        f"{gw.url}/openapi.json",
        "--checks",
        "not_a_server_error,response_schema_conformance,status_code_conformance,"
        "content_type_conformance",
        "--max-examples",
        "25",
        "--seed",
        "1",
        "--workers",
        "2",
        "--request-timeout",
        "30",
        "--header",
        f"Authorization: Bearer {gw.admin_key}",
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": str(Path(__file__).with_name("schemathesis_hooks.py")),
    }
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=150, cwd=tmp_path, check=False, env=env
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    logs = gw.logs()
    assert "Traceback" not in logs and "unhandled error" not in logs, logs[-4000:]


async def test_malformed_multipart_part_headers_are_400(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    """Found by the fuzzer: a control byte in a part's header was a 500."""
    body = b'--b\r\nContent-Disposition: form-data; name="\x1c"\r\n\r\nx\r\n--b--\r\n'
    headers = {**shared_gateway.headers, "Content-Type": "multipart/form-data; boundary=b"}
    async with http.post(f"{shared_gateway.url}/v1/functions", data=body, headers=headers) as r:
        assert r.status == 400
        assert "multipart" in (await r.json())["error"]["message"]
