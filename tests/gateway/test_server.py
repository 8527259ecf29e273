"""Requests aiohttp cannot parse, as statuses and codes (no server)."""

from __future__ import annotations

from aiohttp.http_exceptions import BadHttpMessage, InvalidHeader, LineTooLong

from gateway.server import parse_error


def test_parse_errors_map_to_414_431_or_400() -> None:
    assert parse_error(LineTooLong(b"/aaaa", 8190))[:2] == (414, "uri_too_long")
    assert parse_error(LineTooLong(b"X-Big: aaa", 8190))[:2] == (431, "headers_too_large")
    assert parse_error(BadHttpMessage("Too many headers received"))[:2] == (
        431,
        "headers_too_large",
    )
    assert parse_error(InvalidHeader(b"bad"))[:2] == (400, "bad_request")
