"""Installing what the tests need: only missing packages, nothing when all are there."""

import pytest

from infra import commands, host
from infra.errors import InfraError


def on_path(*present: str) -> object:
    return lambda cmd: f"/usr/bin/{cmd}" if cmd in present else None


def test_the_test_set_up_brings_chromium_wrk_and_a_registry() -> None:
    assert commands.TEST_TOOLS["chromium"] == "chromium"
    assert commands.TEST_TOOLS["wrk"] == "wrk"
    assert commands.TEST_TOOLS["docker-registry"] == "docker-registry"
    assert commands.TEST_TOOLS["htpasswd"] == "apache2-utils"


def test_only_the_missing_packages_are_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: list[list[str]] = []
    monkeypatch.setattr(host.shutil, "which", on_path("wrk", "docker-registry", "htpasswd"))
    monkeypatch.setattr(host, "is_root", lambda: True)
    monkeypatch.setattr(host, "is_debian", lambda: True)
    monkeypatch.setattr(host, "_apt_install", lambda pkgs, log: installed.append(pkgs))
    host.ensure_commands(commands.TEST_TOOLS, log=lambda _: None)
    assert installed == [["chromium"]]


def test_nothing_is_run_when_everything_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host.shutil, "which", on_path(*commands.TEST_TOOLS))

    def refuse(pkgs: list[str], log: object) -> None:
        raise AssertionError(f"apt-get ran for {pkgs}")

    monkeypatch.setattr(host, "_apt_install", refuse)
    monkeypatch.setattr(host, "is_root", lambda: False)  # not even asked
    assert host.missing_packages(commands.TEST_TOOLS) == []
    host.ensure_commands(commands.TEST_TOOLS, log=lambda _: None)


def test_missing_and_not_root_names_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host.shutil, "which", on_path())
    monkeypatch.setattr(host, "is_root", lambda: False)
    packages = r"\['apache2-utils', 'chromium', 'docker-registry', 'wrk'\]"
    with pytest.raises(InfraError, match=packages):
        host.ensure_commands(commands.TEST_TOOLS, log=lambda _: None)
