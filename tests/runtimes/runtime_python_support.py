"""Starting the Python runtime as the container does (`python3 -m kapal_runtime`), on the host."""

import base64
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra.local import tar_gz

RUNTIME_DIR = Path(__file__).resolve().parents[2] / "runtimes" / "python"


@dataclass
class RuntimeProcess:
    proc: subprocess.Popen[bytes]
    port: int
    stderr_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_runtime(
    workdir: Path,
    env: dict[str, str],
    python: str = sys.executable,
    pythonpath: list[str] | None = None,
) -> RuntimeProcess:
    """Start the runtime with `workdir` as its working directory and wait until it listens."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KAPAL_")}
    full_env.update(
        PYTHONPATH=os.pathsep.join([str(RUNTIME_DIR), *(pythonpath or [])]),
        KAPAL_PORT=str(port),
        KAPAL_EVENT_LOOP="asyncio",  # the runtime image need not have uvloop
    )
    full_env.update(env)
    stderr_path = workdir.parent / f"{workdir.name}-stderr-{port}.log"
    workdir.mkdir(parents=True, exist_ok=True)
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [python, "-m", "kapal_runtime"],
            cwd=workdir,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    runtime = RuntimeProcess(proc, port, stderr_path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"runtime exited with {proc.returncode}:\n{runtime.stderr()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.02)
        else:
            return runtime
    runtime.stop()
    raise RuntimeError(f"runtime did not listen within 20 s:\n{runtime.stderr()}")


def write_files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def tar_gz_b64(files: dict[str, str | bytes]) -> str:
    """A base64 .tar.gz of the given files, as /_/init expects it."""
    return base64.b64encode(tar_gz(files)).decode()
