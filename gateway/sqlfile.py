"""Named queries kept in .sql files: `-- name: claim` starts the query called `claim`."""

from __future__ import annotations

import re
from pathlib import Path

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def load(path: Path) -> dict[str, str]:
    """Every named query in `path`; fails fast on a duplicate or an empty query."""
    text = path.read_text()
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        sql = "\n".join(
            line for line in body.strip().splitlines() if not line.lstrip().startswith("--")
        ).strip()
        if name in queries or not sql:
            raise RuntimeError(f"{path.name}: query {name!r} is duplicated or empty")
        queries[name] = sql
    return queries
