"""The registry image's recipe: which files ldd names, and the config Kapal writes."""

import pytest
import yaml

from infra.errors import InfraError
from infra.registry import parse_ldd, registry_config

LDD = """\
\tlinux-vdso.so.1 (0x00007ffd6b7e5000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f969d8e7000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f969dadd000)
"""


def test_ldd_gives_the_libraries_and_the_loader_but_not_the_vdso() -> None:
    assert parse_ldd(LDD) == ["/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]


def test_a_library_ldd_cannot_find_is_an_error_naming_it() -> None:
    with pytest.raises(InfraError, match=r"libfoo\.so\.1"):
        parse_ldd("\tlibfoo.so.1 => not found\n")


def test_config_without_credentials_has_no_auth_and_allows_deletes() -> None:
    config = yaml.safe_load(registry_config(":5000", "/var/lib/registry"))
    assert config["http"] == {"addr": ":5000"}
    assert config["storage"] == {
        "filesystem": {"rootdirectory": "/var/lib/registry"},
        "delete": {"enabled": True},
    }
    assert "auth" not in config


def test_config_with_credentials_asks_for_them() -> None:
    config = yaml.safe_load(registry_config("127.0.0.1:5001", "/data", "/etc/r/htpasswd"))
    assert config["http"] == {"addr": "127.0.0.1:5001"}
    assert config["auth"] == {"htpasswd": {"realm": "kapal", "path": "/etc/r/htpasswd"}}
