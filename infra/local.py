"""A local Kapal gateway as a real process, for tests and benchmarks."""

from __future__ import annotations

import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import docker
import docker.errors

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_namespace() -> str:
    return "kt-" + secrets.token_hex(3)


class GatewayProcess:
    """`python -m gateway` as a real process, on its own port and namespace."""

    def __init__(
        self,
        database_url: str,
        namespace: str,
        log_dir: Path,
        log_level: str = "DEBUG",
        admin_key: str | None = None,
        listen_host: str = "127.0.0.1",
        **env: str,
    ) -> None:
        self.listen_host = listen_host
        self.database_url = database_url
        self.namespace = namespace
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"gateway-{namespace}-{self.port}.log"
        # Where the gateway writes the first admin key of a new database.
        self.key_path = log_dir / f"admin-{namespace}-{self.port}.key"
        # The admin key: given (a database another gateway bootstrapped) or bootstrapped.
        self.admin_key = admin_key
        self.env = {"KAPAL_LOG_LEVEL": log_level, **env}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """Headers that authenticate a request with the admin key."""
        assert self.admin_key, "this gateway has no admin key"
        return {"Authorization": f"Bearer {self.admin_key}"}

    def start(self, timeout_s: float = 30.0) -> None:
        env = {
            **os.environ,
            "KAPAL_DATABASE_URL": self.database_url,
            "KAPAL_NAMESPACE": self.namespace,
            "KAPAL_LISTEN": f"{self.listen_host}:{self.port}",
            "KAPAL_BOOTSTRAP_KEY_FILE": str(self.key_path),
            # Shared by gateways of one namespace (a restart must decrypt what it stored).
            "KAPAL_SECRET_KEY_FILE": str(self.key_path.parent / f"secret-{self.namespace}.key"),
            # Shared by the gateways of a test session or benchmark, and removed with it.
            "KAPAL_DEPS_CACHE_DIR": str(self.key_path.parent / "deps"),
            **self.env,
        }
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway"], cwd=REPO, env=env, stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited at start-up:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        if self.key_path.exists():
                            self.admin_key = self.key_path.read_text().strip()
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise RuntimeError(f"gateway did not answer /healthz in time:\n{self.logs()}")

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def logs(self) -> str:
        try:
            return self.log_path.read_text()[-20000:]
        except OSError:
            return ""


def managed_containers(
    client: docker.DockerClient, namespace: str, function: str | None = None
) -> list[Any]:
    labels = ["kapal.managed=true", f"kapal.namespace={namespace}"]
    if function is not None:
        labels.append(f"kapal.function={function}")
    return client.containers.list(all=True, filters={"label": labels}, ignore_removed=True)


def cleanup_namespace(client: docker.DockerClient, namespace: str) -> list[str]:
    """Remove whatever a test namespace left; returns the leaks (for the assertion).

    Images of functions still deployed when the gateway stopped are expected, not leaks.
    """
    left = []
    for c in managed_containers(client, namespace):
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            continue  # its removal was already under way when it was listed: not left
        except docker.errors.APIError as e:
            if e.status_code == 409:  # "removal already in progress"
                continue
            raise
        left.append(f"container {c.name}")
    for img in client.images.list(filters={"label": f"kapal.namespace={namespace}"}):
        client.images.remove(str(img.id), force=True)
    for name in (f"{namespace}-functions", f"{namespace}-functions-internal"):
        for net in client.networks.list(names=[name]):
            if net.name == name:
                left.append(f"network {net.name}")
                net.remove()
    return left


def tar_gz(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
