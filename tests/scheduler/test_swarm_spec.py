"""What a function version is on a Swarm: pure service specs and names, no engine."""

from __future__ import annotations

from scheduler.docker_backend import LABEL_INSTANCE, RUNTIME_UID, container_config
from scheduler.models import FunctionSpec, Limits, Network
from scheduler.swarm_pull import job_spec
from scheduler.swarm_spec import (
    MAX_SECRET_NAME,
    MAX_SERVICE_NAME,
    SecretRef,
    registry_repository,
    replicas_of,
    secret_name,
    service_name,
    service_spec,
    task_address,
    task_changes,
    task_runs,
    with_replicas,
)

IMAGE = "10.0.0.2:5000/kapal-fn/fn@sha256:" + "a" * 64


def spec(**kw: object) -> FunctionSpec:
    return FunctionSpec(name="fn", version=3, image=IMAGE, **kw)  # type: ignore[arg-type]


def test_registry_repository_is_short_for_the_default_namespace() -> None:
    assert registry_repository("kapal", "fn") == "kapal-fn/fn"
    assert registry_repository("staging", "fn") == "kapal-fn/staging-fn"


def test_the_service_is_labelled_limited_and_hardened() -> None:
    body = service_spec(
        spec(limits=Limits(memory_mb=128, cpus=0.5, timeout_s=10)), "ns", "ns-functions", 2
    )
    template = body["TaskTemplate"]
    container = template["ContainerSpec"]
    assert body["Name"] == "ns-fn-3"
    assert body["Mode"] == {"Replicated": {"Replicas": 2}}
    assert body["EndpointSpec"] == {"Mode": "dnsrr"}  # no IPVS: no VIP
    assert body["Labels"] == container["Labels"]
    assert body["Labels"] == {
        "kapal.managed": "true",
        "kapal.namespace": "ns",
        "kapal.function": "fn",
        "kapal.version": "3",
        "kapal.runtime": "python",
        "kapal.port": "8080",
    }
    assert container["Image"] == IMAGE
    assert container["ReadOnly"] is True
    assert container["CapabilityDrop"] == ["ALL"]
    assert container["Init"] is True
    assert container["StopGracePeriod"] == 15 * 10**9  # the timeout and 5 s to drain
    assert "User" not in container  # the runtime image's own non-root user
    assert container["Mounts"] == [
        {"Type": "tmpfs", "Target": "/tmp", "TmpfsOptions": {"SizeBytes": 64 * 1024 * 1024}}
    ]
    assert "Secrets" not in container
    assert template["Resources"] == {
        "Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 128 * 1024 * 1024, "Pids": 512}
    }
    assert template["RestartPolicy"] == {"Condition": "any", "Delay": 0, "MaxAttempts": 0}
    assert template["Placement"] == {"Preferences": [{"Spread": {"SpreadDescriptor": "node.id"}}]}
    assert template["Networks"] == [{"Target": "ns-functions", "Aliases": ["ns-fn"]}]
    assert template["LogDriver"] == {
        "Name": "json-file",
        "Options": {"max-size": "10m", "max-file": "2"},
    }


def test_the_environment_is_what_a_container_gets() -> None:
    s = spec(env={"A": "1"}, style="asgi")
    runtime_env = {"KAPAL_LOG_MAX": "9"}
    body = service_spec(s, "ns", "net", 1, runtime_env=runtime_env)
    expected = container_config(s, "ns", "net", "x", None, runtime_env)["environment"]
    assert body["TaskTemplate"]["ContainerSpec"]["Env"] == [f"{k}={v}" for k, v in expected.items()]
    assert LABEL_INSTANCE not in body["Labels"]  # tasks are the instances


def test_an_image_running_as_root_runs_as_the_runtime_user() -> None:
    image_fn = FunctionSpec(name="web", version=1, image=IMAGE, runtime="image", port=80)
    as_root = service_spec(image_fn, "ns", "net", 1, image_user="")
    as_nginx = service_spec(image_fn, "ns", "net", 1, image_user="nginx")
    assert as_root["TaskTemplate"]["ContainerSpec"]["User"] == f"{RUNTIME_UID}:{RUNTIME_UID}"
    assert "User" not in as_nginx["TaskTemplate"]["ContainerSpec"]
    assert as_root["Labels"]["kapal.port"] == "80"


def test_secrets_are_files_of_the_runtime_user_only() -> None:
    refs = (SecretRef("db-pw", "sid1", "ns-fn-db-pw-0123456789ab"),)
    container = service_spec(spec(secrets=["db-pw"]), "ns", "net", 1, secrets=refs)["TaskTemplate"][
        "ContainerSpec"
    ]
    assert container["Secrets"] == [
        {
            "File": {"Name": "db-pw", "UID": "10001", "GID": "10001", "Mode": 0o400},
            "SecretID": "sid1",
            "SecretName": "ns-fn-db-pw-0123456789ab",
        }
    ]


def test_a_prewarmed_runtime_gets_writable_code_folders() -> None:
    prewarm = FunctionSpec(name="_prewarm", version=0, image=IMAGE)
    mounts = service_spec(prewarm, "ns", "net", 1)["TaskTemplate"]["ContainerSpec"]["Mounts"]
    assert [m["Target"] for m in mounts] == ["/tmp", "/opt/kapal/deps", "/opt/kapal/function"]


def test_names_stay_within_swarms_limits_and_apart() -> None:
    long_fn = "f" * 63
    assert service_name("ns", "fn", 3) == "ns-fn-3"
    one, two = service_name("ns", long_fn, 1), service_name("ns", long_fn, 2)
    assert len(one) <= MAX_SERVICE_NAME and len(two) <= MAX_SERVICE_NAME and one != two
    short = secret_name("ns", "fn", "db-pw", b"v1")
    assert short.startswith("ns-fn-db-pw-") and len(short) == len("ns-fn-db-pw-") + 12
    assert secret_name("ns", "fn", "db-pw", b"v2") != short  # a new value: a new secret
    long_name = secret_name("ns", long_fn, "s" * 64, b"v1")
    assert len(long_name) <= MAX_SECRET_NAME
    assert long_name != secret_name("ns", long_fn, "s" * 63 + "t", b"v1")


def test_a_replica_change_leaves_the_rest_of_the_stored_spec_alone() -> None:
    stored = {
        "Name": "ns-fn-3",
        "TaskTemplate": {"ContainerSpec": {"Image": IMAGE}, "ForceUpdate": 0},
        "Mode": {"Replicated": {"Replicas": 1}},
        "EndpointSpec": {"Mode": "dnsrr"},
    }
    updated = with_replicas(stored, 4)
    assert replicas_of(updated) == 4
    assert replicas_of(stored) == 1  # the stored one is not changed in place
    assert {k: v for k, v in updated.items() if k != "Mode"} == {
        k: v for k, v in stored.items() if k != "Mode"
    }
    assert replicas_of({"Mode": {"Global": {}}}) is None


def test_a_task_routes_by_its_address_on_the_overlay_once_it_runs() -> None:
    task = {
        "DesiredState": "running",
        "Status": {"State": "running"},
        "NetworksAttachments": [
            {"Network": {"Spec": {"Name": "ingress"}}, "Addresses": ["10.0.0.9/24"]},
            {"Network": {"Spec": {"Name": "ns-functions"}}, "Addresses": ["10.217.0.5/24"]},
        ],
    }
    assert task_runs(task)
    assert task_address(task, ("ns-functions", "ns-functions-internal"), 8080) == (
        "10.217.0.5:8080"
    )
    assert task_address(task, ("other",), 8080) == ""
    assert not task_runs({**task, "DesiredState": "shutdown"})  # scale-down chose it
    assert not task_runs({**task, "Status": {"State": "starting"}})


def test_a_function_without_outbound_access_is_on_the_internal_overlay() -> None:
    cut = spec(network=Network(outbound=False))
    networks = service_spec(cut, "ns", "ns-functions", 1)["TaskTemplate"]["Networks"]
    assert networks == [{"Target": "ns-functions-internal", "Aliases": ["ns-fn"]}]


def test_watch_reports_what_changed_between_two_looks() -> None:
    assert task_changes(set(), set(), {"a", "b"}, {"a", "b", "c"}) == [
        ("a", "start"),
        ("b", "start"),
    ]
    # b was chosen by a scale-down (still listed, shutting down); a went at once; c is gone.
    assert task_changes({"a", "b"}, {"a", "b", "c"}, set(), {"b"}) == [
        ("a", "die"),
        ("b", "die"),
        ("a", "destroy"),
        ("c", "destroy"),
    ]
    assert task_changes({"a"}, {"a"}, {"a"}, {"a"}) == []


def test_an_image_is_spread_by_a_global_job_that_exits_at_once() -> None:
    spec = job_spec("kapal-pull-f-1", "reg:5000/kapal-fn/f@sha256:ab", {"kapal.pull": "kapal"})
    assert spec["Mode"] == {"GlobalJob": {}}
    template = spec["TaskTemplate"]
    assert template["RestartPolicy"] == {"Condition": "none"}
    container = template["ContainerSpec"]
    assert container["Image"] == "reg:5000/kapal-fn/f@sha256:ab"
    assert container["Command"] == ["true"]
    assert container["ReadOnly"] is True and container["CapabilityDrop"] == ["ALL"]
    assert spec["Labels"] == {"kapal.pull": "kapal"}
