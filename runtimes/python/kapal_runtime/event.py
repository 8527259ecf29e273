"""What a handler receives: `Event` (the HTTP request) and `Context` (the invocation).

The shape follows OpenFaaS python3-http (`handle(event, context)`), so its handlers run as-is.
"""

import json
import time
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy, MultiMapping

_NO_JSON = object()


class InvalidJSONBody(ValueError):
    """`Event.json()` found no valid JSON; answered 400 when the handler lets it escape."""


class Event:
    """One HTTP request: method, path, query, headers and the full body."""

    __slots__ = ("_json", "body", "headers", "method", "path", "query")

    def __init__(
        self,
        body: bytes = b"",
        headers: MultiMapping[str] | None = None,
        method: str = "POST",
        path: str = "/",
        query: MultiMapping[str] | None = None,
    ) -> None:
        self.body = body
        # Case-insensitive; `get`, `getall` and `[]` work as on a dict of lists.
        self.headers: MultiMapping[str] = (
            headers if headers is not None else CIMultiDictProxy(CIMultiDict())
        )
        self.method = method
        # The URL path as received, percent-decoded, without the query: "/" or "/a/b".
        self.path = path
        # `query.get("name", "world")` and `query.getall("tag", [])` both work.
        self.query: MultiMapping[str] = query if query is not None else MultiDictProxy(MultiDict())
        self._json: Any = _NO_JSON

    def json(self) -> Any:
        """The body parsed as JSON; raises InvalidJSONBody saying why it is not."""
        if self._json is _NO_JSON:
            if not self.body:
                raise InvalidJSONBody("request body is empty; expected JSON")
            try:
                self._json = json.loads(self.body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidJSONBody(f"request body is not valid JSON: {exc}") from None
        return self._json

    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8")

    def __repr__(self) -> str:
        return f"<Event {self.method} {self.path} body={len(self.body)} bytes>"


class Context:
    """Facts about this invocation that are not part of the request."""

    __slots__ = ("deadline", "function_name", "request_id", "version")

    def __init__(self, function_name: str, version: int, request_id: str, deadline: float) -> None:
        self.function_name = function_name
        self.version = version
        # From the X-Kapal-Request-Id header, or generated when the caller sent none.
        self.request_id = request_id
        # Unix epoch seconds after which the caller no longer waits for the answer.
        self.deadline = deadline

    def time_left(self) -> float:
        """Seconds until the deadline, never negative."""
        return max(0.0, self.deadline - time.time())

    def get_remaining_time_in_millis(self) -> int:
        """AWS Lambda's spelling of `time_left()`, for ported handlers."""
        return int(self.time_left() * 1000)

    def __repr__(self) -> str:
        return (
            f"<Context {self.function_name} v{self.version} request_id={self.request_id} "
            f"time_left={self.time_left():.3f}s>"
        )
