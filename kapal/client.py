"""`KapalClient`: the gateway's HTTP API as async Python calls (aiohttp).

Every failure surfaces as a `KapalAPIError`, never as an aiohttp exception.
"""

import asyncio
import builtins
import json
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import aiohttp
import platformdirs
from multidict import CIMultiDictProxy
from yarl import URL

from kapal.archive import build_archive
from kapal.errors import KapalAPIError

DEFAULT_URL = "http://127.0.0.1:8080"
USER_AGENT = "kapal-client/0.1"

# The gateway's Function object, as JSON.
Function = dict[str, Any]
Pairs = Mapping[str, str] | Iterable[tuple[str, str]]


KEY_FILE = "admin.key"


def state_dir() -> Path:
    """Kapal's state folder on this machine: `KAPAL_HOME`, else the user data dir."""
    raw = os.environ.get("KAPAL_HOME")
    return Path(raw).expanduser() if raw else Path(platformdirs.user_data_dir("kapal"))


def resolve_api_key(key: str | None = None) -> str | None:
    """The API key: the argument, else $KAPAL_API_KEY, else the one `kapal up` saved."""
    if key:
        return key
    if env := os.environ.get("KAPAL_API_KEY"):
        return env.strip()
    try:
        return (state_dir() / KEY_FILE).read_text().strip() or None
    except OSError:
        return None


def resolve_url(url: str | None = None) -> str:
    """The gateway base URL: the argument, else $KAPAL_URL, else the local default."""
    return (url or os.environ.get("KAPAL_URL") or DEFAULT_URL).rstrip("/")


@dataclass(frozen=True, slots=True)
class InvokeResult:
    """A function's HTTP answer, as it came back through the gateway."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def ok(self) -> bool:
        return self.status < 400


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    body: bytes


class KapalClient:
    """Async client of one Kapal gateway: `async with KapalClient(url) as kapal: ...`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout_s: float | None = 600.0,
    ) -> None:
        self.url = resolve_url(url)
        self.api_key = resolve_api_key(api_key)
        self._base = URL(self.url)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=10)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- management API ------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/healthz")
        return result

    async def list(self) -> list[Function]:
        answer = await self._call("GET", "/v1/functions")
        functions: list[Function] = answer.get("functions", [])
        return functions

    async def get(self, name: str) -> Function:
        result: Function = await self._call("GET", f"/v1/functions/{_segment(name)}")
        return result

    async def delete(self, name: str) -> None:
        await self._call("DELETE", f"/v1/functions/{_segment(name)}")

    async def deploy(self, folder: Path, spec: Mapping[str, Any]) -> Function:
        """Create a function from `folder`'s code; 409 `function_exists` if it exists."""
        archive = await asyncio.to_thread(build_archive, folder)
        return await self._upload("POST", "/v1/functions", spec, archive)

    async def update(self, folder: Path, spec: Mapping[str, Any]) -> Function:
        """Deploy `folder`'s code as a new version of the existing function `spec.name`."""
        archive = await asyncio.to_thread(build_archive, folder)
        return await self._upload("PUT", f"/v1/functions/{_segment(spec['name'])}", spec, archive)

    async def deploy_or_update(
        self, folder: Path, spec: Mapping[str, Any]
    ) -> tuple[Function, bool]:
        """Create the function, or add a version if it exists; True when it was created."""
        archive = await asyncio.to_thread(build_archive, folder)
        try:
            return await self._upload("POST", "/v1/functions", spec, archive), True
        except KapalAPIError as exc:
            if exc.status != 409:
                raise
        path = f"/v1/functions/{_segment(spec['name'])}"
        return await self._upload("PUT", path, spec, archive), False

    # -- API keys ----------------------------------------------------------------------

    async def create_key(
        self, name: str, scopes: Iterable[str], rps: float | None = None
    ) -> dict[str, Any]:
        """A new API key; the answer's `key` is shown this once."""
        body: dict[str, Any] = {"name": name, "scopes": list(scopes)}
        if rps is not None:
            body["rps"] = rps
        result: dict[str, Any] = await self._call("POST", "/v1/keys", json_body=body)
        return result

    async def list_keys(self) -> builtins.list[dict[str, Any]]:
        answer = await self._call("GET", "/v1/keys")
        keys: builtins.list[dict[str, Any]] = answer.get("keys", [])
        return keys

    async def revoke_key(self, key_id: str) -> None:
        await self._call("DELETE", f"/v1/keys/{_segment(key_id)}")

    # -- secrets -----------------------------------------------------------------------

    async def put_secret(self, name: str, value: str) -> None:
        await self._call("POST", "/v1/secrets", json_body={"name": name, "value": value})

    async def list_secrets(self) -> builtins.list[dict[str, Any]]:
        answer = await self._call("GET", "/v1/secrets")
        secrets: builtins.list[dict[str, Any]] = answer.get("secrets", [])
        return secrets

    async def delete_secret(self, name: str) -> None:
        await self._call("DELETE", f"/v1/secrets/{_segment(name)}")

    # -- invocation ------------------------------------------------------------------

    async def invoke(
        self,
        name: str,
        path: str = "",
        *,
        method: str | None = None,
        data: bytes | None = None,
        headers: Pairs | None = None,
        query: Pairs | None = None,
    ) -> InvokeResult:
        """Call a function; any HTTP status comes back as a result, not an error.

        The method defaults to POST with `data`, GET without. The body is returned
        byte for byte: nothing is decompressed or redirected.
        """
        url = self._base.with_path(f"{self._base.path.rstrip('/')}/fn/{name}")
        if path.lstrip("/"):
            url = url.with_path(f"{url.path}/{path.lstrip('/')}")
        answer = await self._send(
            method or ("POST" if data is not None else "GET"),
            url,
            data=data,
            headers=list(headers.items()) if isinstance(headers, Mapping) else headers,
            params=list(query.items()) if isinstance(query, Mapping) else query,
            allow_redirects=False,
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding",),
        )
        return InvokeResult(answer.status, answer.headers, answer.body)

    # -- plumbing --------------------------------------------------------------------

    async def logs(
        self, name: str, *, follow: bool = False, **query: str | int | None
    ) -> AsyncIterator[dict[str, Any]]:
        """A function's log lines, oldest first; with `follow`, new ones until interrupted
        (or the function is deleted). Query: since, until, request_id, instance, limit."""
        params = {k: str(v) for k, v in query.items() if v is not None}
        if follow:
            params["follow"] = "1"
        url = URL(self.url + f"/v1/functions/{_segment(name)}/logs", encoded=True)
        # A followed stream may stay quiet for long: no total, no read timeout.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        try:
            async with self._http().get(url, params=params, timeout=timeout) as resp:
                if resp.status >= 400:
                    body = await resp.read()
                    raise _api_error(_Answer(resp.status, resp.reason or "", resp.headers, body))
                async for raw in resp.content:
                    if raw.strip():
                        yield json.loads(raw)
        except aiohttp.ClientConnectorError as exc:
            raise KapalAPIError(0, "unreachable", f"Kapal is not running at {self.url}") from exc
        except aiohttp.ClientError as exc:
            raise KapalAPIError(0, "transport_error", f"GET {url} failed: {exc}") from exc

    async def invocations(self, name: str, **query: str | int | None) -> dict[str, Any]:
        """A page of invocation records, newest first: {"invocations": [...], "next_cursor"}.
        Query: since, status, cold, trigger, limit, cursor."""
        params = "&".join(f"{k}={quote(str(v))}" for k, v in query.items() if v is not None)
        path = f"/v1/functions/{_segment(name)}/invocations" + (f"?{params}" if params else "")
        result: dict[str, Any] = await self._call("GET", path)
        return result

    async def invocation(self, name: str, id: str) -> dict[str, Any]:
        """One invocation (or an async invocation's attempts) with its log lines."""
        path = f"/v1/functions/{_segment(name)}/invocations/{_segment(id)}"
        result: dict[str, Any] = await self._call("GET", path)
        return result

    async def _upload(
        self, method: str, path: str, spec: Mapping[str, Any], archive: bytes
    ) -> Function:
        form = aiohttp.MultipartWriter("form-data")
        form.append_json(dict(spec)).set_content_disposition("form-data", name="spec")
        code = form.append(archive, {"Content-Type": "application/gzip"})
        code.set_content_disposition("form-data", name="code", filename="code.tar.gz")
        result: Function = await self._call(method, path, data=form)
        return result

    async def _call(
        self, method: str, path: str, *, data: Any = None, json_body: Any = None
    ) -> Any:
        """A management API call: JSON in the answer, or KapalAPIError for a 4xx/5xx."""
        url = URL(self.url + path, encoded=True)
        answer = await self._send(method, url, data=data, json=json_body)
        if answer.status >= 400:
            error = _api_error(answer)
            if answer.status == 401:
                error = KapalAPIError(
                    401,
                    error.code,
                    f"{error.message}. Set KAPAL_API_KEY, or run `kapal up` once to get"
                    f" an admin key saved in {state_dir() / KEY_FILE}",
                )
            raise error
        if not answer.body:
            return None
        try:
            return json.loads(answer.body)
        except ValueError as exc:
            raise KapalAPIError(
                answer.status, "bad_response", f"{self.url}{path} did not answer JSON"
            ) from exc

    async def _send(self, method: str, url: URL, **kwargs: Any) -> _Answer:
        """One HTTP exchange; every transport failure becomes a KapalAPIError."""
        try:
            async with self._http().request(method, url, **kwargs) as resp:
                body = await resp.read()
                return _Answer(resp.status, resp.reason or "", resp.headers, body)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ConnectionRefusedError):
                why = "connection refused"
            else:
                why = exc.os_error.strerror or str(exc.os_error)
            raise KapalAPIError(
                0,
                "unreachable",
                f"Kapal is not running at {self.url} ({why}). "
                "Start it with `make up` or `kapal up`, or point --url / KAPAL_URL at it.",
            ) from exc
        except TimeoutError as exc:
            raise KapalAPIError(0, "timeout", f"{method} {url} timed out") from exc
        except aiohttp.ClientError as exc:
            raise KapalAPIError(
                0, "transport_error", f"{method} {url} failed: {exc or type(exc).__name__}"
            ) from exc

    def _http(self) -> aiohttp.ClientSession:
        # Created on first use so it binds to the running event loop.
        if self._session is None:
            headers = {"User-Agent": USER_AGENT}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=headers)
        return self._session


def _segment(value: str) -> str:
    return quote(value, safe="")


def _api_error(answer: _Answer) -> KapalAPIError:
    """The gateway's `{"error": {"code", "message"}}` body, or a stand-in for other bodies."""
    try:
        error = json.loads(answer.body)["error"]
        return KapalAPIError(answer.status, str(error["code"]), str(error["message"]))
    except (ValueError, TypeError, KeyError):
        text = answer.body.decode("utf-8", "replace").strip()[:200]
        message = f"HTTP {answer.status} {answer.reason}" + (f": {text}" if text else "")
        return KapalAPIError(answer.status, f"http_{answer.status}", message)
