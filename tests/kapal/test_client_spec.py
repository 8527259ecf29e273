from pathlib import Path

import pytest

from gateway.wire import DeploySpec
from kapal.errors import SpecError
from kapal.spec import default_name, image_spec, load_spec, merge


def write_toml(folder: Path, text: str) -> None:
    (folder / "kapal.toml").write_text(text)


def test_without_kapal_toml_the_name_comes_from_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "My_Func"
    folder.mkdir()

    assert load_spec(folder) == {"name": "my-func"}


def test_default_name_of_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "img_resize").mkdir()
    monkeypatch.chdir(tmp_path / "img_resize")

    assert default_name(Path(".")) == "img-resize"


def test_kapal_toml_is_read_and_options_override_it(tmp_path: Path) -> None:
    write_toml(
        tmp_path,
        """
name = "hello"
handler = "main.run"
[env]
GREETING = "hi"
PORT = 8080
DEBUG = true
[limits]
timeout_s = 10
memory_mb = 256
[scaling]
max = 4
concurrency = 8
""",
    )

    spec = load_spec(
        tmp_path,
        {
            "name": None,
            "handler": None,
            "env": {"GREETING": "hello", "EXTRA": "1"},
            "limits": {"timeout_s": None, "memory_mb": 512},
            "scaling": {"min": 1, "max": None},
        },
    )

    assert spec == {
        "name": "hello",
        "handler": "main.run",
        "env": {"GREETING": "hello", "PORT": "8080", "DEBUG": "true", "EXTRA": "1"},
        "limits": {"timeout_s": 10.0, "memory_mb": 512},
        "scaling": {"min": 1, "max": 4, "concurrency": 8},
    }


def test_name_option_beats_kapal_toml(tmp_path: Path) -> None:
    write_toml(tmp_path, 'name = "from-file"\nruntime = "python"\n')

    spec = load_spec(tmp_path, {"name": "from-cli"})

    assert (spec["name"], spec["runtime"]) == ("from-cli", "python")


def test_kapal_toml_takes_every_field_the_api_takes(tmp_path: Path) -> None:
    write_toml(
        tmp_path,
        """
name = "hook"
public = true
secrets = ["db-pw"]
[network]
outbound = false
[async]
max_retries = 0
concurrency = 4
""",
    )

    spec = load_spec(tmp_path, {"scaling": {"max": None}, "network": {"outbound": None}})

    assert spec == {
        "name": "hook",
        "public": True,
        "secrets": ["db-pw"],
        "network": {"outbound": False},
        "async": {"max_retries": 0, "concurrency": 4},
    }
    deployed = DeploySpec.model_validate(spec)
    assert (deployed.async_.max_retries, deployed.network.outbound) == (0, False)


def test_only_what_is_given_is_sent(tmp_path: Path) -> None:
    write_toml(tmp_path, "[limits]\nmemory_mb = 512\n")

    spec = load_spec(tmp_path, {"env": {}, "scaling": {"min": None}, "public": None})

    assert spec == {"name": default_name(tmp_path), "limits": {"memory_mb": 512}}


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ('[env]\nKAPAL_X = "1"\n', "env"),
        ('handler = "main"\n', "handler"),
        ('name = "Not_A_Label"\n', "name"),
        ("[scaling]\nmin = 5\nmax = 2\n", "scaling.max"),
        ("[async]\nmax_retries = -1\n", "async.max_retries"),
        ('secrets = ["a", "a"]\n', "secrets"),
    ],
)
def test_a_bad_value_is_named_with_the_file(tmp_path: Path, toml: str, field: str) -> None:
    write_toml(tmp_path, toml)

    with pytest.raises(SpecError, match=rf"kapal\.toml.*: {field}: "):
        load_spec(tmp_path)


def test_an_unknown_key_is_named(tmp_path: Path) -> None:
    write_toml(tmp_path, "[limits]\nmemroy_mb = 512\n")

    with pytest.raises(SpecError, match=r"limits\.memroy_mb"):
        load_spec(tmp_path)


def test_a_wrong_type_is_named(tmp_path: Path) -> None:
    write_toml(tmp_path, '[scaling]\nmax = "lots"\n')

    with pytest.raises(SpecError, match=r"scaling\.max.*'lots'"):
        load_spec(tmp_path)


def test_broken_toml_names_the_file(tmp_path: Path) -> None:
    write_toml(tmp_path, "name = \n")

    with pytest.raises(SpecError, match=r"kapal\.toml"):
        load_spec(tmp_path)


def test_merge_skips_unset_options_and_merges_sections() -> None:
    base = {"name": "a", "env": {"A": "1"}, "limits": {"cpus": 1}}

    merged = merge(base, {"name": None, "env": {"B": "2"}, "scaling": {"min": None, "max": 3}})

    assert merged == {
        "name": "a",
        "env": {"A": "1", "B": "2"},
        "limits": {"cpus": 1},
        "scaling": {"max": 3},
    }
    assert base == {"name": "a", "env": {"A": "1"}, "limits": {"cpus": 1}}


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is not a folder"):
        load_spec(tmp_path / "nope")


def test_an_image_function_is_deployed_from_options_alone() -> None:
    spec = image_spec({"name": "web", "image": "127.0.0.1:5000/app:1", "port": 9000, "env": {}})
    assert spec == {
        "name": "web",
        "runtime": "image",
        "image": "127.0.0.1:5000/app:1",
        "port": 9000,
    }
    with pytest.raises(SpecError, match="--name"):
        image_spec({"image": "app:1"})
    with pytest.raises(SpecError, match=r"from options\): health_path"):
        image_spec({"name": "web", "image": "app:1", "health_path": "healthz"})
