"""Secrets: encrypted at rest in Postgres, mounted read-only into the functions that list them.

Values are AES-GCM encrypted with a key from `KAPAL_SECRET_KEY` or a 0600 key file (made
on first use). A function's secrets are written as files to a per-function folder on a
host tmpfs (`/dev/shm`: never on disk), owned by the runtime's user, mode 0400, and that
folder is bind-mounted read-only at `/run/secrets` in each of its instances. Never in
environment variables, images or logs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import Conflict, InvalidSpec
from gateway.keys import write_private
from scheduler.models import FunctionSpec

log = logging.getLogger("kapal.gateway.secrets")

NONCE_BYTES = 12


class SecretKeyError(Exception):
    """The encryption key is missing, malformed or does not decrypt the stored secrets."""


def load_key(raw: str | None, path: Path | None) -> bytes:
    """The 32-byte key: `raw` (base64), else the file at `path` (created when missing)."""
    if raw:
        try:
            key = base64.b64decode(raw, validate=True)
        except binascii.Error as e:
            raise SecretKeyError("KAPAL_SECRET_KEY is not base64") from e
        if len(key) != 32:
            raise SecretKeyError("KAPAL_SECRET_KEY must be 32 bytes, base64-encoded")
        return key
    if path is None:
        raise SecretKeyError("set KAPAL_SECRET_KEY or KAPAL_SECRET_KEY_FILE")
    if not path.exists():
        write_private(path, base64.b64encode(AESGCM.generate_key(bit_length=256)).decode())
        log.info("secret key created", extra={"path": str(path)})
    return load_key(path.read_text().strip(), None)


class SecretCipher:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, name: str, value: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        # The name is authenticated too: a row's ciphertext cannot be moved to another name.
        return nonce + self._aead.encrypt(nonce, value.encode(), name.encode())

    def open(self, name: str, sealed: bytes) -> str:
        try:
            plain = self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], name.encode())
        except InvalidTag as e:
            raise SecretKeyError(f"secret {name!r} does not decrypt with this key") from e
        return plain.decode()


@dataclass(frozen=True)
class SecretInfo:
    name: str
    created_at: datetime
    updated_at: datetime


class SecretStore:
    def __init__(self, pool: asyncpg.Pool, cipher: SecretCipher) -> None:
        self.pool = pool
        self.cipher = cipher

    async def put(self, name: str, value: str) -> bool:
        """Create or replace a secret; True when it is new."""
        created = await self.pool.fetchval(
            "INSERT INTO secrets (name, sealed) VALUES ($1, $2)"
            " ON CONFLICT (name) DO UPDATE SET sealed = EXCLUDED.sealed, updated_at = now()"
            " RETURNING (xmax = 0)",
            name,
            self.cipher.seal(name, value),
        )
        return bool(created)

    async def all(self) -> list[SecretInfo]:
        rows = await self.pool.fetch(
            "SELECT name, created_at, updated_at FROM secrets ORDER BY name"
        )
        return [SecretInfo(r["name"], r["created_at"], r["updated_at"]) for r in rows]

    async def delete(self, name: str) -> bool:
        return bool(
            await self.pool.fetchval("DELETE FROM secrets WHERE name = $1 RETURNING 1", name)
        )

    async def missing(self, names: Iterable[str]) -> list[str]:
        wanted = sorted(set(names))
        if not wanted:
            return []
        found = await self.pool.fetch("SELECT name FROM secrets WHERE name = ANY ($1)", wanted)
        have = {r["name"] for r in found}
        return [n for n in wanted if n not in have]

    async def values(self, names: Iterable[str]) -> dict[str, str]:
        rows = await self.pool.fetch(
            "SELECT name, sealed FROM secrets WHERE name = ANY ($1)", sorted(set(names))
        )
        return {r["name"]: self.cipher.open(r["name"], bytes(r["sealed"])) for r in rows}


class SecretFiles:
    """The per-function secret folders on the host that instances mount read-only."""

    def __init__(self, root: Path, uid: int) -> None:
        self.root = root
        self.uid = uid

    def folder(self, function: str) -> Path:
        return self.root / function

    def write(self, function: str, values: dict[str, str]) -> Path:
        """Make `function`'s folder hold exactly `values`, one 0400 file each."""
        self.root.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)  # traversable, not listable
        folder = self.folder(function)
        folder.mkdir(mode=0o500, exist_ok=True)
        os.chmod(folder, 0o700)
        for old in folder.iterdir():
            if old.name not in values:
                old.unlink()
        for name, value in values.items():
            tmp = folder / f".{name}.{os.getpid()}.tmp"  # gateways on one host may race
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
            self._own(tmp)
            os.replace(tmp, folder / name)
        self._own(folder)
        os.chmod(folder, 0o500)
        return folder

    def _own(self, path: Path) -> None:
        # Only root can hand files to the runtime's user; otherwise they stay ours.
        if os.geteuid() == 0:
            os.chown(path, self.uid, self.uid)

    def remove(self, function: str) -> None:
        folder = self.folder(function)
        if folder.exists():
            os.chmod(folder, 0o700)
            shutil.rmtree(folder, ignore_errors=True)

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            for folder in self.root.iterdir():
                os.chmod(folder, 0o700)
            shutil.rmtree(self.root, ignore_errors=True)


class Secrets:
    """What the API and the catalog do with secrets: check, store, mount, forget."""

    def __init__(self, store: SecretStore, files: SecretFiles) -> None:
        self.store = store
        self.files = files
        # Which functions mount a secret now (the catalog's answer; set when it exists).
        self.users_of: Callable[[str], list[str]] = lambda name: []

    async def check(self, names: Iterable[str]) -> None:
        missing = await self.store.missing(names)
        if missing:
            raise InvalidSpec(f"secrets: unknown secret(s) {', '.join(missing)}")

    async def mount(self, spec: FunctionSpec) -> None:
        """Make `spec`'s secret folder current (before its instances start)."""
        if not spec.secrets:
            self.forget(spec.name)
            return
        values = await self.store.values(spec.secrets)
        self.files.write(spec.name, values)

    def forget(self, function: str) -> None:
        self.files.remove(function)

    async def delete(self, name: str) -> bool:
        users = self.users_of(name)
        if users:
            raise Conflict(f"secret {name!r} is used by: {', '.join(users)}")
        return await self.store.delete(name)
