"""Loaded into the schemathesis run (SCHEMATHESIS_HOOKS) by the fuzzing test.

CPython 3.11.7's `ast.parse` can raise `SystemError: AST constructor recursion depth
mismatch` when called deep in a call stack (fixed in later 3.11 releases). Hypothesis
calls it only to describe a lambda in a strategy's repr, and catches SyntaxError there,
not this: the whole run then stops with a "Runtime Error". A lambda that cannot be
described is described as unknown, as hypothesis does for a SyntaxError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis.internal import lambda_sources

_describe: Callable[..., str] = lambda_sources._lambda_description


def _lambda_description(f: Any, *args: Any, **kwargs: Any) -> str:
    try:
        return _describe(f, *args, **kwargs)
    except SystemError:
        return "lambda: <unknown>"


lambda_sources._lambda_description = _lambda_description
