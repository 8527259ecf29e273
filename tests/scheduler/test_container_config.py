"""What each instance gets from the engine: pure config, no Docker."""

from __future__ import annotations

from pathlib import Path

from scheduler.docker_backend import bridge_interface, container_config
from scheduler.firewall import guard_rules
from scheduler.models import FunctionSpec, Network


def spec(**kw: object) -> FunctionSpec:
    return FunctionSpec(name="fn", version=3, image="img:3", **kw)  # type: ignore[arg-type]


def test_locked_down_defaults() -> None:
    host = container_config(spec(), "ns", "ns-functions", "i1")["host_config"]
    assert host["cap_drop"] == ["ALL"]
    assert host["security_opt"] == ["no-new-privileges"]
    assert host["read_only"] is True
    assert host["network_mode"] == "ns-functions"
    assert host["binds"] is None


def test_secrets_are_a_read_only_bind_of_the_functions_folder() -> None:
    cfg = container_config(spec(secrets=["db-pw"]), "ns", "net", "i1", Path("/dev/shm/x"))
    assert cfg["host_config"]["binds"] == {"/dev/shm/x/fn": {"bind": "/run/secrets", "mode": "ro"}}
    assert "db-pw" not in str(cfg["environment"])


def test_no_outbound_means_the_internal_network() -> None:
    cfg = container_config(spec(network=Network(outbound=False)), "ns", "net", "i1")
    assert cfg["host_config"]["network_mode"] == "net-internal"


def test_bridge_interface_and_guard_rules() -> None:
    assert bridge_interface({"Id": "0123456789abcdef", "Options": {}}) == "br-0123456789ab"
    named = {"Id": "x", "Options": {"com.docker.network.bridge.name": "kpl0"}}
    assert bridge_interface(named) == "kpl0"
    rules = guard_rules("br-1")
    assert all(r[:3] == ["INPUT", "-i", "br-1"] and "NEW" in r for r in rules)
    assert rules[0][-1] == "tcp-reset"  # TCP first: a refused connect, not a timeout


def test_the_handler_style_reaches_the_runtime_only_when_set() -> None:
    assert (
        container_config(spec(style="asgi"), "ns", "net", "i1")["environment"]["KAPAL_STYLE"]
        == "asgi"
    )
    assert "KAPAL_STYLE" not in container_config(spec(), "ns", "net", "i1")["environment"]


def test_a_node_function_gets_its_style_and_default_handler() -> None:
    env = container_config(spec(runtime="nodejs", style="lambda"), "ns", "net", "i1")["environment"]
    assert (env["KAPAL_STYLE"], env["KAPAL_HANDLER"]) == ("lambda", "index.handler")


def test_python_runtime_containers_run_a_zygote_others_do_not() -> None:
    env = container_config(spec(), "ns", "net", "i1")["environment"]
    assert (env["KAPAL_ZYGOTE_PORT"], env["KAPAL_WORKERS_MAX"]) == ("8079", "15")
    node = container_config(spec(runtime="nodejs"), "ns", "net", "i1")["environment"]
    assert "KAPAL_ZYGOTE_PORT" not in node
    image = FunctionSpec(name="fn", version=3, image="nginx:1", runtime="image", port=80)
    assert "KAPAL_ZYGOTE_PORT" not in container_config(image, "ns", "net", "i1")["environment"]
