"""The Node.js runtime in its own image, driven directly over HTTP as a gateway would:
prewarm and /_/init (unsafe archives refused), busy, load failures, the log port, and the
SIGTERM drain."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import docker
import pytest
from docker.models.containers import Container

from tests.runtimes.runtime_python_support import parse_copy_rows
from tests.support import tar_gz

pytestmark = pytest.mark.integration

HOLD = """\
exports.handler = async (event) => {
  console.log('holding', event.path);
  await new Promise((resolve) => setTimeout(resolve, Number(event.query.s || '0') * 1000));
  return 'held ' + require('./lib/word').word;
};
"""
WORD = "exports.word = 'ok';\n"
# A folder name that makes paths longer than ustar's 100 bytes.
LONG_DIR = "d" * 120

Start = Callable[..., tuple[Container, str]]


@pytest.fixture
def start_runtime(docker_client: docker.DockerClient) -> Iterator[Start]:
    """Run the runtime image locked down as Kapal runs it; removed after the test."""
    image = os.environ["KAPAL_RUNTIME_IMAGE_NODEJS"]
    started: list[Container] = []
    owned = "rw,nosuid,nodev,uid=10001,gid=10001,mode=0755,size=16m"

    def start(**env: str) -> tuple[Container, str]:
        # Started prewarm: the code arrives in /_/init, as on a prewarm cold start.
        container = docker_client.containers.run(
            image,
            detach=True,
            environment={"KAPAL_PREWARM": "1", **env},
            labels={"kapal.test": "runtime-nodejs"},
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            tmpfs={"/tmp": "size=16m", "/opt/kapal/function": owned, "/opt/kapal/deps": owned},
            mem_limit="128m",
        )
        started.append(container)
        container.reload()
        ip = container.attrs["NetworkSettings"]["IPAddress"]
        return container, ip

    yield start
    for container in started:
        container.remove(force=True)


async def wait_health(http: aiohttp.ClientSession, ip: str) -> dict[str, Any]:
    end = time.monotonic() + 30
    while True:
        try:
            async with http.get(f"http://{ip}:8080/_/health") as r:
                if r.status != 503:
                    body: dict[str, Any] = await r.json()
                    return body
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < end, "the runtime did not come up"
        await asyncio.sleep(0.05)


async def until_in_flight(http: aiohttp.ClientSession, ip: str, count: int) -> None:
    end = time.monotonic() + 30
    while (await wait_health(http, ip))["in_flight"] != count:
        assert time.monotonic() < end, f"in_flight never reached {count}"
        await asyncio.sleep(0.05)


def init_body(code: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "function": "held",
        "version": 7,
        "handler": "index.handler",
        "code": base64.b64encode(code).decode(),
        **extra,
    }


def evil_tar(kind: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("index.js")
        info.size = 0
        tar.addfile(info, io.BytesIO(b""))
        if kind == "dotdot":
            info = tarfile.TarInfo("../escape.js")
        elif kind == "absolute":
            info = tarfile.TarInfo("/etc/escape.js")
        elif kind == "symlink":
            info = tarfile.TarInfo("passwd")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "through":
            link = tarfile.TarInfo("up")
            link.type, link.linkname = tarfile.SYMTYPE, "."
            tar.addfile(link)
            info = tarfile.TarInfo("up/x.js")
        else:
            info = tarfile.TarInfo("dev")
            info.type = tarfile.CHRTYPE
        if info.isreg():
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        else:
            tar.addfile(info)
    return buf.getvalue()


async def test_a_prewarmed_runtime_refuses_unsafe_archives_then_initializes_once(
    start_runtime: Start, http: aiohttp.ClientSession
) -> None:
    _, ip = start_runtime()
    base = f"http://{ip}:8080"
    assert await wait_health(http, ip) == {"status": "prewarm", "in_flight": 0}
    async with http.get(f"{base}/x") as r:
        assert (r.status, (await r.json())["error"]["code"]) == (503, "not_initialized")
    for kind, says in [
        ("dotdot", "escapes the target directory"),
        ("absolute", "is an absolute path"),
        ("symlink", "links outside the target directory"),
        ("through", "goes through a link"),
        ("device", "is not a regular file, directory or link"),
    ]:
        async with http.post(f"{base}/_/init", json=init_body(evil_tar(kind))) as r:
            error = (await r.json())["error"]
            assert (r.status, error["code"]) == (400, "invalid_init"), kind
            assert says in error["message"], (kind, error)
    async with http.post(f"{base}/_/init", json={"function": "f", "version": -1}) as r:
        assert r.status == 400
        assert "version" in (await r.json())["error"]["message"]
    assert await wait_health(http, ip) == {"status": "prewarm", "in_flight": 0}

    # GNU long names, as tar(1) writes them (the gateway's own archives use pax): the long
    # one first, so that misreading it would garble every member after it.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        members = {
            f"lib/{LONG_DIR}/word.js": WORD,
            "index.js": HOLD,
            "lib/word.js": f"module.exports = require('./{LONG_DIR}/word.js');\n",
        }
        for name, text in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    code = buf.getvalue()
    async with http.post(f"{base}/_/init", json=init_body(code, concurrency=3)) as r:
        assert r.status == 200, await r.text()
        assert await r.json() == {"status": "ok", "function": "held", "version": 7, "in_flight": 0}
    async with http.post(f"{base}/_/init", json=init_body(code)) as r:
        assert (r.status, (await r.json())["error"]["code"]) == (409, "already_initialized")
    async with http.get(f"{base}/p") as r:
        assert (r.status, await r.text()) == (200, "held ok")


async def test_past_its_concurrency_the_runtime_answers_busy_at_once(
    start_runtime: Start, http: aiohttp.ClientSession
) -> None:
    _, ip = start_runtime()
    await wait_health(http, ip)
    code = tar_gz({"index.js": HOLD, "lib/word.js": WORD})
    async with http.post(f"http://{ip}:8080/_/init", json=init_body(code, concurrency=1)) as r:
        assert r.status == 200
    held = asyncio.create_task(http.get(f"http://{ip}:8080/hold?s=5"))
    await until_in_flight(http, ip, 1)
    async with http.post(f"http://{ip}:8080/more", data=b"x" * 100) as r:
        assert r.status == 503
        assert r.headers["X-Kapal-Error"] == "busy"
        assert (await r.json())["error"]["code"] == "busy"
    async with await held as r:
        assert (r.status, await r.text()) == (200, "held ok")


async def test_a_handler_that_does_not_load_is_a_500_naming_why(
    start_runtime: Start, http: aiohttp.ClientSession
) -> None:
    _, ip = start_runtime()
    await wait_health(http, ip)
    code = tar_gz({"index.js": "exports.handler = async () => {;\n"})
    async with http.post(f"http://{ip}:8080/_/init", json=init_body(code)) as r:
        error = (await r.json())["error"]
        assert (r.status, error["code"]) == (500, "handler_load_failed")
        assert error["message"].startswith("SyntaxError")
    async with http.get(f"http://{ip}:8080/") as r:
        assert (r.status, (await r.json())["error"]["code"]) == (500, "handler_load_failed")


async def test_the_log_port_long_polls_acks_and_names_bad_parameters(
    start_runtime: Start, http: aiohttp.ClientSession
) -> None:
    _, ip = start_runtime()
    await wait_health(http, ip)
    logs = f"http://{ip}:8081/_/logs"
    async with http.get(logs, params={"wait": "31"}) as r:
        assert r.status == 400
        assert "wait" in (await r.json())["error"]["message"]
    async with http.get(logs, params={"after": "-1"}) as r:
        assert r.status == 400
        assert "after" in (await r.json())["error"]["message"]
    async with http.get(logs) as r:
        first = parse_copy_rows(await r.read())
        last = int(r.headers["X-Kapal-Log-Last"])
    assert [row.seq for row in first] == list(range(1, last + 1))
    assert json.loads(first[-1].text)["event"] == "started"

    # Held until the init writes its lines.
    pulled = asyncio.create_task(http.get(logs, params={"after": str(last), "wait": "20"}))
    code = tar_gz({"index.js": HOLD, "lib/word.js": WORD})
    async with http.post(f"http://{ip}:8080/_/init", json=init_body(code)) as r:
        assert r.status == 200
    async with await pulled as r:
        rows = parse_copy_rows(await r.read())
        assert r.headers["X-Kapal-Log-Function"] == "held"
        assert r.headers["X-Kapal-Log-Version"] == "7"
    assert rows[0].seq == last + 1
    assert "initialized" in {json.loads(row.text)["event"] for row in rows}
    async with http.get(f"http://{ip}:8080/q", headers={"X-Kapal-Request-Id": "rq1"}) as r:
        assert r.status == 200
    async with http.get(logs, params={"after": str(rows[-1].seq), "wait": "20"}) as r:
        tagged = [(row.stream, row.request_id, row.text) for row in parse_copy_rows(await r.read())]
    assert ("stdout", "rq1", "holding /q") in tagged


async def test_sigterm_drains_in_flight_work_and_unpulled_lines_reach_docker_logs(
    start_runtime: Start, http: aiohttp.ClientSession
) -> None:
    container, ip = start_runtime(KAPAL_LOG_DRAIN_S="0")
    await wait_health(http, ip)
    code = tar_gz({"index.js": HOLD, "lib/word.js": WORD})
    async with http.post(f"http://{ip}:8080/_/init", json=init_body(code)) as r:
        assert r.status == 200
    held = asyncio.create_task(http.get(f"http://{ip}:8080/hold?s=1"))
    await until_in_flight(http, ip, 1)
    container.kill(signal="SIGTERM")
    async with await held as r:
        assert (r.status, await r.text()) == (200, "held ok")
    assert container.wait(timeout=30)["StatusCode"] == 0
    output = container.logs().decode()
    assert '"event":"logs_not_pulled"' in output
    assert '"event":"stopped"' in output and "holding /hold" in output


# An ES module in a "type": "module" package (a .js file that require() refuses), importing
# a dependency from the deps archive and a module at a path longer than ustar's 100 bytes.
ESM_V1 = """\
import pad from 'padder';
import { deep } from './LONG/deep.js';
export const handler = async (event, context) => ({
  statusCode: 200,
  headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify({
    padded: pad(event.queryStringParameters.w),
    deep,
    method: event.httpMethod,
    path: event.path,
    multi: event.multiValueQueryStringParameters.w,
    header: event.multiValueHeaders['x-h'],
    requestId: context.awsRequestId,
  }),
});
"""
LONG = "a-rather-long-folder-name/" * 5


async def test_an_es_module_with_deps_long_paths_and_the_rest_api_v1_event(
    start_runtime: Start, http: aiohttp.ClientSession
) -> None:
    _, ip = start_runtime()
    await wait_health(http, ip)
    code = tar_gz(
        {
            "index.js": ESM_V1.replace("LONG/", LONG),
            "package.json": '{"type": "module"}',
            f"{LONG}deep.js": "export const deep = 'found';\n",
        }
    )
    deps = tar_gz(
        {
            "node_modules/padder/package.json": '{"name": "padder", "main": "main.js"}',
            "node_modules/padder/main.js": "module.exports = (s) => `[${s}]`;\n",
        }
    )
    body = init_body(code, style="lambda-v1", deps=base64.b64encode(deps).decode())
    async with http.post(f"http://{ip}:8080/_/init", json=body) as r:
        assert r.status == 200, await r.text()
    headers = [("X-H", "1"), ("X-H", "2"), ("X-Kapal-Request-Id", "r-v1")]
    async with http.get(f"http://{ip}:8080/p/q?w=x&w=y", headers=headers) as r:
        assert r.status == 200, await r.text()
        assert await r.json() == {
            "padded": "[y]",
            "deep": "found",
            "method": "GET",
            "path": "/p/q",
            "multi": ["x", "y"],
            "header": ["1", "2"],
            "requestId": "r-v1",
        }


LOUD = """\
exports.handler = async () => {
  console.log('x'.repeat(500));
  for (let i = 0; i < 50; i++) console.log('line ' + i + ' ' + 'y'.repeat(40));
  return 'loud';
};
"""


async def test_a_long_line_is_cut_and_an_invocation_past_its_budget_gets_one_marker(
    start_runtime: Start, http: aiohttp.ClientSession
) -> None:
    _, ip = start_runtime(KAPAL_LOG_LINE_BYTES="300", KAPAL_LOG_INVOCATION_BYTES="1000")
    await wait_health(http, ip)
    async with http.post(
        f"http://{ip}:8080/_/init", json=init_body(tar_gz({"index.js": LOUD}))
    ) as r:
        assert r.status == 200
    async with http.get(f"http://{ip}:8080/", headers={"X-Kapal-Request-Id": "loud1"}) as r:
        assert (r.status, await r.text()) == (200, "loud")
    async with http.get(f"http://{ip}:8081/_/logs") as r:
        rows = [row for row in parse_copy_rows(await r.read()) if row.request_id == "loud1"]
        dropped = int(r.headers["X-Kapal-Log-Dropped"])
    texts = [(row.stream, row.text) for row in rows]
    assert texts[0] == ("stdout", "x" * 300 + "… [truncated 200 bytes]")
    marker = ("runtime", "output of this invocation truncated at 1000 bytes")
    assert texts.count(marker) == 1 and texts[-1] == marker
    kept = [t for s, t in texts if s == "stdout"]
    assert kept[1:] == [f"line {i} " + "y" * 40 for i in range(len(kept) - 1)]
    # Every line not kept is counted: the 51 written, less those kept.
    assert dropped == 51 - len(kept)
