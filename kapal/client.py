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
NDJSON = "application/x-ndjson"

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

    async def deploy_events(
        self,
        archive: bytes,
        spec: Mapping[str, Any],
        *,
        create: bool,
        skip_unchanged: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """A deploy's progress events as the gateway streams them (NDJSON), the last one
        `done` or `error`. Input refused before the build raises KapalAPIError."""
        path = "/v1/functions" if create else f"/v1/functions/{_segment(spec['name'])}"
        if skip_unchanged:
            path += "?skip_unchanged=true"
        form = _deploy_form(spec, archive)
        async for event in self._stream(
            "POST" if create else "PUT", path, data=form, headers={"Accept": NDJSON}
        ):
            yield event

    # -- versions ------------------------------------------------------------------

    async def versions(self, name: str) -> builtins.list[dict[str, Any]]:
        answer = await self._call("GET", f"/v1/functions/{_segment(name)}/versions")
        versions: builtins.list[dict[str, Any]] = answer["versions"]
        return versions

    async def rollback(self, name: str, version: int | None = None) -> Function:
        body = {} if version is None else {"version": version}
        path = f"/v1/functions/{_segment(name)}/rollback"
        result: Function = await self._call("POST", path, json_body=body)
        return result

    # -- async invocations and dead letters ------------------------------------------

    async def invoke_async(
        self,
        name: str,
        path: str = "",
        *,
        method: str | None = None,
        data: bytes | None = None,
        headers: Pairs | None = None,
        query: Pairs | None = None,
    ) -> dict[str, Any]:
        """Queue an invocation; {"id", "status_url"}."""
        url = self._base.with_path(f"{self._base.path.rstrip('/')}/async/fn/{name}")
        if path.lstrip("/"):
            url = url.with_path(f"{url.path}/{path.lstrip('/')}")
        answer = await self._send(
            method or "POST",
            url,
            data=data,
            headers=list(headers.items()) if isinstance(headers, Mapping) else headers,
            params=list(query.items()) if isinstance(query, Mapping) else query,
        )
        return self._decode(answer, str(url))  # type: ignore[no-any-return]

    async def queued(self, id: str) -> dict[str, Any]:
        """An async invocation: status, attempts, timings and the function's response."""
        result: dict[str, Any] = await self._call("GET", f"/v1/invocations/{_segment(id)}")
        return result

    async def queued_list(
        self, *, status: str | None = None, function: str | None = None, limit: int | None = None
    ) -> builtins.list[dict[str, Any]]:
        answer = await self._call(
            "GET", "/v1/invocations" + _query(status=status, function=function, limit=limit)
        )
        found: builtins.list[dict[str, Any]] = answer["invocations"]
        return found

    async def retry(self, id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", f"/v1/invocations/{_segment(id)}/retry")
        return result

    # -- jobs ------------------------------------------------------------------------

    async def create_job(
        self,
        function: str,
        items_ndjson: bytes,
        *,
        max_concurrency: int | None = None,
        retries: int | None = None,
    ) -> dict[str, Any]:
        """A job of JSON Lines items: {"id", "total", "status_url"}."""
        path = "/v1/jobs" + _query(
            function=function, max_concurrency=max_concurrency, retries=retries
        )
        url = URL(self.url + path, encoded=True)
        answer = await self._send("POST", url, data=items_ndjson, headers={"Content-Type": NDJSON})
        return self._decode(answer, path)  # type: ignore[no-any-return]

    async def job(self, id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", f"/v1/jobs/{_segment(id)}")
        return result

    async def jobs(
        self, function: str | None = None, limit: int | None = None
    ) -> builtins.list[dict[str, Any]]:
        answer = await self._call("GET", "/v1/jobs" + _query(function=function, limit=limit))
        found: builtins.list[dict[str, Any]] = answer["jobs"]
        return found

    def job_results(self, id: str) -> AsyncIterator[dict[str, Any]]:
        return self._stream("GET", f"/v1/jobs/{_segment(id)}/results")

    async def cancel_job(self, id: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._call("DELETE", f"/v1/jobs/{_segment(id)}")
        return result

    # -- webhooks and schedules --------------------------------------------------------

    async def create_webhook(
        self, function: str, verify: str, secret: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"function": function, "verify": verify}
        if secret is not None:
            body["secret"] = secret
        result: dict[str, Any] = await self._call("POST", "/v1/webhooks", json_body=body)
        return result

    async def webhooks(self) -> builtins.list[dict[str, Any]]:
        found: builtins.list[dict[str, Any]] = (await self._call("GET", "/v1/webhooks"))["webhooks"]
        return found

    async def webhook(self, id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", f"/v1/webhooks/{_segment(id)}")
        return result

    async def rotate_webhook(self, id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/webhooks/{_segment(id)}/rotate", json_body={}
        )
        return result

    async def delete_webhook(self, id: str) -> None:
        await self._call("DELETE", f"/v1/webhooks/{_segment(id)}")

    async def create_schedule(
        self, function: str, cron: str, payload: Any = None, timezone: str = "UTC"
    ) -> dict[str, Any]:
        body = {"function": function, "cron": cron, "payload": payload, "timezone": timezone}
        result: dict[str, Any] = await self._call("POST", "/v1/schedules", json_body=body)
        return result

    async def schedules(self) -> builtins.list[dict[str, Any]]:
        found: builtins.list[dict[str, Any]] = (await self._call("GET", "/v1/schedules"))[
            "schedules"
        ]
        return found

    async def schedule(self, id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", f"/v1/schedules/{_segment(id)}")
        return result

    async def delete_schedule(self, id: str) -> None:
        await self._call("DELETE", f"/v1/schedules/{_segment(id)}")

    # -- stats -------------------------------------------------------------------------

    async def stats(self, minutes: int = 15) -> dict[str, Any]:
        """Per-function counts, errors, cold starts, rps and p50/p99 over the last minutes."""
        result: dict[str, Any] = await self._call("GET", f"/v1/stats?minutes={minutes}")
        return result

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

    def logs(
        self, name: str, *, follow: bool = False, **query: str | int | None
    ) -> AsyncIterator[dict[str, Any]]:
        """A function's log lines, oldest first; with `follow`, new ones until interrupted
        (or the function is deleted). Query: since, until, request_id, instance, limit."""
        if follow:
            query["follow"] = 1
        return self._stream("GET", f"/v1/functions/{_segment(name)}/logs" + _query(**query))

    async def invocations(self, name: str, **query: str | int | None) -> dict[str, Any]:
        """A page of invocation records, newest first: {"invocations": [...], "next_cursor"}.
        Query: since, status, cold, trigger, limit, cursor."""
        path = f"/v1/functions/{_segment(name)}/invocations" + _query(**query)
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
        result: Function = await self._call(method, path, data=_deploy_form(spec, archive))
        return result

    async def _call(
        self, method: str, path: str, *, data: Any = None, json_body: Any = None
    ) -> Any:
        """A management API call: JSON in the answer, or KapalAPIError for a 4xx/5xx."""
        url = URL(self.url + path, encoded=True)
        answer = await self._send(method, url, data=data, json=json_body)
        return self._decode(answer, path)

    def _decode(self, answer: _Answer, path: str) -> Any:
        """An answer's JSON, or KapalAPIError for a 4xx/5xx or a body that is not JSON."""
        if answer.status >= 400:
            raise self._refusal(answer)
        if not answer.body:
            return None
        try:
            return json.loads(answer.body)
        except ValueError as exc:
            raise KapalAPIError(
                answer.status, "bad_response", f"{self.url}{path} did not answer JSON"
            ) from exc

    def _refusal(self, answer: _Answer) -> KapalAPIError:
        error = _api_error(answer)
        if answer.status == 401:
            return KapalAPIError(
                401,
                error.code,
                f"{error.message}. Set --api-key or KAPAL_API_KEY, or run `kapal up` once to"
                f" get an admin key saved in {state_dir() / KEY_FILE}",
            )
        return error

    async def _stream(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
        """An NDJSON answer, one object per line as it arrives; no read timeout (a followed
        log or a long build may stay quiet for long)."""
        url = URL(self.url + path, encoded=True)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        try:
            async with self._http().request(method, url, timeout=timeout, **kwargs) as resp:
                if resp.status >= 400:
                    body = await resp.read()
                    raise self._refusal(_Answer(resp.status, resp.reason or "", resp.headers, body))
                async for raw in resp.content:
                    if raw.strip():
                        yield json.loads(raw)
        except aiohttp.ClientConnectorError as exc:
            raise _unreachable(self.url, exc) from exc
        except ValueError as exc:
            raise KapalAPIError(0, "bad_response", f"{method} {path}: a line is not JSON") from exc
        except aiohttp.ClientError as exc:
            raise KapalAPIError(0, "transport_error", f"{method} {url} failed: {exc}") from exc

    async def _send(self, method: str, url: URL, **kwargs: Any) -> _Answer:
        """One HTTP exchange; every transport failure becomes a KapalAPIError."""
        try:
            async with self._http().request(method, url, **kwargs) as resp:
                body = await resp.read()
                return _Answer(resp.status, resp.reason or "", resp.headers, body)
        except aiohttp.ClientConnectorError as exc:
            raise _unreachable(self.url, exc) from exc
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


def _unreachable(url: str, exc: aiohttp.ClientConnectorError) -> KapalAPIError:
    if isinstance(exc.os_error, ConnectionRefusedError):
        why = "connection refused"
    else:
        why = exc.os_error.strerror or str(exc.os_error)
    return KapalAPIError(
        0,
        "unreachable",
        f"Kapal is not running at {url} ({why}). "
        "Start it with `make up` or `kapal up`, or point --url / KAPAL_URL at it.",
    )


def _deploy_form(spec: Mapping[str, Any], archive: bytes) -> aiohttp.MultipartWriter:
    form = aiohttp.MultipartWriter("form-data")
    form.append_json(dict(spec)).set_content_disposition("form-data", name="spec")
    if archive:  # none for an image function
        code = form.append(archive, {"Content-Type": "application/gzip"})
        code.set_content_disposition("form-data", name="code", filename="code.tar.gz")
    return form


def _query(**params: str | int | bool | None) -> str:
    """`?a=1&b=x` of the params that are not None (booleans as true/false), or ""."""
    pairs = [
        f"{k}={quote(str(v).lower() if isinstance(v, bool) else str(v), safe='')}"
        for k, v in params.items()
        if v is not None
    ]
    return "?" + "&".join(pairs) if pairs else ""


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
