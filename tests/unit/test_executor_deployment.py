"""The executor Deployment the operator owns: what it contains and when it needs a patch."""

import copy

from mge.concurrency.replicas import ReplicaBounds, demanded_replicas
from mge.controller.executors import deployment_drift, executor_deployment
from mge.models.pods import ContainerResources, PodPlacement


def _deployment(**overrides):
    fields = {
        "name": "mge-executor",
        "image": "registry/mge:1",
        "replicas": 2,
        "concurrency": 8,
        "env_secrets": ["db", "llm"],
        "service_account": "mge-executor",
    }
    return executor_deployment(**{**fields, **overrides})


def test_executor_pods_are_restricted_and_have_no_api_token():
    pod = _deployment()["spec"]["template"]["spec"]
    container = pod["containers"][0]

    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["args"] == ["executor"]
    assert container["envFrom"] == [{"secretRef": {"name": "db"}}, {"secretRef": {"name": "llm"}}]


def test_the_pods_termination_grace_covers_the_atoms_grace_the_writes_and_the_hand_backs():
    for grace, termination in ((20.0, 60), (45.0, 110), (0.5, 21)):
        pod = _deployment(shutdown_grace_s=grace)["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}

        assert env["MGE_EXECUTOR_SHUTDOWN_GRACE_S"] == f"{grace:g}"
        assert pod["terminationGracePeriodSeconds"] == termination


def test_prices_config_map_is_mounted_and_named_in_the_environment():
    pod = _deployment(prices_config_map="mge-prices")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}

    assert env["MGE_PRICES_FILE"] == "/etc/mge/prices/prices.yaml"
    assert {"name": "prices", "configMap": {"name": "mge-prices"}} in pod["volumes"]


def test_cache_settings_reach_executors_before_secrets_so_a_secret_redis_url_wins():
    container = _deployment(env_config_maps=["mge-cache"])["spec"]["template"]["spec"]["containers"][0]

    assert container["envFrom"] == [
        {"configMapRef": {"name": "mge-cache"}},
        {"secretRef": {"name": "db"}},
        {"secretRef": {"name": "llm"}},
    ]
    assert deployment_drift(_deployment(), _deployment(env_config_maps=["mge-cache"]))["spec"]["template"]


def test_demo_mode_gives_executors_the_replay_folder_and_switching_it_patches_them():
    demo = _deployment(llm_replay="/opt/mge/examples")
    env = {e["name"]: e.get("value") for e in demo["spec"]["template"]["spec"]["containers"][0]["env"]}
    plain = {e["name"] for e in _deployment()["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert env["MGE_LLM_REPLAY"] == "/opt/mge/examples"
    assert "MGE_LLM_REPLAY" not in plain
    assert deployment_drift(_deployment(), demo)["spec"]["template"] == demo["spec"]["template"]
    assert deployment_drift(demo, _deployment())["spec"]["template"]
    assert deployment_drift(copy.deepcopy(demo), demo) == {}


def test_no_patch_when_only_server_defaults_differ():
    existing = copy.deepcopy(_deployment())
    existing["spec"]["template"]["spec"]["containers"][0]["env"][1]["valueFrom"]["fieldRef"]["apiVersion"] = (
        "v1"
    )
    existing["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"

    assert deployment_drift(existing, _deployment()) == {}


def test_replica_and_image_changes_are_patched():
    assert deployment_drift(_deployment(), _deployment(replicas=5)) == {"spec": {"replicas": 5}}
    assert "template" in deployment_drift(_deployment(), _deployment(image="registry/mge:2"))["spec"]


def test_demand_is_one_executor_per_concurrency_worth_of_runnable_atoms_within_bounds():
    bounds = ReplicaBounds(minimum=0, maximum=10, atoms_per_executor=8)

    assert demanded_replicas(0, 0, bounds) == 0
    assert demanded_replicas(1, 0, bounds) == 1
    assert demanded_replicas(20, 5, bounds) == 4
    assert demanded_replicas(500, 0, bounds) == 10


def test_new_placement_or_resources_roll_the_executors_and_a_removed_field_is_cleared():
    placed = _deployment(
        placement=PodPlacement(node_selector={"pool": "ai"}, image_pull_secrets=[{"name": "regcred"}]),
        resources=ContainerResources(requests={"cpu": "2"}),
    )

    added = deployment_drift(_deployment(), placed)["spec"]["template"]
    unchanged = deployment_drift(placed, placed)
    removed = deployment_drift(placed, _deployment())["spec"]["template"]["spec"]

    assert added["spec"]["nodeSelector"] == {"pool": "ai"}
    assert added["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "2"}}
    assert unchanged == {}
    assert (removed["nodeSelector"], removed["imagePullSecrets"]) == (None, None)
    assert "tolerations" not in removed
