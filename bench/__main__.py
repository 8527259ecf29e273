"""`python -m bench SCENARIO [--json] [--quick]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from bench import cold, scale, warm

Scenario = Callable[[bool], dict[str, Any]]
SCENARIOS: dict[str, Scenario] = {"warm": warm.run, "cold": cold.run, "scale": scale.run}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--quick", action="store_true", help="finish within about 60 s")
    args = parser.parse_args(argv)
    figures = SCENARIOS[args.scenario](args.quick)
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>28}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
