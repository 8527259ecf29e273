"""The gateway image's recipe: what goes in, and when it must be rebuilt."""

from pathlib import Path

import pytest

from infra.errors import InfraError
from infra.gateway_image import (
    GATEWAY_DOCKERFILE,
    gateway_inputs_hash,
    gateway_requirements,
    gateway_tag,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

PYPROJECT = """\
[project]
name = "kapal"
dependencies = [
    "aiohttp>=3.9,<4",
    "asyncpg>=0.29,<1",
    "pgserver>=0.1.4,<0.2",
    "rich>=13,<16",
    "PyYAML>=6,<7",
]
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    for package in ("gateway", "scheduler", "kapal", "tests"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f'"""{package}"""\n')
    (tmp_path / "gateway" / "main.py").write_text("def run() -> None: ...\n")
    return tmp_path


def test_hash_is_stable_and_names_the_tag(checkout: Path) -> None:
    inputs = gateway_inputs_hash(checkout, "x86_64")
    assert inputs == gateway_inputs_hash(checkout, "x86_64")
    assert gateway_tag(inputs) == f"kapal/gateway:{inputs[:16]}"


def test_hash_changes_when_a_gateway_or_scheduler_file_changes(checkout: Path) -> None:
    before = gateway_inputs_hash(checkout, "x86_64")
    (checkout / "gateway" / "main.py").write_text("def run() -> None: print('v2')\n")
    edited = gateway_inputs_hash(checkout, "x86_64")
    (checkout / "scheduler" / "pool.py").write_text("")
    added = gateway_inputs_hash(checkout, "x86_64")
    assert len({before, edited, added}) == 3


def test_hash_changes_with_the_dependencies_and_the_architecture(checkout: Path) -> None:
    before = gateway_inputs_hash(checkout, "x86_64")
    pyproject = checkout / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("asyncpg>=0.29", "asyncpg>=0.30"))
    assert gateway_inputs_hash(checkout, "x86_64") != before
    assert gateway_inputs_hash(checkout, "aarch64") != gateway_inputs_hash(checkout, "x86_64")


def test_hash_ignores_what_is_not_the_gateways(checkout: Path) -> None:
    before = gateway_inputs_hash(checkout, "x86_64")
    (checkout / "kapal" / "cli.py").write_text("print('cli')\n")
    (checkout / "tests" / "test_x.py").write_text("")
    cache = checkout / "gateway" / "__pycache__"
    cache.mkdir()
    (cache / "main.cpython-311.pyc").write_bytes(b"\0" * 16)
    assert gateway_inputs_hash(checkout, "x86_64") == before


def test_requirements_leave_out_the_embedded_postgres_and_the_cli(checkout: Path) -> None:
    assert gateway_requirements(checkout / "pyproject.toml") == [
        "aiohttp>=3.9,<4",
        "asyncpg>=0.29,<1",
        "pip",
    ]


def test_requirements_of_this_checkout_hold_what_the_gateway_imports() -> None:
    names = {
        r.split(">")[0].split("<")[0] for r in gateway_requirements(REPO_ROOT / "pyproject.toml")
    }
    assert {"aiohttp", "asyncpg", "docker", "pydantic-settings", "uvloop", "httptools"} <= names
    assert not names & {"pgserver", "rich", "pyyaml"}


def test_an_unreadable_pyproject_is_named(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    with pytest.raises(InfraError, match="dependencies"):
        gateway_requirements(tmp_path / "pyproject.toml")


def test_the_dockerfile_runs_the_gateway_unprivileged_on_8080() -> None:
    lines = GATEWAY_DOCKERFILE.splitlines()
    assert lines[0] == "FROM kapal/os-python:bookworm"
    assert "USER 10001:10001" in lines
    assert "EXPOSE 8080" in lines
    assert lines[-1] == 'ENTRYPOINT ["python3", "-m", "gateway"]'
    assert "KAPAL_LISTEN=0.0.0.0:8080" in GATEWAY_DOCKERFILE
    # The root filesystem is read-only in a service: its state goes to the /tmp tmpfs.
    assert "KAPAL_HOME=/tmp/kapal" in GATEWAY_DOCKERFILE
    assert "HOME=/tmp " in GATEWAY_DOCKERFILE
