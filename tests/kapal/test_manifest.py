"""kapal.yaml without a gateway: lines of bad fields, and how existing webhooks and
schedules are paired with the manifest's."""

from pathlib import Path

import pytest

from kapal.deploy import pair
from kapal.manifest import ManifestError, handler_file, load_manifest

GOOD = """\
functions:
  a:
    folder: a
    handler: pkg.mod.run
    schedules:
      - cron: "@hourly"
"""


def test_a_good_manifest_gives_specs_with_names(tmp_path: Path) -> None:
    (tmp_path / "kapal.yaml").write_text(GOOD)

    manifest = load_manifest(tmp_path / "kapal.yaml")

    [fn] = manifest.functions
    assert fn.spec == {"name": "a", "handler": "pkg.mod.run"}
    assert fn.folder == tmp_path / "a"
    assert fn.schedules[0].key("a") == ("a", "@hourly", "UTC", "null")
    assert (
        manifest.where("functions", "a", "handler")
        == f"{tmp_path / 'kapal.yaml'}:4: functions.a.handler"
    )


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("", "1: functions: Field required"),
        ("functions: {}\n", "1: functions: Dictionary should have at least 1 item"),
        ("functions:\n  a:\n    handler: x.y\n", "3: functions.a.folder: Field required"),
        (
            "functions:\n  a:\n    folder: a\n    limits:\n      cpus: lots\n",
            "5: functions.a.limits.cpus",
        ),
        (
            "functions:\n  a:\n    folder: a\n    schedules:\n      - cron: '@daily'\n"
            "        timezone: Mars/Base\n",
            "6: functions.a.schedules.0.timezone: unknown time zone",
        ),
        ("extra: 1\nfunctions:\n  a:\n    folder: a\n", "1: extra: Extra inputs are not permitted"),
    ],
)
def test_a_bad_manifest_names_line_and_field(tmp_path: Path, text: str, where: str) -> None:
    (tmp_path / "kapal.yaml").write_text(text)

    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path / "kapal.yaml")

    assert str(caught.value).startswith(f"{tmp_path / 'kapal.yaml'}:{where}")


def test_a_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "kapal.yaml")


def test_handler_file(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text("")
    (tmp_path / "pkg" / "mod").mkdir(parents=True)
    (tmp_path / "pkg" / "mod" / "__init__.py").write_text("")

    assert handler_file(tmp_path, "handler.handle") == tmp_path / "handler.py"
    assert handler_file(tmp_path, "pkg.mod.run") == tmp_path / "pkg" / "mod" / "__init__.py"
    assert handler_file(tmp_path, "other.handle") is None
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.mjs").write_text("export const main = async () => 'ok';\n")
    assert handler_file(tmp_path, "src/app.main", "nodejs") == tmp_path / "src" / "app.mjs"
    assert handler_file(tmp_path, "index.handler", "nodejs") is None


def test_existing_and_wanted_pair_one_to_one() -> None:
    existing = [{"id": 1, "k": "a"}, {"id": 2, "k": "a"}, {"id": 3, "k": "b"}]
    kept: list[dict[str, object]] = []
    remove: list[dict[str, object]] = []
    create: list[str] = []

    pair(existing, ["a", "c", "c"], lambda e: e["k"], lambda w: w, kept, remove, create)

    assert [e["id"] for e in kept] == [1]
    assert [e["id"] for e in remove] == [2, 3]
    assert create == ["c", "c"]


def test_an_image_function_has_an_image_and_no_folder(tmp_path: Path) -> None:
    text = "functions:\n  web:\n    image: app:1\n    port: 9000\n    registry_auth: creds\n"
    (tmp_path / "kapal.yaml").write_text(text)

    [fn] = load_manifest(tmp_path / "kapal.yaml").functions

    assert fn.folder is None
    assert fn.spec == {
        "name": "web",
        "runtime": "image",
        "image": "app:1",
        "port": 9000,
        "registry_auth": "creds",
    }
    (tmp_path / "kapal.yaml").write_text(text + "    folder: web\n")
    with pytest.raises(
        ManifestError, match=r"functions\.web\.folder: an image function has no folder"
    ):
        load_manifest(tmp_path / "kapal.yaml")
