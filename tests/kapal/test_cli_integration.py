"""The `kapal` CLI against a real gateway (real Docker, real Postgres), one per module.

Three functions are deployed once from a manifest and used by every test; tests run in
file order and build on what the earlier ones left (a re-deploy, a new version, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kapal import cli
from tests.support import GatewayProcess

pytestmark = pytest.mark.integration

ECHO = """
def handle(event, context):
    print("echo", context.request_id)
    if event.path.strip("/") == "fail":
        raise RuntimeError("asked to fail")
    return {
        "method": event.method,
        "path": event.path,
        "x": event.headers.get("x-custom"),
        "k": event.query.get("k"),
        "body": event.body.decode(),
    }
"""
DOUBLE = """
def handle(event, context):
    item = event.json()
    if item == "bad":
        raise ValueError("a bad item")
    return {"double": item * 2}
"""
PLAIN = """
def handle(event, context):
    return "plain " + open("/run/secrets/m-token").read()
"""

MANIFEST = """\
# Three functions, a webhook and a schedule.
functions:
  m-echo:
    folder: echo
    public: true
    async:
      max_retries: 0
    webhooks:
      - verify: none
  m-double:
    folder: double
    scaling:
      max: 2
    schedules:
      - cron: "0 0 1 1 *"
        payload: {"from": "schedule"}
  m-plain:
    folder: plain
    secrets: [m-token]
    env:
      GREETING: hi
"""


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def ndjson(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    for folder, code in (("echo", ECHO), ("double", DOUBLE), ("plain", PLAIN)):
        (root / folder).mkdir()
        (root / folder / "handler.py").write_text(code)
    (root / "kapal.yaml").write_text(MANIFEST)
    return root


@pytest.fixture
def kapal(shared_gateway: GatewayProcess, capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    async def run(*argv: str, key: str | None = None, url: str | None = None) -> Ran:
        capsys.readouterr()
        code = await cli.run(
            [
                "--url",
                url or shared_gateway.url,
                "--api-key",
                key or shared_gateway.admin_key or "",
                *argv,
            ]
        )
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)

    yield run


async def eventually(kapal: Any, *argv: str, want: str, within: float = 30.0) -> Ran:
    """Run the command until its output holds `want` (polling, never a timing assert)."""
    end = time.monotonic() + within
    while True:
        ran = await kapal(*argv)
        if ran.code == 0 and want in ran.out:
            return ran
        assert time.monotonic() < end, f"{want!r} never in the output of {argv}: {ran}"
        await asyncio.sleep(0.2)


def set_stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


async def versions(kapal: Any, name: str) -> list[int]:
    ran = await kapal("--json", "versions", name)
    assert ran.code == 0, ran
    return [v["version"] for v in ran.json()]


# -- the manifest ------------------------------------------------------------------


async def test_a_manifest_refers_to_secrets_that_must_exist(
    kapal: Any, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = await kapal("deploy", "-f", str(project / "kapal.yaml"))

    assert ran.code == 1
    assert ran.err.startswith(
        f"error: {project / 'kapal.yaml'}:19: functions.m-plain.secrets: no secret named m-token"
    )
    assert ran.err.endswith("(kapal secrets set NAME)\n") and ran.err.count("\n") == 1
    assert (await kapal("--json", "ls")).json() == []

    set_stdin(monkeypatch, "s3cret\n")
    assert (await kapal("secrets", "set", "m-token")).out == "set m-token\n"


async def test_a_manifest_with_three_functions_a_webhook_and_a_schedule_deploys(
    kapal: Any, project: Path
) -> None:
    ran = await kapal("deploy", "-f", str(project / "kapal.yaml"))

    assert ran.code == 0, ran.err
    assert ran.out.splitlines() == [
        "m-echo: created, version 1",
        "m-double: created, version 1",
        "m-plain: created, version 1",
        *[line for line in ran.out.splitlines()[3:]],
    ]
    assert ran.out.splitlines()[3].startswith("m-echo: webhook http")
    assert ran.out.splitlines()[4].startswith("m-double: schedule 0 0 1 1 * (UTC) created")
    assert len(ran.out.splitlines()) == 5
    assert "Step" in ran.err  # the build's output, streamed to stderr

    hooks = (await kapal("--json", "webhooks", "ls")).json()
    assert [(h["function"], h["verify"]) for h in hooks] == [("m-echo", "none")]
    schedules = (await kapal("--json", "schedules", "ls")).json()
    assert [(s["function"], s["cron"], s["payload"]) for s in schedules] == [
        ("m-double", "0 0 1 1 *", {"from": "schedule"})
    ]
    plain = await kapal("invoke", "m-plain")
    assert (plain.code, plain.out) == (0, "plain s3cret\n")


async def test_deploying_the_same_manifest_again_changes_nothing(kapal: Any, project: Path) -> None:
    hooks = (await kapal("--json", "webhooks", "ls")).json()
    schedules = (await kapal("--json", "schedules", "ls")).json()

    ran = await kapal("--json", "deploy", "-f", str(project / "kapal.yaml"))

    assert ran.code == 0, ran.err
    events = ran.ndjson()
    assert {e["deploying"] for e in events if e.get("event") == "unchanged"} == {
        "m-echo",
        "m-double",
        "m-plain",
    }
    assert not [e for e in events if e.get("event") == "build"]
    applied = events[-1]
    assert applied["event"] == "applied"
    assert [f["version_created"] for f in applied["functions"]] == [False, False, False]
    assert applied["webhooks"]["created"] == applied["webhooks"]["removed"] == []
    assert applied["schedules"]["created"] == applied["schedules"]["removed"] == []
    for name in ("m-echo", "m-double", "m-plain"):
        assert await versions(kapal, name) == [1]
    assert (await kapal("--json", "webhooks", "ls")).json() == hooks
    assert [s["id"] for s in (await kapal("--json", "schedules", "ls")).json()] == [
        s["id"] for s in schedules
    ]


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "message"),
    [
        (
            "      max: 2\n",
            "      max: -2\n",
            13,
            "functions.m-double.scaling.max",
            "Input should be greater than or equal to",
        ),
        (
            "      - verify: none\n",
            "      - verify: gitlab\n",
            9,
            "functions.m-echo.webhooks.0.verify",
            "Input should be",
        ),
        (
            '      - cron: "0 0 1 1 *"\n',
            '      - cron: "0 0 1 *"\n',
            15,
            "functions.m-double.schedules.0.cron",
            "five cron fields",
        ),
        ("    public: true\n", "    pubic: true\n", 5, "functions.m-echo.pubic", "Extra inputs"),
        (
            "    folder: plain\n",
            "    folder: nowhere\n",
            18,
            "functions.m-plain.folder",
            "is not a folder",
        ),
        (
            "    folder: double\n",
            "    folder: double\n    handler: missing.handle\n",
            12,
            "functions.m-double.handler",
            "no file in",
        ),
        ("  m-plain:\n", "  M_Plain:\n", 17, "functions.M_Plain", "must be a lowercase DNS label"),
    ],
)
async def test_a_manifest_with_one_bad_field_changes_nothing(
    kapal: Any,
    project: Path,
    old: str,
    new: str,
    line: int,
    field: str,
    message: str,
) -> None:
    # A code change too: a manifest that were applied in part would make a version.
    bad = project / "bad"
    shutil.copytree(project, bad, ignore=shutil.ignore_patterns("bad"))
    (bad / "echo" / "handler.py").write_text(ECHO + "\n# changed\n")
    text = MANIFEST.replace(old, new)
    assert text != MANIFEST
    (bad / "kapal.yaml").write_text(text)
    try:
        ran = await kapal("deploy", "-f", str(bad / "kapal.yaml"))
    finally:
        shutil.rmtree(bad)

    assert ran.code == 1
    assert ran.out == ""
    assert ran.err.startswith(f"error: {bad / 'kapal.yaml'}:{line}: {field}: "), ran.err
    assert message in ran.err and ran.err.count("\n") == 1
    assert await versions(kapal, "m-echo") == [1]
    assert len((await kapal("--json", "webhooks", "ls")).json()) == 1
    assert len((await kapal("--json", "schedules", "ls")).json()) == 1


async def test_a_manifest_that_is_not_yaml_names_the_line(kapal: Any, tmp_path: Path) -> None:
    (tmp_path / "kapal.yaml").write_text("functions:\n  a:\n    folder: [x\n")

    ran = await kapal("deploy", "-f", str(tmp_path / "kapal.yaml"))

    assert ran.code == 1
    assert ran.err.startswith(f"error: {tmp_path / 'kapal.yaml'}:4: not valid YAML")


async def test_a_changed_function_alone_gets_a_version_and_a_dropped_schedule_goes(
    kapal: Any, project: Path
) -> None:
    (project / "plain" / "handler.py").write_text(PLAIN.replace("plain ", "plain v2 "))
    text = MANIFEST.replace(
        '      - cron: "0 0 1 1 *"\n        payload: {"from": "schedule"}\n', ""
    )
    text = text.replace("    schedules:\n", "")
    (project / "kapal.yaml").write_text(text)

    ran = await kapal("deploy", "-f", str(project / "kapal.yaml"))

    assert ran.code == 0, ran.err
    assert ran.out.splitlines() == [
        "m-echo: unchanged, version 1",
        "m-double: unchanged, version 1",
        "m-plain: updated, version 2",
        "m-double: schedule 0 0 1 1 * removed",
    ]
    assert await versions(kapal, "m-plain") == [1, 2]
    assert await versions(kapal, "m-echo") == [1]
    assert (await kapal("--json", "schedules", "ls")).json() == []
    assert (await kapal("invoke", "m-plain")).out == "plain v2 s3cret\n"


# -- functions ---------------------------------------------------------------------


async def test_ls_and_get(kapal: Any) -> None:
    ran = await kapal("ls")

    assert ran.code == 0 and "\x1b" not in ran.out and ran.out.endswith("\n")
    lines = ran.out.splitlines()
    header, rows = lines[0].split(), [line.split() for line in lines[2:]]
    assert header == ["NAME", "VERSION", "INSTANCES", "INVOCATIONS", "PUBLIC", "UPDATED"]
    assert sorted((r[0], r[1], r[4]) for r in rows) == [
        ("m-double", "1", "no"),
        ("m-echo", "1", "yes"),
        ("m-plain", "2", "no"),
    ]
    assert sorted(f["name"] for f in (await kapal("ls", "--json")).json()) == [
        "m-double",
        "m-echo",
        "m-plain",
    ]
    got = await kapal("get", "m-plain")
    assert got.code == 0 and "version" in got.out and "m-plain" in got.out
    assert (await kapal("get", "m-plain", "--json")).json()["version"] == 2


async def test_versions_and_rollback(kapal: Any) -> None:
    table = await kapal("versions", "m-plain")
    assert [line.split()[:2] for line in table.out.splitlines()[2:]] == [["1", "no"], ["2", "yes"]]

    ran = await kapal("rollback", "m-plain")
    assert (ran.code, ran.out) == (0, "m-plain now serves version 1\n")
    assert (await kapal("invoke", "m-plain")).out == "plain s3cret\n"
    assert (await kapal("--json", "rollback", "m-plain", "--to", "2")).json()["version"] == 2

    missing = await kapal("rollback", "m-plain", "--to", "9")
    assert missing.code == 1 and missing.err.startswith("error: ") and "9" in missing.err
    first = await kapal("rollback", "m-echo")
    assert first.code == 1 and first.err.count("\n") == 1


async def test_deploy_a_folder_with_wait(kapal: Any, tmp_path: Path) -> None:
    folder = tmp_path / "solo"
    folder.mkdir()
    (folder / "handler.py").write_text("def handle(event, context):\n    return 'solo'\n")

    ran = await kapal("deploy", str(folder), "--min", "1", "--wait")

    assert ran.code == 0, ran.err
    assert ran.out.startswith("deployed solo version 1 (image ")
    assert "Step" in ran.err and "1 ready" in ran.err
    fn = (await kapal("--json", "get", "solo")).json()
    assert [i["state"] for i in fn["instances"]] == ["ready"]

    again = await kapal("--json", "deploy", str(folder), "--min", "1")
    events = again.ndjson()
    assert events[0]["event"] == "started" and events[0]["version"] == 2
    assert events[-1]["event"] == "deployed" and events[-1]["function"]["version"] == 2
    assert (await kapal("rm", "solo")).out == "removed solo\n"


async def test_deploy_errors(kapal: Any, tmp_path: Path) -> None:
    bad = await kapal("deploy", str(tmp_path / "nope"))
    assert bad.code == 1 and bad.err.startswith("error: ") and "not a folder" in bad.err

    (tmp_path / "handler.py").write_text("x = 1\n")
    (tmp_path / "kapal.toml").write_text("[limits]\nmemory = 1\n")
    spec = await kapal("deploy", str(tmp_path), "--name", "x")
    assert spec.code == 1 and "limits.memory" in spec.err and "Traceback" not in spec.err


# -- invocations -------------------------------------------------------------------


async def test_invoke_passes_method_headers_query_and_a_file_body(
    kapal: Any, tmp_path: Path
) -> None:
    (tmp_path / "body.txt").write_text("from a file")

    ran = await kapal(
        "invoke",
        "m-echo",
        "-X",
        "PUT",
        "-p",
        "/a/b",
        "-H",
        "X-Custom: yes",
        "-q",
        "k=v",
        "-d",
        f"@{tmp_path / 'body.txt'}",
    )

    assert ran.code == 0, ran.err
    assert ran.out.endswith("}\n")
    assert json.loads(ran.out) == {
        "method": "PUT",
        "path": "/a/b",
        "x": "yes",
        "k": "v",
        "body": "from a file",
    }
    as_json = (await kapal("--json", "invoke", "m-echo", "-d", "x")).json()
    assert as_json["status"] == 200 and json.loads(as_json["body"])["body"] == "x"
    assert as_json["headers"]["X-Kapal-Request-Id"]


async def test_invoke_errors(kapal: Any, tmp_path: Path) -> None:
    failed = await kapal("invoke", "m-echo", "-p", "fail")
    assert failed.code == 1
    assert failed.err.startswith("error: RuntimeError: asked to fail (HTTP 500)")

    ghost = await kapal("invoke", "ghost")
    assert (ghost.code, ghost.err) == (1, "error: function ghost not found (HTTP 404)\n")
    missing = await kapal("invoke", "m-echo", "-d", f"@{tmp_path}/nope")
    assert missing.code == 1 and missing.err.startswith("error: cannot read ")


async def test_invoke_async_and_wait_prints_the_result(kapal: Any) -> None:
    queued = await kapal("invoke", "m-echo", "--async", "-d", "later")
    assert queued.code == 0 and len(queued.out.strip()) == 36

    ran = await kapal("invoke", "m-echo", "--async", "--wait", "-d", "later")
    assert ran.code == 0, ran.err
    assert json.loads(ran.out)["body"] == "later" and ran.out.endswith("\n")


async def test_a_dead_letter_is_listed_and_retried(kapal: Any) -> None:
    ran = await kapal("invoke", "m-echo", "--async", "--wait", "-p", "fail")
    assert ran.code == 1 and " dead after 1 attempt(s)" in ran.err

    listed = await kapal("--json", "dead", "--function", "m-echo")
    dead = listed.json()
    assert [d["status"] for d in dead] == ["dead"]
    table = await kapal("dead")
    assert dead[0]["id"] in table.out

    retried = await kapal("dead", "retry", dead[0]["id"])
    assert (retried.code, retried.out) == (0, f"retrying {dead[0]['id']}\n")
    unknown = await kapal("dead", "retry", "00000000-0000-0000-0000-000000000000")
    assert unknown.code == 1 and unknown.err.startswith("error: ")


async def test_logs_and_invocations(kapal: Any) -> None:
    ran = await kapal("--json", "invoke", "m-echo", "-d", "logged")
    rid = ran.json()["headers"]["X-Kapal-Request-Id"]

    lines = await eventually(kapal, "logs", "m-echo", "--request", rid, "--since", "10m", want=rid)
    assert f"echo {rid}" in lines.out
    as_json = await kapal("--json", "logs", "m-echo", "--request", rid)
    assert any(line["line"] == f"echo {rid}" for line in as_json.ndjson())

    records = await eventually(kapal, "invocations", "m-echo", want=rid)
    assert "STARTED" in records.out
    one = await kapal("--json", "invocations", "m-echo", rid)
    assert one.code == 0 and one.json()["record"]["id"] == rid

    ghost = await kapal("logs", "ghost")
    assert ghost.code == 1 and "ghost" in ghost.err


async def until_printed(
    shared_gateway: GatewayProcess,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    want: str,
    meanwhile: Any = None,
    within: float = 30.0,
) -> str:
    """Run a command that does not end by itself until its output holds `want`."""
    capsys.readouterr()
    auth = ["--url", shared_gateway.url, "--api-key", shared_gateway.admin_key or ""]
    task = asyncio.create_task(cli.run([*auth, *argv]))
    seen = ""
    end = time.monotonic() + within
    try:
        while want not in seen:
            assert not task.done(), f"{argv} ended: {task.result()}, {seen!r}"
            assert time.monotonic() < end, f"{want!r} never printed by {argv}: {seen!r}"
            if meanwhile is not None:
                await meanwhile()
            await asyncio.sleep(0.2)
            seen += capsys.readouterr().out
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return seen


async def test_logs_follow_prints_new_lines(
    shared_gateway: GatewayProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = "followed-" + str(time.time_ns())

    async def call() -> None:
        await cli.run(
            [
                "--url",
                shared_gateway.url,
                "--api-key",
                shared_gateway.admin_key or "",
                "invoke",
                "m-echo",
                "-p",
                marker,
            ]
        )

    seen = await until_printed(
        shared_gateway, capsys, ["logs", "m-echo", "-f", "--since", "1s"], "echo ", call
    )
    assert "stdout" in seen


async def test_top_without_once_keeps_printing(
    shared_gateway: GatewayProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = await until_printed(shared_gateway, capsys, ["top", "--interval", "0.1"], "m-echo")
    assert "\x1b" not in seen and "FUNCTION" in seen


# -- jobs --------------------------------------------------------------------------


async def test_a_job_with_wait_shows_the_counts(kapal: Any, tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text('1\n2\n3\n"bad"\n')

    ran = await kapal(
        "jobs", "create", "m-double", "--items", str(items), "--retries", "0", "--wait"
    )

    assert ran.code == 1  # one item failed
    counts = {line.split()[0]: line.split()[1] for line in ran.out.splitlines()[2:] if line.strip()}
    assert counts["succeeded"] == "3"
    assert int(counts["dead"]) + int(counts["failed"]) == 1

    job = (await kapal("--json", "jobs", "ls", "--function", "m-double")).json()[0]
    assert (job["total"], job["state"]) == (4, "completed")
    got = await kapal("jobs", "get", job["id"])
    assert job["id"] in got.out and "completed" in got.out
    results = (await kapal("--json", "jobs", "results", job["id"])).ndjson()
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert [r.get("result") for r in results[:3]] == [{"double": 2}, {"double": 4}, {"double": 6}]
    plain = await kapal("jobs", "results", job["id"])
    assert plain.out.splitlines()[0].split("\t")[:2] == ["0", "succeeded"]


async def test_jobs_create_cancel_and_errors(kapal: Any, tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text("".join(f"{n}\n" for n in range(50)))

    made = await kapal("--json", "jobs", "create", "m-double", "--items", str(items))
    assert made.code == 0 and made.json()["total"] == 50
    cancelled = await kapal("jobs", "cancel", made.json()["id"])
    assert cancelled.code == 0

    ghost = await kapal("jobs", "create", "ghost", "--items", str(items))
    assert ghost.code == 1 and "ghost" in ghost.err
    nofile = await kapal("jobs", "create", "m-double", "--items", str(tmp_path / "none"))
    assert nofile.code == 1 and nofile.err.startswith("error: cannot read ")
    unknown = await kapal("jobs", "get", "not-a-job")
    assert unknown.code == 1 and unknown.err.startswith("error: job not-a-job not found")


# -- webhooks, schedules, keys, secrets --------------------------------------------


async def test_webhooks(kapal: Any) -> None:
    made = await kapal("--json", "webhooks", "create", "m-echo", "--verify", "hmac-sha256")
    hook = made.json()
    assert hook["secret"] and hook["url"].endswith(hook["id"])

    assert hook["id"] in (await kapal("webhooks", "ls")).out
    assert (await kapal("--json", "webhooks", "get", hook["id"])).json().get("secret") is None
    rotated = (await kapal("--json", "webhooks", "rotate", hook["id"])).json()
    assert rotated["secret"] != hook["secret"]
    assert (await kapal("webhooks", "rm", hook["id"])).out == f"removed {hook['id']}\n"
    gone = await kapal("webhooks", "get", hook["id"])
    assert gone.code == 1 and gone.err.startswith("error: ")


async def test_schedules(kapal: Any) -> None:
    made = await kapal(
        "--json", "schedules", "create", "m-double", "--cron", "@yearly", "--payload", "7"
    )
    sched = made.json()
    assert (sched["cron"], sched["payload"]) == ("@yearly", 7)
    assert sched["id"] in (await kapal("schedules", "ls")).out
    assert "@yearly" in (await kapal("schedules", "get", sched["id"])).out
    assert (await kapal("schedules", "rm", sched["id"])).code == 0

    bad = await kapal("schedules", "create", "m-double", "--cron", "nope")
    assert bad.code == 1 and bad.err.startswith("error: ")
    bad_json = await kapal("schedules", "create", "m-double", "--cron", "@daily", "--payload", "{")
    assert bad_json.code == 1 and "--payload is not JSON" in bad_json.err


async def test_keys_and_secrets(kapal: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    made = (await kapal("--json", "keys", "create", "ci", "--scope", "invoke")).json()
    assert made["key"].startswith("kpl_")
    assert "ci" in (await kapal("keys", "ls")).out
    # An invoke key may call functions, not manage them.
    assert (await kapal("invoke", "m-plain", key=made["key"])).code == 0
    forbidden = await kapal("ls", key=made["key"])
    assert forbidden.code == 1 and forbidden.err.startswith("error: ")
    assert (await kapal("keys", "rm", made["id"])).out == f"revoked {made['id']}\n"

    set_stdin(monkeypatch, "v")
    assert (await kapal("secrets", "set", "other")).code == 0
    assert "other" in (await kapal("secrets", "ls")).out
    assert (await kapal("--json", "secrets", "rm", "other")).json() == {"removed": "other"}


# -- top ---------------------------------------------------------------------------


async def test_top_once(kapal: Any) -> None:
    rows = (await kapal("--json", "top")).json()
    echo = next(r for r in rows if r["function"] == "m-echo")
    assert echo["count"] >= 1 and echo["errors"] >= 1
    assert set(echo["instances"]) >= {"ready", "busy", "starting", "paused", "draining"}

    ran = await kapal("top", "--once")
    assert ran.code == 0 and "\x1b" not in ran.out
    assert "FUNCTION" in ran.out and "P99 MS" in ran.out and "m-echo" in ran.out


# -- errors of any command ---------------------------------------------------------


async def test_errors_are_one_line_and_not_zero(kapal: Any, tmp_path: Path) -> None:
    ghost = await kapal("get", "ghost")
    assert (ghost.code, ghost.out, ghost.err) == (1, "", "error: function ghost not found\n")

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    down = await kapal("ls", url=dead_url)
    assert down.code == 1 and down.err.count("\n") == 1
    assert down.err.startswith(f"error: Kapal is not running at {dead_url} (connection refused)")

    nokey = await kapal("ls", key="kpl_nope_nope")
    assert nokey.code == 1 and nokey.err.count("\n") == 1 and "KAPAL_API_KEY" in nokey.err
    assert (await kapal("rm")).code == 1


# -- last: the manifest removes what it made ---------------------------------------


async def test_rm_f_removes_the_manifest(kapal: Any, project: Path) -> None:
    ran = await kapal("rm", "-f", str(project / "kapal.yaml"))

    assert ran.code == 0, ran.err
    assert "m-echo: removed" in ran.out and "m-echo: webhook" in ran.out
    assert (await kapal("--json", "ls")).json() == []
    assert (await kapal("--json", "webhooks", "ls")).json() == []
    again = await kapal("rm", "-f", str(project / "kapal.yaml"))
    assert again.code == 0 and "m-echo: not deployed" in again.out
