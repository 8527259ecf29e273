"""The HTTP request as the foreign handler styles need it: raw strings, not parsed views.

Native handlers get an `Event`; Lambda, OpenWhisk, WSGI and ASGI each describe the same
request in their own shape, and all of them need what `Event` drops: the query string as
sent, the path as sent, and the caller's address.
"""

from dataclasses import dataclass

from aiohttp import web
from multidict import MultiMapping

FORWARDED_FOR = "X-Forwarded-For"

# Media types sent as text (not base64) by API Gateway / function URLs and OpenWhisk.
_TEXT_SUBTYPES = frozenset(
    {"json", "javascript", "ecmascript", "xml", "x-www-form-urlencoded", "x-javascript"}
)


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One invocation's request, with everything any handler style maps from."""

    method: str
    # Percent-decoded, without the query: "/" or "/a/b".
    path: str
    # As sent (percent-encoded), without the query.
    raw_path: str
    # As sent, without the "?": "a=1&a=2&b=%20".
    query_string: str
    # Case-insensitive, every value of a repeated header kept.
    headers: MultiMapping[str]
    body: bytes
    # The caller's address: the last hop the gateway added to X-Forwarded-For, else the peer.
    source_ip: str
    # "1.1" or "1.0".
    http_version: str

    @classmethod
    def of(cls, request: web.Request, body: bytes) -> "HttpRequest":
        raw_path, _, query = request.raw_path.partition("?")
        version = request.version
        return cls(
            method=request.method,
            path=request.path,
            raw_path=raw_path,
            query_string=query,
            headers=request.headers,
            body=body,
            source_ip=source_ip(request.headers, request.remote),
            http_version=f"{version.major}.{version.minor}",
        )

    def joined_headers(self) -> dict[str, str]:
        """Lower-case names, repeated values joined with "," (cookies with "; ")."""
        joined: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            if key in joined:
                separator = "; " if key == "cookie" else ","
                joined[key] = joined[key] + separator + value
            else:
                joined[key] = value
        return joined


def source_ip(headers: MultiMapping[str], peer: str | None) -> str:
    # The gateway appends the address it saw to X-Forwarded-For; what comes before that
    # was sent by the caller and proves nothing.
    forwarded = headers.getall(FORWARDED_FOR, None)
    if forwarded:
        last = forwarded[-1].rpartition(",")[2].strip()
        if last:
            return last
    return peer or "127.0.0.1"


def is_text(content_type: str | None) -> bool:
    """Whether a body of this Content-Type is text, as the peers decide what to base64."""
    if not content_type:
        return False
    media = content_type.partition(";")[0].strip().lower()
    main, _, sub = media.partition("/")
    if main == "text":
        return True
    suffix = sub.rpartition("+")[2]
    return main == "application" and (sub in _TEXT_SUBTYPES or suffix in ("json", "xml"))
