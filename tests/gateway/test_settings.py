"""Settings derived from others: where the dependency cache lives."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import Settings


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
