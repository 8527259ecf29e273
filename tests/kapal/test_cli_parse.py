"""The command line, parsed: usage errors, help, --version, options that reach the spec."""

import os
import sys
from pathlib import Path

import pytest

from kapal import cli
from kapal.spec import load_spec


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["invoke"],
        ["deploy", ".", "--memory", "lots"],
        ["deploy", ".", "--env", "NOEQUALS"],
        ["invoke", "hello", "-H", "no colon"],
        ["jobs", "create", "fn"],
        ["webhooks", "create", "fn", "--verify", "gitlab"],
        ["rollback", "fn", "--to", "two"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "usage: kapal" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["invoke", "--help"]) == 0
    assert "-d DATA" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"kapal {cli.version()}\n"


def test_global_options_go_before_or_after_the_command() -> None:
    args = cli.build_parser().parse_args(["--url", "http://a", "ls", "--api-key", "k", "--json"])
    assert (args.url, args.api_key, args.json) == ("http://a", "k", True)
    args = cli.build_parser().parse_args(["--json", "jobs", "ls", "--url", "http://b"])
    assert (args.url, args.api_key, args.json) == ("http://b", None, True)


def test_up_hands_over_to_infra(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(os, "execv", lambda path, args: calls.append((path, args)))

    assert cli.main(["up"]) == 0
    assert calls == [(sys.executable, [sys.executable, "-m", "infra", "up"])]


def test_deploy_options_reach_the_spec(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text("def handle(event, context):\n    return 1\n")
    argv = ["deploy", str(tmp_path), "--public", "--rps", "3", "--secret", "a"]
    args = cli.build_parser().parse_args([*argv, "--secret", "b", "--no-outbound", "--min", "1"])
    spec = load_spec(tmp_path, cli.overrides(args))
    assert spec["public"] is True
    assert spec["limits"] == {"rps": 3.0}
    assert spec["secrets"] == ["a", "b"]
    assert spec["network"] == {"outbound": False}
    assert spec["scaling"] == {"min": 1}
    plain = load_spec(tmp_path, cli.overrides(cli.build_parser().parse_args(argv[:2])))
    assert "public" not in plain and "secrets" not in plain
