"""Hostile functions: each attempt is contained, reported, and other functions keep answering."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from tests.conftest import GatewayFactory, PostgresServer
from tests.support import GatewayProcess, cleanup_namespace, deploy, new_namespace

pytestmark = pytest.mark.integration

HOSTILE = r"""
import os, signal, socket, struct, time

def gateway_ip():
    # The bridge's address on the host: the default route of the container.
    with open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000":
                return socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))

def connect(host, port):
    s = socket.socket()
    s.settimeout(1.5)
    try:
        s.connect((host, int(port)))
        return "connected"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()

def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        return type(e).__name__

def handle(event, context):
    q = event.query
    if event.path == "/files":
        return {
            "shadow": read("/etc/shadow"),
            "marker": read(q["marker"]),
            "hostname": read("/etc/hostname").strip(),
            "uid": os.getuid(),
        }
    if event.path == "/net":
        host = gateway_ip()
        out = {p: connect(host, p) for p in q.getall("port", [])}
        for peer in q.getall("peer", []):
            out[peer] = connect(*peer.rsplit(":", 1))
        return out | {"internet": connect("1.1.1.1", 53)}
    if event.path == "/write":
        out = {}
        for path in ("/etc/kapal-pwned", "/opt/kapal/function/x", "/run/x"):
            try:
                open(path, "w").write("x")
                out[path] = "written"
            except OSError as e:
                out[path] = type(e).__name__
        return out
    if event.path == "/forkbomb":
        children, error = [], None
        try:
            for _ in range(5000):
                pid = os.fork()
                if pid == 0:
                    time.sleep(60)
                    os._exit(0)
                children.append(pid)
        except OSError as e:
            error = type(e).__name__
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        for pid in children:
            os.waitpid(pid, 0)
        return {"forked": len(children), "error": error}
    if event.path == "/fill-tmp":
        written, error = 0, None
        chunk = b"x" * (1 << 20)
        try:
            with open("/tmp/fill", "wb") as f:
                for _ in range(1024):
                    f.write(chunk)
                    f.flush()
                    written += len(chunk)
        except OSError as e:
            error = type(e).__name__
        finally:
            os.unlink("/tmp/fill")
        return {"written_mb": written >> 20, "error": error}
    if event.path == "/oom":
        hog = []
        while True:
            hog.append(bytearray(16 << 20))
    return "ok"
"""

BYSTANDER = "def handle(event, context):\n    return 'still here'\n"


@pytest.fixture(scope="module")
def host_service() -> Iterator[int]:
    """A service on the host bound to every address, as a Postgres on 0.0.0.0 would be."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    server.close()


def deploy_hostile(gw: GatewayProcess) -> None:
    async def go() -> None:
        async with aiohttp.ClientSession() as http:
            for name, code, spec in (
                ("hostile", HOSTILE, {"limits": {"memory_mb": 128, "timeout_s": 20}}),
                ("bystander", BYSTANDER, {}),
                # Room for 500 sleeping children, so the pids limit is what stops them.
                ("forker", HOSTILE, {"limits": {"memory_mb": 2048}}),
                ("offline", HOSTILE, {"network": {"outbound": False}}),
            ):
                status, body = await deploy(http, gw, {"handler.py": code}, {"name": name, **spec})
                assert status == 201, body

    asyncio.run(go())


@pytest.fixture(scope="module")
def gw(
    postgres: PostgresServer, docker_client: docker.DockerClient, log_dir: Path
) -> Iterator[GatewayProcess]:
    """A gateway that listens on every address, so functions could try its real port."""
    gw = GatewayProcess(postgres.new_database(), new_namespace(), log_dir, listen_host="0.0.0.0")
    gw.start()
    deploy_hostile(gw)
    yield gw
    gw.stop()
    leftovers = cleanup_namespace(docker_client, gw.namespace)
    assert not leftovers, f"left behind after the gateway stopped: {leftovers}"


async def call(http: aiohttp.ClientSession, gw: GatewayProcess, path: str) -> tuple[int, Any]:
    async with http.get(f"{gw.url}/fn/{path}", headers=gw.headers) as r:
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, await r.text()


async def test_host_files_are_not_visible(
    gw: GatewayProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    marker = tmp_path / "host-only-marker"
    marker.write_text("host secret")
    status, got = await call(http, gw, f"hostile/files?marker={marker}")
    assert status == 200, got
    assert got["marker"] == "FileNotFoundError"
    # The container's own /etc/shadow, unreadable to its unprivileged user.
    assert got["shadow"] == "PermissionError"
    assert got["uid"] == 10001
    assert got["hostname"] != socket.gethostname()


async def test_root_filesystem_is_read_only(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    status, got = await call(http, gw, "hostile/write")
    assert status == 200, got
    assert set(got.values()) <= {"OSError", "PermissionError"}, got


async def test_host_services_are_unreachable_from_functions(
    gw: GatewayProcess, http: aiohttp.ClientSession, host_service: int
) -> None:
    ports = [gw.port, host_service, 5432]
    query = "&".join(f"port={p}" for p in ports)
    status, got = await call(http, gw, f"hostile/net?{query}")
    assert status == 200, got
    for port in ports:
        assert got[str(port)] in ("ConnectionRefusedError", "TimeoutError"), got
    # The gateway does answer on that port from the host: the firewall made the difference.
    async with http.get(f"http://127.0.0.1:{gw.port}/healthz") as r:
        assert r.status == 200


async def test_functions_cannot_reach_each_others_instances(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    """A private function's instance is reachable only through the gateway (and its keys)."""
    assert (await call(http, gw, "bystander"))[1] == "still here"
    async with http.get(f"{gw.url}/v1/functions/bystander", headers=gw.headers) as r:
        peer = (await r.json())["instances"][0]["address"]
    async with http.get(f"http://{peer}/") as r:  # the host (the gateway) does reach it
        assert r.status == 200
    status, got = await call(http, gw, f"hostile/net?peer={peer}")
    assert status == 200, got
    assert got[peer] in ("TimeoutError", "ConnectionRefusedError", "OSError"), got


async def test_without_outbound_the_internet_is_unreachable(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    status, got = await call(http, gw, f"offline/net?port={gw.port}")
    assert status == 200, got
    assert got["internet"] in ("TimeoutError", "OSError", "ConnectionRefusedError")
    assert got[str(gw.port)] in ("ConnectionRefusedError", "TimeoutError")


async def test_fork_bomb_hits_the_pids_limit(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    status, got = await call(http, gw, "forker/forkbomb")
    assert status == 200, got
    assert got["error"] == "BlockingIOError"  # EAGAIN from fork: the pids cgroup said no
    assert 0 < got["forked"] < 512
    assert (await call(http, gw, "forker/"))[1] == "ok"
    assert (await call(http, gw, "bystander"))[1] == "still here"


async def test_filling_tmp_stops_at_its_size_cap(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    status, got = await call(http, gw, "hostile/fill-tmp")
    assert status == 200, got
    assert got["error"] == "OSError"  # ENOSPC
    assert 60 <= got["written_mb"] <= 64


async def test_memory_hog_is_killed_and_reported_as_out_of_memory(
    gw: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    status, got = await call(http, gw, "hostile/oom")
    assert status == 502, got
    assert got["error"]["code"] == "out_of_memory"
    assert "out of memory" in got["error"]["message"]
    assert "128 MiB" in got["error"]["message"]
    # A new instance serves the next call; the other function never noticed.
    assert (await call(http, gw, "hostile/"))[1] == "ok"
    assert (await call(http, gw, "bystander"))[1] == "still here"


async def test_without_isolation_the_host_service_is_reachable(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, host_service: int
) -> None:
    """The control: the hostile function does reach the host when the rules are off."""
    gw = make_gateway(KAPAL_ISOLATE_HOST="false")
    status, body = await deploy(http, gw, {"handler.py": HOSTILE}, {"name": "hostile"})
    assert status == 201, body
    status, got = await call(http, gw, f"hostile/net?port={host_service}")
    assert status == 200, got
    assert got[str(host_service)] == "connected"
