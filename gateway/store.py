"""Functions, their versions and how traffic splits between them, in Postgres: the source
of truth of what is deployed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from gateway.errors import FunctionExists, FunctionNotFound, NoEarlierVersion, VersionNotFound
from scheduler.models import FunctionSpec
from scheduler.traffic import Split


@dataclass(frozen=True)
class VersionRow:
    version: int
    image: str
    created_at: datetime


@dataclass(frozen=True)
class VersionDetail:
    """One version with what it was deployed from (GET /v1/functions/{name}/versions)."""

    spec: FunctionSpec
    code_sha256: str
    created_at: datetime
    current: bool


@dataclass(frozen=True)
class Serving:
    """A version that serves traffic, and its share."""

    spec: FunctionSpec
    # Percent of the function's requests it gets.
    weight: int
    # The function's current version (the largest share).
    current: bool


@dataclass(frozen=True)
class FunctionRow:
    spec: FunctionSpec
    invocations: int
    created_at: datetime
    updated_at: datetime
    versions: list[VersionRow]


def _spec(row: asyncpg.Record) -> FunctionSpec:
    """A `function_versions` row (name, version, spec, image) as the scheduler's spec."""
    data: dict[str, Any] = json.loads(row["spec"])
    return FunctionSpec(**data, name=row["name"], version=row["version"], image=row["image"])


class FunctionStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def serving(self) -> list[Serving]:
        """Every version serving traffic: the current one of each function without a
        split, each version of a split with its weight."""
        rows = await self.pool.fetch(
            "SELECT v.name, v.version, v.spec, v.image, v.version = f.current_version AS current,"
            " coalesce(t.weight, 100) AS weight FROM functions f"
            " JOIN function_versions v ON v.name = f.name"
            " LEFT JOIN function_traffic t ON t.name = v.name AND t.version = v.version"
            " WHERE t.weight IS NOT NULL OR (v.version = f.current_version"
            " AND NOT EXISTS (SELECT 1 FROM function_traffic x WHERE x.name = f.name))"
        )
        return [Serving(_spec(r), r["weight"], r["current"]) for r in rows]

    async def traffic(self, name: str) -> dict[int, int]:
        """How `name`'s traffic splits: version -> percent."""
        async with self.pool.acquire() as conn:
            current = await conn.fetchval(
                "SELECT current_version FROM functions WHERE name = $1", name
            )
            if current is None:
                raise FunctionNotFound(f"function {name} not found")
            rows = await conn.fetch(
                "SELECT version, weight FROM function_traffic WHERE name = $1 ORDER BY version",
                name,
            )
        return {r["version"]: r["weight"] for r in rows} or {int(current): 100}

    async def set_traffic(self, name: str, weights: dict[int, int]) -> dict[int, int]:
        """Split `name`'s traffic as `weights` says (version -> percent, adding up to 100;
        every version must exist); returns the split (versions at 0 left out). The version
        with the largest share becomes the current one."""
        split = Split.of(weights)
        async with self.pool.acquire() as conn, conn.transaction():
            current = await conn.fetchval(
                "SELECT current_version FROM functions WHERE name = $1 FOR UPDATE", name
            )
            if current is None:
                raise FunctionNotFound(f"function {name} not found")
            known = {
                r["version"]
                for r in await conn.fetch(
                    "SELECT version FROM function_versions WHERE name = $1 AND version = ANY($2)",
                    name,
                    list(weights),
                )
            }
            if missing := sorted(set(weights) - known):
                listed = ", ".join(str(v) for v in missing)
                raise VersionNotFound(f"function {name} has no version {listed}")
            await conn.execute("DELETE FROM function_traffic WHERE name = $1", name)
            if len(split.versions) > 1:
                await conn.executemany(
                    "INSERT INTO function_traffic (name, version, weight) VALUES ($1, $2, $3)",
                    [(name, v, w) for v, w in split.weights.items()],
                )
            if split.primary != current:
                await conn.execute(
                    "UPDATE functions SET current_version = $2, updated_at = now() WHERE name = $1",
                    name,
                    split.primary,
                )
        return split.weights

    async def next_version(self, name: str) -> int:
        """One more than any version it ever had (a rollback leaves later versions kept)."""
        latest = await self.pool.fetchval(
            "SELECT max(version) FROM function_versions WHERE name = $1", name
        )
        return 1 if latest is None else int(latest) + 1

    async def current(self, name: str) -> VersionDetail | None:
        """The version that serves now, None for a function that does not exist."""
        row = await self.pool.fetchrow(
            "SELECT v.name, v.version, v.spec, v.image, v.code_sha256, v.created_at"
            " FROM functions f JOIN function_versions v"
            " ON v.name = f.name AND v.version = f.current_version WHERE f.name = $1",
            name,
        )
        if row is None:
            return None
        return VersionDetail(_spec(row), row["code_sha256"], row["created_at"], True)

    async def versions(self, name: str) -> list[VersionDetail]:
        """Every version of a function, oldest first."""
        async with self.pool.acquire() as conn:
            current = await conn.fetchval(
                "SELECT current_version FROM functions WHERE name = $1", name
            )
            if current is None:
                raise FunctionNotFound(f"function {name} not found")
            rows = await conn.fetch(
                "SELECT name, version, spec, image, code_sha256, created_at"
                " FROM function_versions WHERE name = $1 ORDER BY version",
                name,
            )
        return [
            VersionDetail(_spec(r), r["code_sha256"], r["created_at"], r["version"] == current)
            for r in rows
        ]

    async def rollback(self, name: str, version: int | None) -> int:
        """Point the function at an earlier version kept in Postgres (`None`: the highest
        below the current one); returns it. Its image is kept until the function goes."""
        async with self.pool.acquire() as conn, conn.transaction():
            current = await conn.fetchval(
                "SELECT current_version FROM functions WHERE name = $1 FOR UPDATE", name
            )
            if current is None:
                raise FunctionNotFound(f"function {name} not found")
            if version is None:
                version = await conn.fetchval(
                    "SELECT max(version) FROM function_versions WHERE name = $1 AND version < $2",
                    name,
                    current,
                )
                if version is None:
                    raise NoEarlierVersion(f"function {name} has no version before {current}")
            elif not await conn.fetchval(
                "SELECT 1 FROM function_versions WHERE name = $1 AND version = $2", name, version
            ):
                raise VersionNotFound(f"function {name} has no version {version}")
            # All of the traffic goes to it: a split ends.
            await conn.execute("DELETE FROM function_traffic WHERE name = $1", name)
            if version != current:
                await conn.execute(
                    "UPDATE functions SET current_version = $2, updated_at = now() WHERE name = $1",
                    name,
                    version,
                )
        return int(version)

    async def exists(self, name: str) -> bool:
        return bool(await self.pool.fetchval("SELECT 1 FROM functions WHERE name = $1", name))

    async def add_version(
        self, spec: FunctionSpec, code: bytes, code_sha256: str, *, base: int | None
    ) -> None:
        """Record a new version and make it current; `base` is the version that served when
        the deploy began (None: a new function). Atomic; refused if another deploy won."""
        create = base is None
        body = spec.model_dump(exclude={"version", "image", "name"}, by_alias=True)
        async with self.pool.acquire() as conn, conn.transaction():
            if create:
                inserted = await conn.fetchval(
                    "INSERT INTO functions (name, current_version) VALUES ($1, $2)"
                    " ON CONFLICT (name) DO NOTHING RETURNING name",
                    spec.name,
                    spec.version,
                )
                if inserted is None:
                    raise FunctionExists(f"function {spec.name} already exists")
            else:
                current = await conn.fetchval(
                    "SELECT current_version FROM functions WHERE name = $1 FOR UPDATE", spec.name
                )
                if current is None:
                    raise FunctionNotFound(f"function {spec.name} not found")
                if current != base:
                    raise FunctionExists(
                        f"function {spec.name} was updated concurrently (now version {current})"
                    )
                await conn.execute(
                    "UPDATE functions SET current_version = $2, updated_at = now() WHERE name = $1",
                    spec.name,
                    spec.version,
                )
                # A new version takes all of the traffic: a split ends.
                await conn.execute("DELETE FROM function_traffic WHERE name = $1", spec.name)
            await conn.execute(
                "INSERT INTO function_versions (name, version, spec, image, code, code_sha256)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                spec.name,
                spec.version,
                json.dumps(body),
                spec.image,
                code,
                code_sha256,
            )

    async def code(self, name: str, version: int) -> bytes:
        """The version's code folder as a .tar.gz (for specializing prewarmed containers)."""
        code = await self.pool.fetchval(
            "SELECT code FROM function_versions WHERE name = $1 AND version = $2", name, version
        )
        if code is None:
            raise FunctionNotFound(f"function {name} version {version} not found")
        return bytes(code)

    async def get(self, name: str) -> FunctionRow:
        async with self.pool.acquire() as conn:
            f = await conn.fetchrow("SELECT * FROM functions WHERE name = $1", name)
            if f is None:
                raise FunctionNotFound(f"function {name} not found")
            versions = await conn.fetch(
                "SELECT name, version, spec, image, created_at FROM function_versions"
                " WHERE name = $1 ORDER BY version",
                name,
            )
        current = next(v for v in versions if v["version"] == f["current_version"])
        return FunctionRow(
            _spec(current),
            f["invocations"],
            f["created_at"],
            f["updated_at"],
            [VersionRow(v["version"], v["image"], v["created_at"]) for v in versions],
        )

    async def all(self) -> list[FunctionRow]:
        names = await self.pool.fetch("SELECT name FROM functions ORDER BY name")
        out = []
        for r in names:
            try:
                out.append(await self.get(r["name"]))
            except FunctionNotFound:
                continue
        return out

    async def delete(self, name: str) -> list[str]:
        """Delete a function and its versions; returns the images they used."""
        async with self.pool.acquire() as conn, conn.transaction():
            images = await conn.fetch("SELECT image FROM function_versions WHERE name = $1", name)
            deleted = await conn.fetchval(
                "DELETE FROM functions WHERE name = $1 RETURNING name", name
            )
            # Nothing of the function is left: its endpoints and schedules go with it.
            await conn.execute("DELETE FROM webhooks WHERE function = $1", name)
            await conn.execute("DELETE FROM schedules WHERE function = $1", name)
        if deleted is None:
            raise FunctionNotFound(f"function {name} not found")
        return [r["image"] for r in images]
