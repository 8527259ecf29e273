"""`python -m bench SCENARIO [--json] [--quick]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from bench import (
    cold,
    cold_steps,
    deploy,
    image,
    keepalive,
    logs,
    runtime_logs,
    scale,
    starts,
    styles,
    swarm,
    sync_handlers,
    traffic,
    warm,
)
from bench.async_queue import run_async

Scenario = Callable[[bool], dict[str, Any]]
SCENARIOS: dict[str, Scenario] = {
    "warm": warm.run,
    "cold": cold.run,
    "cold-steps": cold_steps.run,
    "scale": scale.run,
    "starts": starts.run,
    "async": run_async,
    "logs": logs.run,
    "runtime-logs": runtime_logs.run,
    "deploy": deploy.run,
    "image": image.run,
    "keepalive": keepalive.run,
    "styles": styles.run,
    "traffic": traffic.run,
    "sync": sync_handlers.run,
    "swarm": swarm.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--quick", action="store_true", help="smaller run, within 60 s")
    args = parser.parse_args(argv)
    result = SCENARIOS[args.scenario](args.quick)
    if not args.json:
        for key, value in result.items():
            print(f"{key:>28}: {value}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
