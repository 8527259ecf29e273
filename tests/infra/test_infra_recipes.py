"""The inputs hash says exactly when the runtime image must be rebuilt."""

import os
from pathlib import Path

import pytest

from infra.errors import InfraError
from infra.recipes import (
    NODEJS_OS,
    RUNTIME_REQUIREMENTS,
    nodejs_inputs_hash,
    os_inputs_hash,
    pip_target_argv,
    runtime_files,
    runtime_inputs_hash,
    wheel_arch,
)


@pytest.fixture
def runtime(tmp_path: Path) -> Path:
    package = tmp_path / "runtimes" / "python" / "kapal_runtime"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text("print('serving')\n")
    return package.parent


def test_hash_is_stable_for_the_same_files(runtime: Path) -> None:
    assert runtime_inputs_hash(runtime, "x86_64") == runtime_inputs_hash(runtime, "x86_64")


def test_hash_changes_when_a_runtime_file_changes(runtime: Path) -> None:
    before = runtime_inputs_hash(runtime, "x86_64")
    (runtime / "kapal_runtime" / "__main__.py").write_text("print('serving v2')\n")
    assert runtime_inputs_hash(runtime, "x86_64") != before


def test_hash_changes_when_a_file_is_added_or_renamed(runtime: Path) -> None:
    before = runtime_inputs_hash(runtime, "x86_64")
    extra = runtime / "kapal_runtime" / "extra.py"
    extra.write_text("")
    added = runtime_inputs_hash(runtime, "x86_64")
    extra.rename(runtime / "kapal_runtime" / "other.py")
    assert len({before, added, runtime_inputs_hash(runtime, "x86_64")}) == 3


def test_hash_ignores_caches_and_timestamps(runtime: Path) -> None:
    before = runtime_inputs_hash(runtime, "x86_64")
    cache = runtime / "kapal_runtime" / "__pycache__"
    cache.mkdir()
    (cache / "__main__.cpython-311.pyc").write_bytes(b"\0" * 16)
    (runtime / ".mypy_cache").mkdir()
    (runtime / ".mypy_cache" / "x.json").write_text("{}")
    os.utime(runtime / "kapal_runtime" / "__main__.py", (1, 1))
    assert runtime_inputs_hash(runtime, "x86_64") == before
    assert [p.name for p in runtime_files(runtime)] == ["__init__.py", "__main__.py"]


def test_hash_depends_on_the_architecture(runtime: Path) -> None:
    assert runtime_inputs_hash(runtime, "x86_64") != runtime_inputs_hash(runtime, "aarch64")
    assert os_inputs_hash("x86_64") != os_inputs_hash("aarch64")


def test_wheel_arch_names_manylinux_architectures() -> None:
    assert wheel_arch("x86_64") == "x86_64"
    assert wheel_arch("AMD64") == "x86_64"
    assert wheel_arch("arm64") == "aarch64"
    with pytest.raises(InfraError, match="riscv64"):
        wheel_arch("riscv64")


def test_pip_resolves_binary_wheels_for_the_image_python(tmp_path: Path) -> None:
    argv = pip_target_argv("python3", tmp_path / "site", "aarch64", None)
    assert argv[:4] == ["python3", "-m", "pip", "install"]
    assert "--only-binary=:all:" in argv
    platforms = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--platform"]
    assert platforms == [
        "manylinux2014_aarch64",
        "manylinux_2_17_aarch64",
        "manylinux_2_28_aarch64",
    ]
    assert argv[argv.index("--python-version") + 1] == "3.11"
    assert argv[-len(RUNTIME_REQUIREMENTS) :] == list(RUNTIME_REQUIREMENTS)
    with_file = pip_target_argv("python3", tmp_path, "x86_64", tmp_path / "requirements.txt")
    assert with_file[-2:] == ["--requirement", str(tmp_path / "requirements.txt")]


def test_nodejs_has_an_os_layer_and_a_hash_of_its_own(runtime: Path, tmp_path: Path) -> None:
    node = tmp_path / "runtimes" / "nodejs"
    node.mkdir(parents=True)
    (node / "main.js").write_text("'use strict';\n")
    assert os_inputs_hash("x86_64", NODEJS_OS) != os_inputs_hash("x86_64")
    before = nodejs_inputs_hash(node, "x86_64")
    python = runtime_inputs_hash(runtime, "x86_64")
    (node / "main.js").write_text("'use strict'; // v2\n")
    assert nodejs_inputs_hash(node, "x86_64") != before
    # Python's image is not rebuilt for a change of the Node.js runtime.
    assert runtime_inputs_hash(runtime, "x86_64") == python
