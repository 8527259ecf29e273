"""A throwaway Kapal for one benchmark: embedded Postgres, a gateway, its own namespace."""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import docker

from infra.postgres import Postgres, ensure_postgres

REPO = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def tar_gz(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Kapal:
    """`with Kapal(**env) as k:` — k.url, k.database_url; everything removed after."""

    def __init__(self, **env: str) -> None:
        self.env = env
        self.tmp = Path(tempfile.mkdtemp(prefix="kapal-bench-"))
        self.namespace = "kb-" + secrets.token_hex(3)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pg: Postgres | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def database_url(self) -> str:
        assert self.pg is not None
        return self.pg.url

    def __enter__(self) -> Kapal:
        # Always a throwaway embedded server, never a database named by the environment.
        external = os.environ.pop("KAPAL_DATABASE_URL", None)
        try:
            self.pg = ensure_postgres(self.tmp, log)
        finally:
            if external is not None:
                os.environ["KAPAL_DATABASE_URL"] = external
        env = {
            **os.environ,
            "KAPAL_DATABASE_URL": self.pg.url,
            "KAPAL_NAMESPACE": self.namespace,
            "KAPAL_LISTEN": f"127.0.0.1:{self.port}",
            "KAPAL_LOG_LEVEL": "WARNING",
            **self.env,
        }
        out = open(self.tmp / "gateway.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway"], cwd=REPO, env=env, stdout=out, stderr=out
        )
        out.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("gateway exited:\n" + self.logs())
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise RuntimeError("gateway did not start:\n" + self.logs())

    def cpu_s(self) -> float:
        """CPU seconds the gateway process has used (user + system)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def logs(self) -> str:
        try:
            return (self.tmp / "gateway.log").read_text()[-5000:]
        except OSError:
            return ""

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        client = docker.from_env()
        try:
            labels = ["kapal.managed=true", f"kapal.namespace={self.namespace}"]
            for c in client.containers.list(all=True, filters={"label": labels}):
                c.remove(force=True)
            for img in client.images.list(filters={"label": f"kapal.namespace={self.namespace}"}):
                client.images.remove(str(img.id), force=True)
            for net in client.networks.list(names=[f"{self.namespace}-functions"]):
                net.remove()
        finally:
            client.close()
            if self.pg is not None:
                self.pg.stop()
            shutil.rmtree(self.tmp, ignore_errors=True)

    async def deploy(
        self, http: aiohttp.ClientSession, code: str, spec: dict[str, Any]
    ) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("spec", json.dumps(spec), content_type="application/json")
        form.add_field(
            "code",
            tar_gz({"handler.py": code}),
            filename="code.tar.gz",
            content_type="application/gzip",
        )
        async with http.post(f"{self.url}/v1/functions", data=form) as r:
            body: dict[str, Any] = await r.json()
            if r.status != 201:
                raise RuntimeError(f"deploy failed: {body}")
            return body
