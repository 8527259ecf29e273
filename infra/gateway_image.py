"""Kapal's gateway as an image (`kapal/gateway:HASH`), made offline like the runtime's.

FROM the Python OS layer, the gateway's packages (gateway/, scheduler/) and their
dependencies resolved on the host for the image's platform: the same recipe, cache and
tagging by an inputs hash as the base runtime images. The gateway in it runs as an
unprivileged user: it needs no root, since it reaches the engine it drives over TCP.
"""

import hashlib
import re
import shutil
import tempfile
import time
import tomllib
from pathlib import Path

import docker

from infra.errors import InfraError
from infra.host import Log
from infra.images import install_site
from infra.imagestore import build, image_labels, remove_other_tags
from infra.recipes import (
    BASE_LABEL,
    INPUTS_LABEL,
    OS_IMAGE,
    RUNTIME_PYTHON,
    RUNTIME_REQUIREMENTS,
    RUNTIME_USER,
    hash_files,
    os_inputs_hash,
    runtime_files,
    wheel_arch,
)
from infra.rootfs import ensure_os_image

GATEWAY_REPO = "kapal/gateway"
# Bumped to force a rebuild when the recipe changes in a way its text does not show.
GATEWAY_RECIPE_VERSION = "gateway/1"
# What the gateway process imports of this repository (checked: nothing of kapal/, infra/).
GATEWAY_PACKAGES = ("gateway", "scheduler")
# Dependencies of the project that the gateway never imports: the embedded Postgres (infra
# only; a gateway is given KAPAL_DATABASE_URL) and the CLI's tables and manifests.
LEFT_OUT = frozenset({"pgserver", "rich", "pyyaml"})
# scheduler.pydeps resolves a function's requirements.txt with `python -m pip`.
EXTRA_REQUIREMENTS = ("pip",)
GATEWAY_PORT = 8080
GATEWAY_HOME = "/tmp/kapal"

# The root filesystem is read-only in a service (a tmpfs on /tmp): KAPAL_HOME and HOME go
# there. Bytecode is compiled at build time, so nothing is written beside the sources.
GATEWAY_DOCKERFILE = f"""\
FROM {OS_IMAGE}
COPY site/ /opt/kapal/gateway/site/
COPY app/ /opt/kapal/gateway/app/
RUN python3 -m compileall -q /opt/kapal/gateway
ENV PYTHONPATH=/opt/kapal/gateway/app:/opt/kapal/gateway/site \\
    PYTHONUNBUFFERED=1 \\
    PYTHONDONTWRITEBYTECODE=1 \\
    HOME=/tmp \\
    KAPAL_HOME={GATEWAY_HOME} \\
    KAPAL_LISTEN=0.0.0.0:{GATEWAY_PORT}
WORKDIR /opt/kapal/gateway
USER {RUNTIME_USER}
EXPOSE {GATEWAY_PORT}
ENTRYPOINT ["python3", "-m", "gateway"]
"""

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def gateway_requirements(pyproject: Path) -> list[str]:
    """The project's dependencies that the gateway process needs, as pip requirements."""
    try:
        dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as err:
        raise InfraError(f"cannot read the dependencies of {pyproject}: {err}") from err
    wanted = []
    for requirement in dependencies:
        match = _NAME.match(requirement)
        if match is None:
            raise InfraError(f"{pyproject}: cannot read the requirement {requirement!r}")
        if match.group(1).lower().replace("_", "-") not in LEFT_OUT:
            wanted.append(requirement)
    return [*wanted, *EXTRA_REQUIREMENTS]


def gateway_inputs_hash(repo_root: Path, arch: str) -> str:
    """Changes exactly when the gateway image would come out different."""
    digest = hashlib.sha256()
    head = [
        GATEWAY_RECIPE_VERSION,
        os_inputs_hash(arch),
        arch,
        RUNTIME_PYTHON,
        *RUNTIME_REQUIREMENTS,
        *gateway_requirements(repo_root / "pyproject.toml"),
        GATEWAY_DOCKERFILE,
    ]
    for part in head:
        digest.update(b"%d:%s" % (len(part), part.encode()))
    for package in GATEWAY_PACKAGES:
        digest.update(b"%d:%s" % (len(package), package.encode()))
        hash_files(digest, repo_root / package)
    return digest.hexdigest()


def gateway_tag(inputs: str) -> str:
    return f"{GATEWAY_REPO}:{inputs[:16]}"


def gateway_image(client: docker.DockerClient, repo_root: Path, log: Log = print) -> str:
    """`kapal/gateway:HASH` of this checkout, made when missing; its tag."""
    for package in GATEWAY_PACKAGES:
        if not (repo_root / package / "__init__.py").is_file():
            raise InfraError(f"{repo_root / package} is missing: the gateway image needs it")
    arch = wheel_arch()
    inputs = gateway_inputs_hash(repo_root, arch)
    tag = gateway_tag(inputs)
    if (image_labels(client, tag) or {}).get(INPUTS_LABEL) == inputs:
        return tag
    started = time.monotonic()
    ensure_os_image(client, arch, log)
    log(f"gateway image: building {tag}")
    with tempfile.TemporaryDirectory(prefix="kapal-gateway-") as tmp:
        context = Path(tmp)
        for package in GATEWAY_PACKAGES:
            source = repo_root / package
            for path in runtime_files(source):
                target = context / "app" / package / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
        requirements = context / "requirements.txt"
        requirements.write_text("\n".join(gateway_requirements(repo_root / "pyproject.toml")))
        install_site(context / "site", arch, requirements, log, "gateway image")
        requirements.unlink()  # resolved into site/; not part of the image
        (context / "Dockerfile").write_text(GATEWAY_DOCKERFILE)
        build(client, context, tag, {INPUTS_LABEL: inputs, BASE_LABEL: "true"}, log)
    remove_other_tags(client, GATEWAY_REPO, tag)
    log(f"gateway image: {tag} ready in {time.monotonic() - started:.1f} s")
    return tag


__all__ = [
    "GATEWAY_PORT",
    "GATEWAY_REPO",
    "gateway_image",
    "gateway_inputs_hash",
    "gateway_requirements",
    "gateway_tag",
]
