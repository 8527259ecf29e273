"""Where Kapal keeps its state."""

import stat
from pathlib import Path

import pytest

from infra.state import state_dir


def test_state_dir_honours_kapal_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "nested" / "kapal-home"
    monkeypatch.setenv("KAPAL_HOME", str(home))
    assert state_dir() == home.resolve()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_state_dir_keeps_an_existing_dir_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path.chmod(0o755)
    monkeypatch.setenv("KAPAL_HOME", str(tmp_path))
    assert state_dir() == tmp_path.resolve()
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_state_dir_defaults_to_the_user_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAPAL_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert state_dir() == (tmp_path / "kapal").resolve()
