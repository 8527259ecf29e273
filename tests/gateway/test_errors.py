"""Errors by class: status, code and headers found by walking the MRO (no server)."""

from __future__ import annotations

from aiohttp import web

from gateway.errors import (
    INTERNAL,
    FunctionNotFound,
    KapalError,
    OutOfMemory,
    RateLimited,
    UpstreamFailed,
    problem,
)
from gateway.queue.retry import FINAL_ERRORS, AttemptResult
from scheduler import errors as sched


def test_every_kind_of_error_maps_by_its_class() -> None:
    cases: list[tuple[BaseException, int, str]] = [
        (sched.StartFailed("x"), 502, "start_failed"),
        (sched.BuildFailed("x"), 422, "build_failed"),
        (sched.UnknownFunction("f"), 404, "function_not_found"),
        (sched.BackendError("x"), 500, "internal"),
        (FunctionNotFound("x"), 404, "function_not_found"),
        (UpstreamFailed("x"), 502, "instance_failed"),
        (OutOfMemory("x"), 502, "out_of_memory"),
        (web.HTTPMethodNotAllowed("GET", ["POST"]), 405, "method_not_allowed"),
        (web.HTTPRequestEntityTooLarge(10, 20), 413, "payload_too_large"),
    ]
    for exc, status, code in cases:
        p = problem(exc)
        assert (p.status, p.code, p.unexpected) == (status, code, False), exc


def test_unknown_function_names_it() -> None:
    assert problem(sched.UnknownFunction("hello")).message == "function hello not found"


def test_no_capacity_asks_to_come_back() -> None:
    p = problem(sched.NoCapacity("full", retry_after_s=2.6))
    assert (p.status, p.code, p.headers, p.retry_after_s) == (
        503,
        "unavailable",
        {"Retry-After": "3"},
        2.6,
    )
    assert problem(sched.NoCapacity("full", retry_after_s=0.2)).headers == {"Retry-After": "1"}


def test_a_subclass_inherits_the_nearest_mapping() -> None:
    class Custom(OutOfMemory):
        pass

    assert problem(Custom("x")).code == "out_of_memory"
    p = problem(RateLimited("slow down", headers={"Retry-After": "2"}))
    assert (p.status, p.code, p.headers) == (429, "rate_limited", {"Retry-After": "2"})
    assert problem(KapalError("x")).unexpected is False


def test_anything_else_is_internal_and_unexpected() -> None:
    assert problem(ValueError("secret detail")) == INTERNAL
    assert INTERNAL.unexpected and "secret detail" not in INTERNAL.message


def test_the_queue_never_retries_what_cannot_succeed() -> None:
    for exc in (sched.UnknownFunction("f"), FunctionNotFound("f")):
        assert problem(exc).code in FINAL_ERRORS
        assert not AttemptResult(error=problem(exc).code).retriable
    for exc2 in (sched.NoCapacity("x"), sched.StartFailed("x"), OutOfMemory("x")):
        assert AttemptResult(error=problem(exc2).code).retriable
