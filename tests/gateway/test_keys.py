"""Key format, hashing and the in-memory check (no database)."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

from gateway.keys import ApiKey, KeyCache, Scope, new_key, parse, write_private


def cache_with(*keys: ApiKey) -> KeyCache:
    cache = KeyCache(store=None)  # type: ignore[arg-type]
    cache.keys = {k.id: k for k in keys}
    return cache


def make(scopes: set[Scope]) -> tuple[ApiKey, str]:
    key_id, token, digest = new_key()
    return ApiKey(key_id, "t", frozenset(scopes), digest, None, datetime.now(UTC)), token


def test_keys_are_unique_and_parse_back() -> None:
    a, b = new_key(), new_key()
    assert a[0] != b[0] and a[1] != b[1]
    parsed = parse(a[1])
    assert parsed is not None and parsed[0] == a[0]
    assert parse("kpl_short_x") is None
    assert parse(a[1] + "x") is None


def test_verify_accepts_the_key_and_nothing_else() -> None:
    key, token = make({Scope.INVOKE})
    cache = cache_with(key)
    assert cache.verify(token) == key
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert cache.verify(tampered) is None
    _, other_token = make({Scope.INVOKE})
    assert cache.verify(other_token) is None  # not in the cache: revoked or unknown
    assert cache.verify("") is None


def test_admin_allows_every_scope_others_only_their_own() -> None:
    admin, _ = make({Scope.ADMIN})
    assert all(admin.allows(s) for s in Scope)
    deployer, _ = make({Scope.DEPLOY})
    assert deployer.allows(Scope.DEPLOY)
    assert not deployer.allows(Scope.INVOKE) and not deployer.allows(Scope.ADMIN)


def test_private_file_is_0600_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "admin.key"
    write_private(path, "one\n")
    write_private(path, "two\n")
    assert path.read_text() == "two\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["admin.key"]
