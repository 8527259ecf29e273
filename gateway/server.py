"""Serving the app: requests aiohttp cannot even parse also get a JSON error.

aiohttp answers an oversized header or request line, or too many headers, with a plain
text 400 and logs a traceback. Here they are 431 (headers) or 414 (request line) with the
usual `{"error": ...}` body, and one log line without a traceback.
"""

from __future__ import annotations

import logging

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_request import BaseRequest

from gateway.errors import Problem, error_response

log = logging.getLogger("kapal.gateway")


def parse_error(exc: HttpProcessingError) -> tuple[int, str, str]:
    """(status, code, message) of a request that could not be parsed."""
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        if isinstance(line, bytes | bytearray) and line.startswith(b"/"):
            return 414, "uri_too_long", f"the request target is longer than {exc.args[1]} bytes"
        return (
            431,
            "headers_too_large",
            f"a request header is longer than {exc.args[1]} bytes",
        )
    if isinstance(exc, BadHttpMessage) and "too many headers" in str(exc.message).lower():
        return 431, "headers_too_large", "the request has too many header fields"
    return 400, "bad_request", f"malformed HTTP request: {exc.message}"


class GatewayRequestHandler(web_protocol.RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        status, code, text = parse_error(exc)
        log.info("unparsable request", extra={"status": status, "peer": request.remote})
        resp = error_response(Problem(status, code, text))
        resp.force_close()
        return resp


class GatewayServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = GatewayServer  # same object, our protocol factory
        return server
