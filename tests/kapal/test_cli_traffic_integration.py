"""`kapal traffic` against a real gateway (real Docker, real Postgres)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.kapal.test_cli_integration import kapal  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration


def folder(root: Path, tag: str) -> Path:
    root.mkdir(exist_ok=True)
    (root / "handler.py").write_text(f"def handle(event, context):\n    return {tag!r}\n")
    return root


async def test_traffic_shows_and_splits_and_a_bad_split_is_one_error_line(
    kapal: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    code = tmp_path / "t-split"
    for tag in ("one", "two"):
        ran = await kapal("deploy", str(folder(code, tag)), "--public")
        assert ran.code == 0, ran.err

    shown = await kapal("traffic", "t-split")
    assert shown.code == 0, shown.err
    lines = shown.out.splitlines()
    assert lines[0].split() == ["VERSION", "PERCENT"]
    assert [line.split() for line in lines[2:]] == [["2", "100"]]

    ran = await kapal("--json", "traffic", "t-split", "1=70", "2=30")
    assert (ran.code, ran.json()) == (0, {"traffic": {"1": 70, "2": 30}}), ran.err
    assert (await kapal("--json", "traffic", "t-split")).json() == {"traffic": {"1": 70, "2": 30}}

    # Calls answer from both versions now, each saying which one it was.
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while seen != {"one", "two"}:
        assert time.monotonic() < deadline, f"only {seen} answered"
        ran = await kapal("invoke", "t-split")
        assert ran.code == 0, ran.err
        seen.add(ran.out.strip())

    bad = await kapal("traffic", "t-split", "1=60", "2=30")
    assert bad.code == 1 and bad.err.count("\n") == 1, bad
    assert bad.err.startswith("error: ") and "add up to 100, not 90" in bad.err
    twice = await kapal("traffic", "t-split", "1=50", "1=50")
    assert twice.code == 1 and "version 1 is given twice" in twice.err
    missing = await kapal("traffic", "t-split", "1=50", "3=50")
    assert missing.code == 1 and "has no version 3" in missing.err
    assert (await kapal("--json", "traffic", "t-split")).json()["traffic"] == {"1": 70, "2": 30}

    assert (await kapal("rm", "t-split")).code == 0
