"""Settings derived from others: where the dependency cache lives, which keep-alive."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.services import _scheduler
from gateway.settings import Settings
from scheduler.docker_backend import DockerBackend


def test_the_dependency_cache_is_in_kapal_home_unless_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KAPAL_DEPS_CACHE_DIR", raising=False)
    monkeypatch.setenv("KAPAL_HOME", str(tmp_path / "home"))
    settings = Settings(database_url="postgresql://x/y")
    assert settings.deps_cache == tmp_path / "home" / "deps"
    assert settings.key_file() == tmp_path / "home" / "secret.key"
    monkeypatch.setenv("KAPAL_DEPS_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert Settings(database_url="postgresql://x/y").deps_cache == tmp_path / "elsewhere"


def test_kapal_keepalive_picks_the_schedulers_keep_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAPAL_KEEPALIVE", "fixed")
    settings = Settings(database_url="postgresql://x/y", prewarm_python=0)
    backend = object.__new__(DockerBackend)
    assert _scheduler(settings, backend, None, None).keepalive is None  # type: ignore[arg-type]
    monkeypatch.setenv("KAPAL_KEEPALIVE", "learned")
    settings = Settings(database_url="postgresql://x/y", prewarm_python=0)
    assert _scheduler(settings, backend, None, None).keepalive is not None  # type: ignore[arg-type]
    monkeypatch.setenv("KAPAL_KEEPALIVE", "sometimes")
    with pytest.raises(ValueError, match="keepalive"):
        Settings(database_url="postgresql://x/y")
