from typing import Any


def run(quick: bool) -> dict[str, Any]:
    raise NotImplementedError
