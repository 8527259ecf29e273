"""Lanes: a function's own queue, or one job's items. Which to claim from, how many. Pure."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import NamedTuple

# NOTIFY payloads are capped at 8000 bytes; past this, "*" says "look at every lane".
MAX_PAYLOAD = 7000
EVERY_LANE = "*"


class Lane(NamedTuple):
    function: str
    job: uuid.UUID | None = None

    def encode(self) -> str:
        return self.function if self.job is None else f"{self.function}/{self.job}"


def payload(lanes: Iterable[Lane]) -> str:
    text = ",".join(sorted({lane.encode() for lane in lanes}))
    return text if len(text) <= MAX_PAYLOAD else EVERY_LANE


def parse_payload(text: str) -> set[Lane] | None:
    """The lanes a notification names; None when it says to look at every lane."""
    if text == EVERY_LANE or not text:
        return None
    lanes = set()
    for part in text.split(","):
        function, _, job = part.partition("/")
        try:
            lanes.add(Lane(function, uuid.UUID(job) if job else None))
        except ValueError:
            return None
    return lanes


def plan(
    ready: Iterable[Lane],
    *,
    free: int,
    batch: int,
    function_limits: Mapping[str, int],
    job_limits: Mapping[uuid.UUID, int | None],
    by_function: Mapping[str, int],
    by_job: Mapping[uuid.UUID, int],
) -> list[tuple[Lane, int]]:
    """How many rows to claim from each ready lane, within every concurrency limit."""
    out: list[tuple[Lane, int]] = []
    fn_used = dict(by_function)
    job_used = dict(by_job)
    for lane in ready:
        n = min(free, batch, function_limits[lane.function] - fn_used.get(lane.function, 0))
        if lane.job is not None:
            limit = job_limits.get(lane.job)
            if limit is not None:
                n = min(n, limit - job_used.get(lane.job, 0))
        if n <= 0:
            continue
        out.append((lane, n))
        free -= n
        fn_used[lane.function] = fn_used.get(lane.function, 0) + n
        if lane.job is not None:
            job_used[lane.job] = job_used.get(lane.job, 0) + n
        if free <= 0:
            break
    return out
