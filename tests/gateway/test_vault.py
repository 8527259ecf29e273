"""Sealing secrets and laying out their files (no database, no Docker)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from gateway.vault import SecretCipher, SecretFiles, SecretKeyError, load_key


def test_seal_and_open_round_trip_bound_to_the_name() -> None:
    cipher = SecretCipher(os.urandom(32))
    sealed = cipher.seal("a", "value")
    assert b"value" not in sealed
    assert cipher.open("a", sealed) == "value"
    assert cipher.seal("a", "value") != sealed  # a fresh nonce each time
    with pytest.raises(SecretKeyError):
        cipher.open("b", sealed)
    with pytest.raises(SecretKeyError):
        SecretCipher(os.urandom(32)).open("a", sealed)


def test_key_file_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    key = load_key(None, path)
    assert len(key) == 32 and load_key(None, path) == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key(base64.b64encode(b"k" * 32).decode(), path) == b"k" * 32
    with pytest.raises(SecretKeyError):
        load_key(base64.b64encode(b"short").decode(), None)


def test_files_hold_exactly_the_secrets_read_only(tmp_path: Path) -> None:
    files = SecretFiles(tmp_path / "root", uid=os.getuid())
    folder = files.write("fn", {"a": "1", "b": "2"})
    files.write("fn", {"b": "3"})
    assert sorted(p.name for p in folder.iterdir()) == ["b"]
    assert (folder / "b").read_text() == "3"
    assert stat.S_IMODE(os.stat(folder / "b").st_mode) == 0o400
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o500
    files.remove("fn")
    assert not folder.exists()
    files.write("other", {"x": "y"})
    files.clear()
    assert not files.root.exists()
