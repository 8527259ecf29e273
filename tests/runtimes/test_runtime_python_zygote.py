"""The runtime's zygote (KAPAL_ZYGOTE_PORT), run on the host as a container runs it: worker
0 at start, more forked on demand, each a runtime of its own; SIGTERM drains them all."""

import asyncio
import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from runtime_python_support import RuntimeProcess, free_port, start_runtime, write_files
from test_runtime_python_server import init_body

HANDLER = """
import os
import time


def handle(event, context):
    time.sleep(float(event.query.get("sleep", "0")))
    print("served by", os.getpid())
    return {"pid": os.getpid(), "parent": os.getppid()}
"""


def command(port: int, line: str) -> dict[str, object]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(line.encode() + b"\n")
        answer: dict[str, object] = json.loads(sock.makefile().readline())
        return answer


def zygote_env(code: Path, **extra: str) -> tuple[dict[str, str], int]:
    """Ports with room for worker 1 (port + 2, log port + 2) next to them."""
    while True:
        port, zygote = free_port(), free_port()
        if len({port, port + 1, port + 2, port + 3, zygote}) == 5:
            break
    env = {
        "KAPAL_PORT": str(port),
        "KAPAL_LOG_PORT": str(port + 1),
        "KAPAL_ZYGOTE_PORT": str(zygote),
        "KAPAL_WORKERS_MAX": "1",
        "KAPAL_CODE_DIR": str(code),
        "KAPAL_FUNCTION": "forky",
        "KAPAL_VERSION": "2",
        **extra,
    }
    return env, zygote


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[tuple[RuntimeProcess, int]]:
    code = write_files(tmp_path / "function", {"handler.py": HANDLER})
    env, port = zygote_env(code)
    process = start_runtime(code, env)
    yield process, port
    process.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def wait_listening(port: int) -> None:
    for _ in range(500):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
        else:
            writer.close()
            return
    raise AssertionError(f"nothing listens on {port}")


async def test_a_forked_worker_is_a_runtime_of_its_own(
    zygote: tuple[RuntimeProcess, int], http: aiohttp.ClientSession
) -> None:
    process, port = zygote
    async with http.get(f"{process.url}/") as resp:
        first = await resp.json()
    assert first["parent"] == process.proc.pid  # worker 0 is the zygote's child

    forked = command(port, "fork")
    assert forked["worker"] == 1 and forked["port"] == process.port + 2
    assert forked["log_port"] == process.log_port + 2 and forked["prewarm"] is False
    await wait_listening(process.port + 2)
    async with http.get(f"http://127.0.0.1:{process.port + 2}/") as resp:
        second = await resp.json()
    assert second["pid"] == forked["pid"] != first["pid"]
    assert second["parent"] == process.proc.pid
    # Its own log port, with its own lines.
    async with http.get(f"http://127.0.0.1:{process.log_port + 2}/_/logs?after=0") as resp:
        assert f"served by {second['pid']}" in await resp.text()

    assert command(port, "fork") == {"error": "at most 1 workers"}
    listed = command(port, "list")["workers"]
    assert [w["worker"] for w in listed] == [0, 1]  # type: ignore[union-attr]
    assert command(port, "stop 0") == {"error": "no forked worker 0"}
    assert command(port, "reboot")["error"] == "unknown command 'reboot'"
    assert command(port, "stop 1") == {"stopped": 1}
    for _ in range(500):
        if [w["worker"] for w in command(port, "list")["workers"]] == [0]:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("worker 1 did not exit")
    async with http.get(f"{process.url}/") as resp:  # worker 0 serves on
        assert resp.status == 200
    assert command(port, "fork")["worker"] == 1  # its slot is free again


async def test_sigterm_drains_every_worker_then_the_zygote_exits(
    zygote: tuple[RuntimeProcess, int], http: aiohttp.ClientSession
) -> None:
    process, port = zygote
    command(port, "fork")
    await wait_listening(process.port + 2)
    slow = asyncio.create_task(http.get(f"http://127.0.0.1:{process.port + 2}/?sleep=0.5"))
    await asyncio.sleep(0.2)
    process.proc.send_signal(signal.SIGTERM)
    resp = await slow
    assert resp.status == 200  # in flight on the fork when SIGTERM came: finished
    assert await asyncio.to_thread(process.proc.wait, 15) == 0


async def test_when_worker_0_dies_the_zygote_ends(
    zygote: tuple[RuntimeProcess, int], http: aiohttp.ClientSession
) -> None:
    process, port = zygote
    forked = command(port, "fork")
    async with http.get(f"{process.url}/") as resp:
        first = await resp.json()
    os.kill(first["pid"], signal.SIGKILL)
    assert await asyncio.to_thread(process.proc.wait, 15) == 137  # the container ends
    with pytest.raises(ProcessLookupError):
        os.kill(int(str(forked["pid"])), 0)  # its fork was stopped (and reaped)


async def test_a_fork_of_an_initialized_prewarm_runtime_loads_the_code_already_in_place(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    code = tmp_path / "sandbox" / "function"
    env, port = zygote_env(
        code, KAPAL_PREWARM="1", KAPAL_DEPS_DIR=str(tmp_path / "sandbox" / "deps")
    )
    process = start_runtime(code, env)
    try:
        async with http.post(f"{process.url}/_/init", json=init_body()) as resp:
            assert resp.status == 200, await resp.text()
        forked = command(port, "fork")
        assert forked["prewarm"] is True
        await wait_listening(process.port + 2)
        fork_url = f"http://127.0.0.1:{process.port + 2}"
        async with http.get(f"{fork_url}/_/health") as resp:
            assert await resp.json() == {"status": "prewarm", "in_flight": 0}
        # What is on disk is what the fork loads: the same archives are not unpacked again.
        (code / "app.py").write_text("def handle(event, context):\n    return 'in place'\n")
        async with http.post(f"{fork_url}/_/init", json=init_body()) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(f"{fork_url}/hi") as resp:
            assert await resp.text() == "in place"
    finally:
        process.stop()
