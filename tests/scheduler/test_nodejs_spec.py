"""A Node.js function's spec: its default handler, its handler form and styles, its npm
dependencies read from package.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from scheduler import npm
from scheduler.models import FunctionConfig


def test_a_node_function_defaults_to_lambdas_index_handler() -> None:
    assert FunctionConfig(runtime="nodejs").handler == "index.handler"
    assert FunctionConfig().handler == "handler.handle"
    assert FunctionConfig(runtime="nodejs", handler="src/app.main").handler == "src/app.main"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"runtime": "nodejs", "handler": "../index.handler"}, "handler"),
        ({"runtime": "nodejs", "handler": "index"}, "handler"),
        ({"runtime": "nodejs", "handler": "/abs/index.handler"}, "handler"),
        ({"runtime": "python", "handler": "src/app.main"}, "handler"),
        ({"runtime": "nodejs", "style": "wsgi"}, "style"),
        ({"runtime": "ruby"}, "runtime"),
    ],
)
def test_a_bad_node_spec_names_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        FunctionConfig(**fields)
    assert [e["loc"] for e in err.value.errors()] == [(field,)]


def test_dependencies_come_from_package_json(tmp_path: Path) -> None:
    assert npm.dependencies(tmp_path) == {}
    manifest = {"name": "f", "dependencies": {"ms": "^2.1.3"}, "devDependencies": {"x": "1"}}
    (tmp_path / "package.json").write_text(json.dumps(manifest))
    assert npm.dependencies(tmp_path) == {"ms": "^2.1.3"}
    (tmp_path / "package.json").write_text('{"name": "no deps"}')
    assert npm.dependencies(tmp_path) == {}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{oops", "not valid JSON"),
        ("[1]", "a JSON object"),
        ('{"dependencies": ["ms"]}', "map names to version strings"),
    ],
)
def test_a_bad_package_json_says_why(tmp_path: Path, text: str, says: str) -> None:
    (tmp_path / "package.json").write_text(text)
    with pytest.raises(npm.InvalidPackageJson, match=says):
        npm.dependencies(tmp_path)


def test_the_cache_key_follows_what_decides_node_modules(tmp_path: Path) -> None:
    def key(manifest: dict[str, Any], lock: str | None = None) -> str:
        (tmp_path / "package.json").write_text(json.dumps(manifest))
        if lock is not None:
            (tmp_path / "package-lock.json").write_text(lock)
        return npm.cache_key(tmp_path)

    first = key({"name": "f", "version": "1.0.0", "dependencies": {"ms": "2.1.3"}})
    # A new version number or script (a code-only change) keeps the resolved folder...
    assert (
        key(
            {
                "name": "f",
                "version": "1.0.1",
                "scripts": {"x": "y"},
                "dependencies": {"ms": "2.1.3"},
            }
        )
        == first
    )
    # ... other dependencies, overrides or a lock file do not.
    assert key({"dependencies": {"ms": "2.1.2"}}) != first
    assert key({"dependencies": {"ms": "2.1.3"}, "overrides": {"ms": "2.1.2"}}) != first
    assert key({"dependencies": {"ms": "2.1.3"}}, lock='{"lockfileVersion": 3}') != first
