import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from kapal_fakes import FakeGateway

from kapal.client import KapalClient, resolve_url
from kapal.errors import KapalAPIError


@pytest.fixture
async def client(gateway: FakeGateway) -> AsyncIterator[KapalClient]:
    async with KapalClient(gateway.url) as kapal:
        yield kapal


async def test_deploy_sends_the_spec_and_the_code(
    client: KapalClient, gateway: FakeGateway, hello_folder: Path
) -> None:
    function = await client.deploy(hello_folder, {"name": "hello", "env": {"A": "1"}})

    assert (function["name"], function["version"], function["env"]) == ("hello", 1, {"A": "1"})
    assert gateway.archive_names("hello") == {"handler.py"}


async def test_deploy_of_an_existing_name_is_a_409(client: KapalClient, hello_folder: Path) -> None:
    await client.deploy(hello_folder, {"name": "hello"})

    with pytest.raises(KapalAPIError) as caught:
        await client.deploy(hello_folder, {"name": "hello"})

    assert (caught.value.status, caught.value.code) == (409, "function_exists")


async def test_deploy_or_update_creates_then_adds_versions(
    client: KapalClient, gateway: FakeGateway, hello_folder: Path
) -> None:
    first, created = await client.deploy_or_update(hello_folder, {"name": "hello"})
    (hello_folder / "extra.py").write_text("z = 3\n")
    second, created_again = await client.deploy_or_update(hello_folder, {"name": "hello"})

    assert (first["version"], created) == (1, True)
    assert (second["version"], created_again) == (2, False)
    assert second["image"] == "kapal-fn/hello:2"
    assert gateway.archive_names("hello") == {"handler.py", "extra.py"}
    assert gateway.calls == [
        ("POST", "/v1/functions"),
        ("POST", "/v1/functions"),
        ("PUT", "/v1/functions/hello"),
    ]


async def test_update_of_a_missing_function_is_a_404(
    client: KapalClient, hello_folder: Path
) -> None:
    with pytest.raises(KapalAPIError) as caught:
        await client.update(hello_folder, {"name": "ghost"})

    assert caught.value.status == 404


async def test_too_large_a_folder_never_reaches_the_gateway(
    client: KapalClient, gateway: FakeGateway, hello_folder: Path
) -> None:
    with (hello_folder / "model.bin").open("wb") as fh:
        fh.truncate(51 * 1024 * 1024)

    with pytest.raises(KapalAPIError, match="limit is 50 MB"):
        await client.deploy_or_update(hello_folder, {"name": "hello"})

    assert gateway.calls == []


async def test_list_get_delete(client: KapalClient, hello_folder: Path) -> None:
    await client.deploy(hello_folder, {"name": "a"})
    await client.deploy(hello_folder, {"name": "b"})

    assert [fn["name"] for fn in await client.list()] == ["a", "b"]
    assert (await client.get("a"))["version"] == 1
    await client.delete("a")
    assert [fn["name"] for fn in await client.list()] == ["b"]


async def test_gateway_errors_carry_status_code_and_message(client: KapalClient) -> None:
    with pytest.raises(KapalAPIError) as caught:
        await client.get("ghost")

    assert (caught.value.status, caught.value.code) == (404, "function_not_found")
    assert str(caught.value) == "function 'ghost' not found"


async def test_health(client: KapalClient) -> None:
    assert await client.health() == {"status": "ok"}


async def test_an_error_without_a_json_body_still_says_what_happened() -> None:
    async def bad_gateway(request: web.Request) -> web.Response:
        return web.Response(status=502, text="upstream fell over")

    app = web.Application()
    app.router.add_get("/healthz", bad_gateway)
    async with TestServer(app) as server, KapalClient(str(server.make_url(""))) as kapal:
        with pytest.raises(KapalAPIError) as caught:
            await kapal.health()

    assert (caught.value.status, caught.value.code) == (502, "http_502")
    assert caught.value.message == "HTTP 502 Bad Gateway: upstream fell over"


async def test_connection_refused_says_kapal_is_not_running(dead_url: str) -> None:
    async with KapalClient(dead_url) as kapal:
        with pytest.raises(KapalAPIError) as caught:
            await kapal.list()

    assert (caught.value.status, caught.value.code) == (0, "unreachable")
    assert f"Kapal is not running at {dead_url}" in caught.value.message
    assert "make up" in caught.value.message and "kapal up" in caught.value.message


def test_url_comes_from_the_argument_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KAPAL_URL", raising=False)
    assert resolve_url() == "http://127.0.0.1:8080"
    monkeypatch.setenv("KAPAL_URL", "http://kapal.example:9000/")
    assert resolve_url() == "http://kapal.example:9000"
    assert resolve_url("http://other:1") == "http://other:1"


async def test_invoke_round_trips_binary_bodies(client: KapalClient, hello_folder: Path) -> None:
    await client.deploy(hello_folder, {"name": "hello"})
    payload = bytes(range(256)) * 64

    result = await client.invoke("hello", data=payload)

    assert result.status == 200 and result.ok
    assert result.body == payload
    assert result.headers["X-Echo-Method"] == "POST"
    assert result.headers["X-Kapal-Request-Id"] == "req-1"


async def test_invoke_passes_method_path_query_and_headers(
    client: KapalClient, hello_folder: Path
) -> None:
    await client.deploy(hello_folder, {"name": "hello"})

    result = await client.invoke(
        "hello",
        "/users/a b",
        method="DELETE",
        headers={"X-Custom": "yes"},
        query=[("k", "1"), ("k", "2"), ("q", "a&b")],
    )

    assert result.headers["X-Echo-Method"] == "DELETE"
    assert result.headers["X-Echo-Path"] == "users/a b"
    assert result.headers["X-Echo-Custom"] == "yes"
    assert json.loads(result.headers["X-Echo-Query"]) == [["k", "1"], ["k", "2"], ["q", "a&b"]]


async def test_invoke_without_data_is_a_get(client: KapalClient, hello_folder: Path) -> None:
    await client.deploy(hello_folder, {"name": "hello"})

    result = await client.invoke("hello")

    assert (result.headers["X-Echo-Method"], result.headers["X-Echo-Path"]) == ("GET", "")


async def test_invoke_returns_error_statuses_instead_of_raising(
    client: KapalClient, hello_folder: Path
) -> None:
    await client.deploy(hello_folder, {"name": "hello"})

    failed = await client.invoke("hello", query={"status": "500"})
    missing = await client.invoke("ghost")

    assert (failed.status, failed.ok) == (500, False)
    assert missing.status == 404
    assert json.loads(missing.body)["error"]["code"] == "function_not_found"
