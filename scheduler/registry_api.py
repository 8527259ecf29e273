"""A registry's HTTP API (v2, the distribution project's): list and delete a repository's
tags. Pushing goes through an engine; only deleting needs the registry itself.

A registry may speak HTTPS or, on a private network, plain HTTP (as engines allow for an
`--insecure-registry`): HTTPS is tried first and HTTP only when the TLS handshake fails.
Blocking calls (urllib): callers run them on a thread.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from scheduler.errors import BackendError

# Without it a registry may answer with an older manifest format, whose digest is not
# the one it stores the image under (and a delete by it fails).
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = ", ".join(
    (
        MANIFEST_V2,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    )
)
TIMEOUT_S = 30.0


class RegistryAPI:
    def __init__(self, registry: str, auth: tuple[str, str] | None = None) -> None:
        self.registry = registry
        self._auth = auth
        self._scheme: str | None = None

    def tags(self, repository: str) -> list[str]:
        """Every tag of `repository` (none when the registry does not know it)."""
        found = self._request("GET", f"/v2/{repository}/tags/list")
        if found is None:
            return []
        return list(json.loads(found[0]).get("tags") or [])

    def digest(self, repository: str, reference: str) -> str | None:
        """The digest a tag (or digest) names, as the registry stores it."""
        found = self._request("HEAD", f"/v2/{repository}/manifests/{reference}")
        return None if found is None else found[1].get("Docker-Content-Digest")

    def delete_repository(self, repository: str) -> list[str]:
        """Delete every tag of `repository` (by the digests they name); the tags deleted."""
        deleted = []
        for tag in self.tags(repository):
            digest = self.digest(repository, tag)
            if digest is None:
                continue  # gone meanwhile (another tag of the same digest went first)
            self._request("DELETE", f"/v2/{repository}/manifests/{digest}")
            deleted.append(tag)
        return deleted

    def _request(self, method: str, path: str) -> tuple[bytes, Any] | None:
        """(body, headers) of a request; None on 404. Other failures: BackendError."""
        schemes = [self._scheme] if self._scheme else ["https", "http"]
        for scheme in schemes:
            request = urllib.request.Request(
                f"{scheme}://{self.registry}{path}", method=method, headers={"Accept": ACCEPT}
            )
            if self._auth is not None:
                token = base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode()).decode()
                request.add_header("Authorization", f"Basic {token}")
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                    self._scheme = scheme
                    return response.read(), response.headers
            except urllib.error.HTTPError as e:
                self._scheme = scheme
                if e.code == 404:
                    return None
                detail = e.read().decode(errors="replace").strip()
                raise BackendError(
                    f"registry {self.registry}: {method} {path}: {e.code} {detail}"
                ) from e
            except urllib.error.URLError as e:
                if isinstance(e.reason, ssl.SSLError) and scheme == "https" and not self._scheme:
                    continue  # a plain-HTTP registry: try that
                raise BackendError(f"registry {self.registry} unreachable: {e.reason}") from e
        raise BackendError(f"registry {self.registry}: no scheme answered")
