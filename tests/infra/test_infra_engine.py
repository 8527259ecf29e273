"""Deciding how to get a Docker engine, with the engine faked."""

from pathlib import Path
from typing import Any, cast

import docker
import pytest

from infra import engine as engine_module
from infra import host
from infra.engine import EngineAction, ensure_engine, plan_engine, stop_engine
from infra.errors import InfraError


class FakeClient:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def facts(**overrides: Any) -> dict[str, Any]:
    base = {"answering": False, "docker_host": "", "root": True, "debian": True}
    return {**base, "dockerd_installed": True, **overrides}


def test_an_engine_that_answers_is_used_whatever_else_holds() -> None:
    plan = plan_engine(**facts(answering=True, root=False, docker_host="tcp://x:2375"))
    assert plan is EngineAction.USE_RUNNING


def test_root_starts_an_installed_dockerd_or_installs_it_on_debian() -> None:
    assert plan_engine(**facts()) is EngineAction.START
    assert plan_engine(**facts(dockerd_installed=False)) is EngineAction.INSTALL_AND_START
    assert plan_engine(**facts(docker_host="unix:///var/run/docker.sock")) is EngineAction.START


def test_no_engine_and_no_way_to_start_one_says_what_to_do() -> None:
    with pytest.raises(InfraError, match="needs root"):
        plan_engine(**facts(root=False))
    with pytest.raises(InfraError, match="install Docker"):
        plan_engine(**facts(debian=False, dockerd_installed=False))
    with pytest.raises(InfraError, match="DOCKER_HOST=tcp://remote:2375"):
        plan_engine(**facts(docker_host="tcp://remote:2375"))


def test_ensure_engine_uses_the_engine_that_answers(tmp_path: Path) -> None:
    client = FakeClient()
    engine = ensure_engine(tmp_path, connect=lambda: cast(docker.DockerClient, client))
    assert engine.client is cast(docker.DockerClient, client)
    assert not engine.started_by_us
    stop_engine(engine, log=lambda _: None)
    assert client.closed


def test_ensure_engine_fails_clearly_when_nothing_answers_and_not_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(host, "is_root", lambda: False)
    with pytest.raises(InfraError, match="starting one needs root"):
        ensure_engine(tmp_path, connect=lambda: None, log=lambda _: None)


def test_a_dockerd_recorded_by_an_earlier_run_is_waited_for_not_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dockerd.pid").write_text("4242\n")
    monkeypatch.setattr(engine_module, "pid_alive", lambda pid: pid == 4242)
    monkeypatch.setattr(engine_module, "process_name", lambda pid: "dockerd")
    answers = iter([None, None, FakeClient()])
    lines: list[str] = []
    engine = ensure_engine(
        tmp_path, connect=lambda: cast(docker.DockerClient, next(answers)), log=lines.append
    )
    assert not engine.started_by_us  # an earlier run's dockerd is left to `down`
    assert "pid 4242" in lines[0]
