"""A Docker registry on the host for the image-function tests, with a password.

Distribution's registry binary (Debian's `docker-registry`), on 127.0.0.1 at a free port
(the engine treats 127.0.0.0/8 registries as insecure, so plain HTTP works), htpasswd
auth, storage in a temporary folder. Installed when missing, like the suite's other tools.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from infra import host
from infra.registry import REGISTRY_TOOLS, htpasswd_entry, registry_config
from tests.support import free_port


class Registry:
    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password
        self.root = Path(tempfile.mkdtemp(prefix="kapal-test-registry-"))
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        host.ensure_commands(REGISTRY_TOOLS)
        (self.root / "htpasswd").write_bytes(htpasswd_entry(self.username, self.password))
        config = self.root / "config.yml"
        config.write_text(registry_config(self.host, f"{self.root}/data", f"{self.root}/htpasswd"))
        with open(self.root / "registry.log", "wb") as err:  # the child keeps its own copy
            self._proc = subprocess.Popen(
                ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=err
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
            except urllib.error.HTTPError as e:
                if e.code == 401:  # up, and asking for the password
                    return
            except OSError:
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                log = (self.root / "registry.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"the test registry did not start: {log[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        shutil.rmtree(self.root, ignore_errors=True)
