"""Where Kapal keeps its local state (pid files, logs, the embedded Postgres)."""

import os
from pathlib import Path

import platformdirs


def state_dir() -> Path:
    """`KAPAL_HOME`, else the user data dir; created private (0700) when new."""
    raw = os.environ.get("KAPAL_HOME")
    path = Path(raw).expanduser() if raw else Path(platformdirs.user_data_dir("kapal"))
    if not path.exists():
        path.mkdir(mode=0o700, parents=True)
    return path.resolve()
