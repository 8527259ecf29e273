"""A fake Kapal gateway: the management and invocation routes of the real one, in memory."""

import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

NOW = "2024-05-01T12:00:00+00:00"


@dataclass
class FakeGateway:
    """What the fake has been told; tests read it to check what the client sent."""

    url: str = ""
    functions: dict[str, dict[str, Any]] = field(default_factory=dict)
    archives: dict[str, bytes] = field(default_factory=dict)  # last code.tar.gz per name
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, path)

    def archive_names(self, name: str) -> set[str]:
        with tarfile.open(fileobj=io.BytesIO(self.archives[name]), mode="r:gz") as tar:
            return set(tar.getnames())


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def build_app(state: FakeGateway) -> web.Application:
    async def read_upload(request: web.Request) -> tuple[dict[str, Any], bytes]:
        spec: dict[str, Any] = {}
        code = b""
        reader = await request.multipart()
        async for part in reader:
            assert isinstance(part, BodyPartReader)
            if part.name == "spec":
                assert part.headers["Content-Type"] == "application/json"
                spec = json.loads(await part.read())
            elif part.name == "code":
                assert part.filename == "code.tar.gz"
                code = bytes(await part.read())
        return spec, code

    def function_view(name: str) -> dict[str, Any]:
        return state.functions[name]

    async def create(request: web.Request) -> web.Response:
        spec, code = await read_upload(request)
        name = spec["name"]
        if name in state.functions:
            return _error(409, "function_exists", f"function {name!r} already exists")
        image = f"kapal-fn/{name}:1"
        state.functions[name] = {
            "name": name,
            "version": 1,
            "runtime": spec.get("runtime", "python"),
            "handler": spec.get("handler", "handler.handle"),
            "image": image,
            "env": spec.get("env", {}),
            "limits": spec.get("limits", {}),
            "scaling": spec.get("scaling", {}),
            "created_at": NOW,
            "updated_at": NOW,
            "invocations": 0,
            "versions": [{"version": 1, "image": image, "created_at": NOW}],
            "instances": [],
        }
        state.archives[name] = code
        return web.json_response(function_view(name), status=201)

    async def update(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in state.functions:
            return _error(404, "function_not_found", f"function {name!r} not found")
        spec, code = await read_upload(request)
        if spec.get("name", name) != name:
            return _error(400, "name_mismatch", "spec name does not match the URL")
        fn = state.functions[name]
        fn["version"] += 1
        fn["image"] = f"kapal-fn/{name}:{fn['version']}"
        fn["env"] = spec.get("env", {})
        fn["versions"].append({"version": fn["version"], "image": fn["image"], "created_at": NOW})
        state.archives[name] = code
        return web.json_response(function_view(name))

    async def list_functions(request: web.Request) -> web.Response:
        return web.json_response({"functions": [function_view(n) for n in state.functions]})

    async def get(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in state.functions:
            return _error(404, "function_not_found", f"function {name!r} not found")
        return web.json_response(function_view(name))

    async def delete(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if state.functions.pop(name, None) is None:
            return _error(404, "function_not_found", f"function {name!r} not found")
        return web.Response(status=204)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def invoke(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in state.functions:
            return _error(404, "function_not_found", f"function {name!r} not found")
        state.functions[name]["invocations"] += 1
        status = int(request.query.get("status", "200"))
        # Echo the request back so tests can check what went through.
        return web.Response(
            status=status,
            body=await request.read(),
            headers={
                "X-Kapal-Request-Id": "req-1",
                "X-Echo-Method": request.method,
                "X-Echo-Path": request.match_info.get("path", ""),
                "X-Echo-Query": json.dumps(sorted(request.query.items())),
                "X-Echo-Content-Type": request.headers.get("Content-Type", ""),
                "X-Echo-Custom": request.headers.get("X-Custom", ""),
                "Content-Type": "application/octet-stream",
            },
        )

    @web.middleware
    async def log_calls(request: web.Request, handler: Any) -> web.StreamResponse:
        state.calls.append((request.method, request.path))
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[log_calls])
    app.router.add_post("/v1/functions", create)
    app.router.add_get("/v1/functions", list_functions)
    app.router.add_get("/v1/functions/{name}", get)
    app.router.add_put("/v1/functions/{name}", update)
    app.router.add_delete("/v1/functions/{name}", delete)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/fn/{name}", invoke)
    app.router.add_route("*", "/fn/{name}/{path:.*}", invoke)
    return app
