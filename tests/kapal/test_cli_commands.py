import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from kapal_fakes import FakeGateway

from kapal import cli


async def test_deploy_then_redeploy(
    gateway: FakeGateway, hello_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli.run(["--url", gateway.url, "deploy", str(hello_folder)]) == 0
    first = capsys.readouterr()
    assert await cli.run(["deploy", str(hello_folder), "--url", gateway.url]) == 0
    second = capsys.readouterr()

    lines = first.out.splitlines()
    assert lines[0].startswith("deployed hello-world version 1 (image kapal-fn/hello-world:1) in ")
    assert lines[1] == f"curl {gateway.url}/fn/hello-world"
    assert "deploying hello-world" in first.err
    assert second.out.startswith("updated hello-world version 2 (image kapal-fn/hello-world:2)")


async def test_deploy_options_reach_the_spec(gateway: FakeGateway, hello_folder: Path) -> None:
    (hello_folder / "kapal.toml").write_text('name = "greeter"\n[env]\nA = "file"\nB = "file"\n')

    code = await cli.run(
        ["--url", gateway.url, "deploy", str(hello_folder), "--env", "B=cli", "--env", "C=x=y"]
    )

    assert code == 0
    assert gateway.functions["greeter"]["env"] == {"A": "file", "B": "cli", "C": "x=y"}


async def test_deploy_limits_and_scaling_options(gateway: FakeGateway, hello_folder: Path) -> None:
    argv = ["--url", gateway.url, "deploy", str(hello_folder), "--name", "fn"]
    argv += ["--timeout", "5", "--memory", "256", "--cpus", "0.5"]
    argv += ["--min", "1", "--max", "3", "--concurrency", "4", "--idle-timeout", "60"]

    assert await cli.run(argv) == 0

    function = gateway.functions["fn"]
    assert function["limits"] == {"timeout_s": 5.0, "memory_mb": 256, "cpus": 0.5}
    assert function["scaling"] == {"min": 1, "max": 3, "concurrency": 4, "idle_timeout_s": 60.0}


async def test_deploy_json(
    gateway: FakeGateway, hello_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli.run(["--url", gateway.url, "--json", "deploy", str(hello_folder)]) == 0

    out = capsys.readouterr()
    assert json.loads(out.out)["image"] == "kapal-fn/hello-world:1"
    assert out.err == ""


async def test_a_bad_kapal_toml_is_an_error_not_a_traceback(
    gateway: FakeGateway, hello_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (hello_folder / "kapal.toml").write_text("[limits]\nmemory = 1\n")

    assert await cli.run(["--url", gateway.url, "deploy", str(hello_folder)]) == 1

    err = capsys.readouterr().err
    assert err.startswith("error: ") and "limits.memory" in err
    assert "Traceback" not in err
    assert gateway.calls == []


async def test_ls_get_rm(
    gateway: FakeGateway, hello_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await cli.run(["--url", gateway.url, "deploy", str(hello_folder), "--name", "alpha"])
    await cli.run(["--url", gateway.url, "deploy", str(hello_folder), "--name", "beta-function"])
    await cli.run(["--url", gateway.url, "deploy", str(hello_folder), "--name", "alpha"])
    capsys.readouterr()

    assert await cli.run(["--url", gateway.url, "ls"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "VERSION", "INSTANCES", "INVOCATIONS", "UPDATED"]
    assert table[1].split()[:4] == ["alpha", "2", "0", "0"]
    assert table[2].split()[:4] == ["beta-function", "1", "0", "0"]
    assert table[1].index("2") == table[0].index("VERSION")

    assert await cli.run(["--url", gateway.url, "ls", "--json"]) == 0
    assert [fn["name"] for fn in json.loads(capsys.readouterr().out)] == ["alpha", "beta-function"]

    assert await cli.run(["--url", gateway.url, "get", "alpha"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2

    assert await cli.run(["--url", gateway.url, "rm", "alpha"]) == 0
    assert capsys.readouterr().out == "removed alpha\n"
    assert list(gateway.functions) == ["beta-function"]


async def test_a_404_is_exit_1_with_the_gateway_message(
    gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli.run(["--url", gateway.url, "get", "ghost"]) == 1

    out = capsys.readouterr()
    assert out.err == "error: function 'ghost' not found\n"
    assert out.out == ""


def test_connection_refused_is_a_clear_message(
    dead_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--url", dead_url, "ls"]) == 1

    err = capsys.readouterr().err
    assert err.startswith(f"error: Kapal is not running at {dead_url} (connection refused)")
    assert "make up" in err and "Traceback" not in err


def test_kapal_url_environment_variable(
    dead_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAPAL_URL", dead_url)

    assert cli.main(["ls"]) == 1
    assert dead_url in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["invoke"],
        ["deploy", ".", "--memory", "lots"],
        ["deploy", ".", "--env", "NOEQUALS"],
        ["invoke", "hello", "-H", "no colon"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "usage: kapal" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["invoke", "--help"]) == 0
    assert "-d DATA" in capsys.readouterr().out


async def test_main_runs_its_own_loop(gateway: FakeGateway, hello_folder: Path) -> None:
    code = await asyncio.to_thread(cli.main, ["--url", gateway.url, "deploy", str(hello_folder)])

    assert code == 0
    assert "hello-world" in gateway.functions


def test_up_hands_over_to_infra(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(os, "execv", lambda path, args: calls.append((path, args)))

    assert cli.main(["up"]) == 0
    assert calls == [(sys.executable, [sys.executable, "-m", "infra", "up"])]


def test_security_options_reach_the_spec(hello_folder: Path) -> None:
    from kapal.spec import load_spec

    argv = ["deploy", str(hello_folder), "--public", "--rps", "3", "--secret", "a"]
    args = cli.build_parser().parse_args([*argv, "--secret", "b", "--no-outbound"])
    spec = load_spec(hello_folder, cli._overrides(args))
    assert spec["public"] is True
    assert spec["limits"] == {"rps": 3.0}
    assert spec["secrets"] == ["a", "b"]
    assert spec["network"] == {"outbound": False}
    plain = load_spec(hello_folder, cli._overrides(cli.build_parser().parse_args(argv[:2])))
    assert "public" not in plain and "secrets" not in plain
