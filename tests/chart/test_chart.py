"""The Helm chart rendered and linted offline: valid objects, least privilege, restricted pods, no drift."""

import copy
import fnmatch
from pathlib import Path

import celpy
import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from mge.controller.executors import configured_executor_deployment, llm_credentials_secret
from mge.models.crd import all_crds
from mge.settings import Settings
from tests.support.helm import MANIFEST_VALUES, lint_chart, notes, render_chart, render_manifests

REPO = Path(__file__).resolve().parents[2]
KUBE_VERSION = "1.34.0"
QUICK_START = {"postgres": {"deploy": True}, "redis": {"deploy": True}}
WITH_SECRETS = {"database": {"existingSecret": "mge-db"}, "llm": {"existingSecret": "mge-llm"}}


def _of(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def _one(docs, kind, suffix=""):
    (doc,) = [d for d in _of(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    return doc


@pytest.mark.parametrize("values", [QUICK_START, WITH_SECRETS], ids=["quick-start", "existing-secrets"])
def test_chart_lints_clean(values):
    assert lint_chart(values) == []


@pytest.mark.parametrize("values", [QUICK_START, WITH_SECRETS], ids=["quick-start", "existing-secrets"])
def test_every_built_in_object_validates_against_the_kubernetes_schema(values):
    for doc in render_chart(values):
        if doc["kind"] == "CustomResourceDefinition" or doc["apiVersion"].startswith("mge.devmatrix.io"):
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_chart_ships_the_crds_generated_from_the_models():
    crds = _of(render_chart(WITH_SECRETS), "CustomResourceDefinition")

    assert {d["metadata"]["name"]: d for d in crds} == {d["metadata"]["name"]: d for d in all_crds().values()}


def test_rbac_has_no_wildcards_and_the_operator_no_cluster_scope():
    docs = render_chart(QUICK_START)

    assert sorted(r["metadata"]["name"] for r in _of(docs, "ClusterRole")) == [
        "mge-operator-api-auth-delegator",
        "mge-operator-budget-approver",
    ]
    (binding,) = _of(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "mge-operator-api", "namespace": "mge-system"}
    ]
    delegator = _one(docs, "ClusterRole", "auth-delegator")
    assert {(r["resources"][0], tuple(r["verbs"])) for r in delegator["rules"]} == {
        ("tokenreviews", ("create",)),
        ("subjectaccessreviews", ("create",)),
    }
    for role in _of(docs, "Role") + _of(docs, "ClusterRole"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{role['metadata']['name']}: wildcard in {field}"


def test_operator_can_do_what_its_handlers_do_and_no_more():
    (role,) = [r for r in _of(render_chart(WITH_SECRETS), "Role") if r["metadata"]["name"] == "mge-operator"]
    grants = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}

    assert {
        ("masterplans", "watch"),
        ("masterplans/status", "patch"),
        ("waves", "create"),
        ("waves", "delete"),
    } <= grants
    assert ("configmaps", "get") in grants
    assert ("masterplans", "delete") not in grants
    # spec.llm.secretRef only: get, never list or watch (tests/chart/test_chart.py::test_llm_pool_rbac...).
    assert ("secrets", "get") in grants
    assert not any(resource == "secrets" and verb != "get" for resource, verb in grants)
    # get: spec.atomsFrom; create: acceptance Job inputs (tests/chart/test_chart_acceptance.py).
    assert not any(resource == "configmaps" and verb not in {"get", "create"} for resource, verb in grants)


def test_the_llm_pools_secret_is_the_only_secret_the_operator_reads_or_writes_in_its_namespace():
    role = _one(render_chart(WITH_SECRETS), "Role", "-executors")
    secrets = [rule for rule in role["rules"] if rule["resources"] == ["secrets"]]
    assert {verb for rule in secrets for verb in rule["verbs"] if "resourceNames" not in rule} == {"create"}
    named = [rule for rule in secrets if "resourceNames" in rule]
    assert [(rule["resourceNames"], sorted(rule["verbs"])) for rule in named] == [
        (["mge-operator-executor-llm"], ["get", "patch"])
    ]
    assert (
        llm_credentials_secret(Settings(executor_name="mge-operator-executor")) == "mge-operator-executor-llm"
    )


def test_executor_role_may_rank_pods_for_scale_down_and_nothing_more():
    role = _one(render_chart(WITH_SECRETS), "Role", "-executors")
    grants = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }

    assert {g for g in grants if g[1].startswith("pods")} == {("", "pods", "list"), ("", "pods", "patch")}


def test_watching_several_namespaces_renders_a_role_and_binding_in_each():
    docs = render_chart({**WITH_SECRETS, "watchNamespaces": ["team-a", "team-b"]})

    operator_roles = [
        d["metadata"]["namespace"] for d in _of(docs, "Role") if d["metadata"]["name"] == "mge-operator"
    ]
    bindings = [
        d["metadata"]["namespace"]
        for d in _of(docs, "RoleBinding")
        if d["metadata"]["name"] == "mge-operator"
    ]
    env = {
        e["name"]: e.get("value")
        for e in _one(docs, "Deployment", "mge-operator")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert operator_roles == bindings == ["team-a", "team-b"]
    assert env["MGE_WATCH_NAMESPACES"] == "team-a,team-b"


def test_operator_pod_is_restricted_single_and_recreated():
    deployment = _one(render_chart(WITH_SECRETS), "Deployment", "mge-operator")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]

    assert (deployment["spec"]["replicas"], deployment["spec"]["strategy"]["type"]) == (1, "Recreate")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["args"] == ["operator"]


def test_operator_gets_the_database_and_executor_settings():
    container = _one(render_chart(WITH_SECRETS), "Deployment", "mge-operator")["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {e["name"]: e for e in container["env"]}

    assert env["MGE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "mge-db",
        "key": "MGE_DATABASE_URL",
    }
    assert env["MGE_EXECUTOR_ENV_SECRETS"]["value"] == "mge-db,mge-llm"
    assert env["MGE_EXECUTOR_IMAGE"]["value"] == "ghcr.io/mge/mge-operator:0.1.0"


def test_executor_service_account_has_no_token():
    account = _one(render_chart(WITH_SECRETS), "ServiceAccount", "-executor")

    assert account["automountServiceAccountToken"] is False


def test_without_a_database_the_render_fails_and_says_what_to_set():
    with pytest.raises(helm.HelmError, match=r"database\.existingSecret"):
        render_chart({})


def test_min_replicas_above_max_is_rejected_naming_both():
    with pytest.raises(
        helm.HelmError, match=r"executor\.minReplicas \(5\) must not exceed executor\.maxReplicas \(2\)"
    ):
        render_chart({**WITH_SECRETS, "executor": {"minReplicas": 5, "maxReplicas": 2}})


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"logLevel": "LOUD"}, "logLevel"),
        ({"surprise": True}, "surprise"),
        ({"executor": {"concurrency": 0}}, "concurrency"),
        ({"executor": {"concurrency": -3}}, "concurrency"),
        ({"executor": {"minReplicas": -1}}, "minReplicas"),
        ({"executor": {"maxReplicas": 0}}, "maxReplicas"),
        ({"watchNamespaces": ["Bad_Name"]}, "watchNamespaces"),
    ],
)
def test_values_schema_rejects_bad_values_naming_the_field(values, field):
    with pytest.raises(helm.HelmError, match=field):
        render_chart({**WITH_SECRETS, **values})


def test_notes_tell_how_to_apply_the_example_and_warn_about_a_missing_llm_secret():
    text = notes({"postgres": {"deploy": True}})

    assert "kubectl apply -n mge-system -f examples/hello/masterplan.yaml" in text
    assert "llm.existingSecret is not set" in text


def test_quick_start_postgres_password_is_generated_not_hardcoded():
    first = _one(render_chart(QUICK_START), "Secret", "-database")["stringData"]["POSTGRES_PASSWORD"]
    second = _one(render_chart(QUICK_START), "Secret", "-database")["stringData"]["POSTGRES_PASSWORD"]

    assert len(first) == 32
    assert first != second


def test_plain_manifests_match_the_chart():
    committed = (REPO / "manifests" / "mge-operator.yaml").read_text()

    assert committed == render_manifests(), "manifests/ is stale: run `make manifests`"


def test_plain_manifests_carry_no_generated_password():
    docs = [d for d in yaml.safe_load_all(render_manifests()) if d]

    assert MANIFEST_VALUES["postgres"]["deploy"] is True
    assert [d for d in docs if d["kind"] == "Secret"] == []
    assert any(d["kind"] == "StatefulSet" for d in docs)


def test_budget_policy_requires_the_approve_verb_and_the_requester_as_approver():
    docs = render_chart(WITH_SECRETS)
    policy = _one(docs, "ValidatingAdmissionPolicy")
    binding = _one(docs, "ValidatingAdmissionPolicyBinding")
    approver = _one(docs, "ClusterRole", "budget-approver")
    expressions = " ".join(v["expression"] for v in policy["spec"]["validations"])

    assert policy["spec"]["failurePolicy"] == "Fail"
    assert "resource('masterplans').subresource('budget')" in expressions
    assert "check('approve').allowed()" in expressions
    assert "override.approvedBy == request.userInfo.username" in expressions
    assert (binding["spec"]["policyName"], binding["spec"]["validationActions"]) == (
        policy["metadata"]["name"],
        ["Deny"],
    )
    assert {
        "resources": ["masterplans/budget"],
        "verbs": ["approve"],
        "apiGroups": ["mge.devmatrix.io"],
    } in approver["rules"]


def test_budget_policy_cel_compiles():
    policy = _one(render_chart(WITH_SECRETS), "ValidatingAdmissionPolicy")
    env = celpy.Environment()

    for expression in [v["expression"] for v in policy["spec"]["variables"] + policy["spec"]["validations"]]:
        env.compile(expression)


def test_budget_policy_can_be_disabled():
    docs = render_chart({**WITH_SECRETS, "budgetPolicy": {"enabled": False}})

    assert _of(docs, "ValidatingAdmissionPolicy") == []


def test_api_runs_restricted_with_its_own_account_and_the_database_secret():
    docs = render_chart(WITH_SECRETS)
    deployment = _one(docs, "Deployment", "-api")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}

    assert container["args"] == ["api", "--host", "0.0.0.0", "--port", "8000"]  # the CLI default is 127.0.0.1
    assert pod["serviceAccountName"] == "mge-operator-api"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert env["MGE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "mge-db"
    assert _one(docs, "Service", "-api")["spec"]["ports"][0]["targetPort"] == "http"


def test_price_values_become_a_mounted_file_for_operator_and_executors():
    docs = render_chart({**WITH_SECRETS, "prices": {"house-model": {"input": 0.1, "output": 0.2}}})
    config_map = _one(docs, "ConfigMap", "-prices")
    container = _one(docs, "Deployment", "mge-operator")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}

    assert yaml.safe_load(config_map["data"]["prices.yaml"]) == {"house-model": {"input": 0.1, "output": 0.2}}
    assert env["MGE_PRICES_FILE"] == "/etc/mge/prices/prices.yaml"
    assert env["MGE_EXECUTOR_PRICES_CONFIG_MAP"] == "mge-operator-prices"


def test_a_price_without_output_is_rejected_by_the_values_schema():
    with pytest.raises(helm.HelmError, match="output"):
        render_chart({**WITH_SECRETS, "prices": {"house-model": {"input": 0.1}}})


def test_cache_settings_go_to_executors_and_the_api_with_the_quick_start_redis_url():
    docs = render_chart({**QUICK_START, "batching": {"enabled": True, "windowMs": 200}})
    cache = _one(docs, "ConfigMap", "-cache")["data"]
    operator_env = {
        e["name"]: e.get("value")
        for e in _one(docs, "Deployment", "mge-operator")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    api = _one(docs, "Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]

    assert cache["MGE_REDIS_URL"] == "redis://mge-operator-redis.mge-system.svc:6379/0"
    assert (cache["MGE_CACHE_LLM_TTL_SECONDS"], cache["MGE_CACHE_RAG_TTL_SECONDS"]) == ("86400", "3600")
    assert cache["MGE_CACHE_SIMILARITY_THRESHOLD"] == "0.95"
    assert (cache["MGE_BATCH_ENABLED"], cache["MGE_BATCH_WINDOW_MS"]) == ("true", "200")
    assert operator_env["MGE_EXECUTOR_ENV_CONFIG_MAPS"] == "mge-operator-cache"
    assert {"configMapRef": {"name": "mge-operator-cache"}} in api["envFrom"]


def test_a_redis_secret_replaces_the_quick_start_url_for_executors_and_the_api():
    docs = render_chart({**WITH_SECRETS, "cache": {"existingSecret": "mge-redis"}})
    operator_env = {
        e["name"]: e.get("value")
        for e in _one(docs, "Deployment", "mge-operator")["spec"]["template"]["spec"]["containers"][0]["env"]
    }

    assert "MGE_REDIS_URL" not in _one(docs, "ConfigMap", "-cache")["data"]
    assert operator_env["MGE_EXECUTOR_ENV_SECRETS"] == "mge-db,mge-llm,mge-redis"
    api = _one(docs, "Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "mge-redis"}} in api["envFrom"]


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"cache": {"similarityThreshold": 0.5}}, "similarityThreshold"),
        ({"cache": {"llmTTLSeconds": 10}}, "llmTTLSeconds"),
        ({"batching": {"maxSize": 0}}, "maxSize"),
        ({"batching": {"windowMs": 60000}}, "windowMs"),
    ],
)
def test_bad_cache_values_are_rejected_naming_the_field(values, field):
    with pytest.raises(helm.HelmError, match=field):
        render_chart({**WITH_SECRETS, **values})


def _operator_env(values):
    container = _one(render_chart(values), "Deployment", "mge-operator")["spec"]["template"]["spec"][
        "containers"
    ][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def _executor_env(values, monkeypatch):
    """The env of the executor Deployment the operator builds from the chart's settings for it."""
    for name, value in _operator_env(values).items():
        if value is not None:
            monkeypatch.setenv(name, value)
    container = configured_executor_deployment(Settings(), 1)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_demo_mode_reaches_the_executors_through_the_operator(monkeypatch):
    demo = {**QUICK_START, "demo": {"enabled": True}}

    env = _operator_env(demo)

    assert env["MGE_LLM_REPLAY"] == "/opt/mge/examples"
    assert _executor_env(demo, monkeypatch)["MGE_LLM_REPLAY"] == "/opt/mge/examples"
    assert "DEMO MODE" in notes(demo)
    assert "llm.existingSecret is not set" not in notes(demo)
    assert lint_chart(demo) == []


def test_without_demo_mode_nothing_changes(monkeypatch):
    assert "MGE_LLM_REPLAY" not in _operator_env(QUICK_START)
    assert "MGE_LLM_REPLAY" not in _executor_env(QUICK_START, monkeypatch)
    assert "MGE_LLM_REPLAY" not in _operator_env({**QUICK_START, "demo": {"enabled": False}})
    # WITH_SECRETS: the quick start generates a new Postgres password on every render.
    assert render_chart({**WITH_SECRETS, "demo": {"enabled": False}}) == render_chart(WITH_SECRETS)
    assert "DEMO MODE" not in notes(QUICK_START)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"demo": {"enabled": "yes"}}, "enabled"),
        ({"demo": {"recordings": "relative/path"}}, "recordings"),
        ({"demo": {"replay": True}}, "replay"),
    ],
)
def test_bad_demo_values_are_rejected_naming_the_field(values, field):
    with pytest.raises(helm.HelmError, match=field):
        render_chart({**QUICK_START, **values})


def test_demo_mode_with_an_llm_secret_is_refused_saying_which_to_unset():
    with pytest.raises(helm.HelmError, match=r"unset llm\.existingSecret or demo\.enabled"):
        render_chart({**WITH_SECRETS, "demo": {"enabled": True}})


def test_the_image_ships_the_recordings_demo_mode_replays():
    recordings = yaml.safe_load((REPO / "helm" / "mge-operator" / "values.yaml").read_text())["demo"][
        "recordings"
    ]
    ignored = (REPO / ".dockerignore").read_text().split()

    def in_build_context(path: str) -> bool:
        return not any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in ignored)

    assert f"COPY examples {recordings}" in (REPO / "Dockerfile").read_text()
    for example in sorted(p.parent.name for p in (REPO / "examples").glob("*/responses.jsonl")):
        assert in_build_context(f"examples/{example}/masterplan.yaml")
        assert in_build_context(f"examples/{example}/responses.jsonl")


PLACEMENT = {
    "imagePullSecrets": [{"name": "regcred"}],
    "nodeSelector": {"pool": "ai"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ai", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]
            }
        }
    },
}


def test_pull_secrets_scheduling_and_resources_reach_every_pod_the_operator_creates(monkeypatch):
    """Values -> the operator's env (rendered) -> its settings -> the executor Deployment and acceptance Job it
    builds; the API Deployment (rendered) gets the same placement."""
    values = {
        **WITH_SECRETS,
        **PLACEMENT,
        "executor": {
            "resources": {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
            "priorityClassName": "batch-low",
        },
    }
    executor_pod, job_pod = _created_pods(monkeypatch, values)
    api_pod = _one(render_chart(values), "Deployment", "-api")["spec"]["template"]["spec"]

    for pod in (executor_pod, job_pod):
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert pod["nodeSelector"] == {"pool": "ai"}
        assert pod["tolerations"] == PLACEMENT["tolerations"]
        assert pod["affinity"] == PLACEMENT["affinity"]
        assert pod["priorityClassName"] == "batch-low"
    for pod in (api_pod,):
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert (pod["nodeSelector"], pod["tolerations"], pod["affinity"]) == (
            {"pool": "ai"},
            PLACEMENT["tolerations"],
            PLACEMENT["affinity"],
        )
    assert executor_pod["containers"][0]["resources"] == {
        "requests": {"cpu": "2", "memory": "2Gi"},
        "limits": {"memory": "4Gi"},
    }
    for pod in (executor_pod, job_pod):
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod},
            KUBE_VERSION,
            strict=True,
        )


def test_without_placement_values_the_created_pods_carry_no_empty_fields(monkeypatch):
    for name, value in _operator_env(WITH_SECRETS).items():
        if value is not None:
            monkeypatch.setenv(name, value)
    pod = configured_executor_deployment(Settings(), 1)["spec"]["template"]["spec"]
    assert not {"imagePullSecrets", "nodeSelector", "tolerations", "affinity", "priorityClassName"} & set(pod)
    assert pod["containers"][0]["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }


def test_a_change_of_prices_or_cache_settings_rolls_the_operator_the_api_and_the_executors(monkeypatch):
    """Pods read prices and cache settings once at start: `helm upgrade --set prices...` must restart them."""
    from mge.controller.executors import deployment_drift

    before = {**WITH_SECRETS, "prices": {"my-model": {"input": 1, "cachedInput": 0.5, "output": 2}}}
    after = {**WITH_SECRETS, "prices": {"my-model": {"input": 1, "cachedInput": 0.5, "output": 3}}}
    cache_changed = {**before, "cache": {"llmTTLSeconds": 7200}}

    def checksums(values):
        docs = render_chart(values)
        return tuple(
            _one(docs, "Deployment", suffix)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for suffix in ("mge-operator", "-api")
        )

    def executors(values):
        for name, value in _operator_env(values).items():
            if value is not None:
                monkeypatch.setenv(name, value)
        return configured_executor_deployment(Settings(), 1)

    assert checksums(before) == checksums(before)  # stable: no roll when nothing changed
    assert checksums(after)[0] != checksums(before)[0]
    assert checksums(after)[1] != checksums(before)[1]
    assert checksums(cache_changed) != checksums(before)
    assert deployment_drift(executors(before), executors(before)) == {}
    assert "template" in deployment_drift(executors(before), executors(after))["spec"]


def test_an_existing_database_secret_and_the_quick_start_postgres_together_are_refused():
    with pytest.raises(helm.HelmError, match=r"database\.existingSecret and postgres\.deploy are both set"):
        render_chart({**WITH_SECRETS, "postgres": {"deploy": True}})


def test_no_redis_is_deployed_or_configured_when_the_cache_is_off():
    docs = render_chart({**WITH_SECRETS, "redis": {"deploy": True}, "cache": {"enabled": False}})
    assert not [d for d in docs if d["metadata"]["name"].endswith("-redis")]
    assert "MGE_REDIS_URL" not in _one(docs, "ConfigMap", "-cache")["data"]


def test_names_registry_digest_and_extra_env_follow_the_usual_chart_conventions(monkeypatch):
    digest = "sha256:" + "a" * 64
    values = {
        **WITH_SECRETS,
        "fullnameOverride": "mge",
        "global": {"imageRegistry": "mirror.example"},
        "image": {"repository": "acme/mge-operator", "digest": digest},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
    }
    docs = render_chart(values)
    operator = _one(docs, "Deployment", "mge")
    api = _one(docs, "Deployment", "mge-api")

    assert operator["metadata"]["name"] == "mge"
    for deployment in (operator, api):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == f"mirror.example/acme/mge-operator@{digest}"
        assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in container["env"]
    executor_pod, job_pod = _created_pods(monkeypatch, {**values, "fullnameOverride": ""})
    assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in executor_pod["containers"][0]["env"]
    assert "HTTPS_PROXY" not in str(job_pod)
    with pytest.raises(helm.HelmError, match="digest"):
        render_chart({**WITH_SECRETS, "image": {"repository": "r", "digest": "latest"}})


def test_the_api_can_have_a_disruption_budget_that_still_lets_nodes_drain():
    values = {
        **WITH_SECRETS,
        "api": {"replicas": 3, "podDisruptionBudget": {"enabled": True, "minAvailable": 2}},
    }
    (pdb,) = _of(render_chart(values), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    kubernetes_validate.validate(pdb, KUBE_VERSION, strict=True)
    with pytest.raises(helm.HelmError, match="minAvailable"):
        render_chart({**WITH_SECRETS, "api": {"replicas": 1, "podDisruptionBudget": {"enabled": True}}})


def test_quick_start_servers_have_liveness_probes_and_a_fixed_password_for_gitops():
    docs = render_chart({**QUICK_START, "postgres": {"deploy": True, "password": "s3cret"}})
    for suffix in ("-postgres", "-redis"):
        (container,) = _one(docs, "StatefulSet", suffix)["spec"]["template"]["spec"]["containers"]
        assert container["livenessProbe"]["tcpSocket"]
    secret = _one(docs, "Secret", "-database")
    assert "s3cret" in str(secret.get("stringData") or secret.get("data"))


def _created_pods(monkeypatch, values):
    """The executor pod and an acceptance Job pod the operator builds from the settings the chart renders."""
    from mge.adapters.acceptance_job import job
    from mge.cli import _acceptance

    for name, value in _operator_env(values).items():
        if value is not None:
            monkeypatch.setenv(name, value)
    settings = Settings()
    executor_pod = configured_executor_deployment(settings, 1)["spec"]["template"]["spec"]
    config = _acceptance(settings)
    assert config is not None
    job_pod = job("shop-accept-w0-r1-abcde", "team-a", "shop", 0, config, integration=False)["spec"][
        "template"
    ]["spec"]
    return executor_pod, job_pod


def test_openshift_can_drop_the_fixed_uid_and_the_pods_stay_restricted(monkeypatch):
    values = {**WITH_SECRETS, "podSecurityContext": {"runAsUser": None, "runAsGroup": None}}
    docs = render_chart(values)
    chart_pods = [
        _one(docs, "Deployment", suffix)["spec"]["template"]["spec"] for suffix in ("mge-operator", "-api")
    ]
    for pod in [*chart_pods, *_created_pods(monkeypatch, values)]:
        assert "runAsUser" not in pod["securityContext"]
        assert "runAsGroup" not in pod["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_created_pods_run_as_the_images_uid_by_default_and_stay_non_root_whatever_the_values(monkeypatch):
    for pod in _created_pods(monkeypatch, WITH_SECRETS):
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    loose = {**WITH_SECRETS, "podSecurityContext": {"runAsNonRoot": False, "fsGroup": 2000}}
    for pod in _created_pods(monkeypatch, loose):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["fsGroup"] == 2000


SPREAD = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}]


def test_extra_volumes_priority_and_topology_spread_reach_the_pods_they_name(monkeypatch):
    ca = {"name": "ca", "configMap": {"name": "corp-ca"}}
    mount = {"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True}
    values = {
        **WITH_SECRETS,
        "extraVolumes": [ca],
        "extraVolumeMounts": [mount],
        "priorityClassName": "platform-critical",
        "podLabels": {"team": "ai"},
        "api": {"replicas": 3, "topologySpreadConstraints": SPREAD},
        "executor": {"topologySpreadConstraints": SPREAD},
    }
    docs = render_chart(values)
    for suffix in ("mge-operator", "-api"):
        template = _one(docs, "Deployment", suffix)["spec"]["template"]
        pod = template["spec"]
        assert ca in pod["volumes"]
        assert mount in pod["containers"][0]["volumeMounts"]
        assert pod["priorityClassName"] == "platform-critical"
        assert template["metadata"]["labels"]["team"] == "ai"
        kubernetes_validate.validate(_one(docs, "Deployment", suffix), KUBE_VERSION, strict=True)
    assert _one(docs, "Deployment", "-api")["spec"]["template"]["spec"]["topologySpreadConstraints"] == SPREAD
    assert (
        "topologySpreadConstraints"
        not in _one(docs, "Deployment", "mge-operator")["spec"]["template"]["spec"]
    )
    executor_pod, job_pod = _created_pods(monkeypatch, values)
    assert executor_pod["topologySpreadConstraints"] == SPREAD
    # Executors call the LLM: a CA bundle (or a proxy) the operator gets, they get too. Sandboxed Jobs do not.
    assert ca in executor_pod["volumes"]
    assert mount in executor_pod["containers"][0]["volumeMounts"]
    assert ca not in job_pod["volumes"]
    assert "topologySpreadConstraints" not in job_pod
    # The operator's own priority class is not forced on the pods it creates (executor.priorityClassName is).
    assert "priorityClassName" not in executor_pod


def test_a_new_pod_security_context_or_spread_rolls_the_executors(monkeypatch):
    from mge.controller.executors import deployment_drift

    (before, _), (after, _) = (
        _created_pods(monkeypatch, WITH_SECRETS),
        _created_pods(
            monkeypatch,
            {
                **WITH_SECRETS,
                "podSecurityContext": {"runAsUser": None},
                "executor": {"topologySpreadConstraints": SPREAD},
            },
        ),
    )
    existing = {"spec": {"replicas": 1, "template": {"spec": before}}}
    desired = {"spec": {"replicas": 1, "template": {"spec": after}}}
    patch = deployment_drift(existing, desired)["spec"]["template"]["spec"]
    assert "runAsUser" not in patch["securityContext"]
    assert patch["topologySpreadConstraints"] == SPREAD
    # And back: a removed spread is patched away with null (a merge patch keeps what it does not mention).
    assert (
        deployment_drift(desired, existing)["spec"]["template"]["spec"]["topologySpreadConstraints"] is None
    )


def test_network_policies_admit_only_the_metrics_and_api_ports_from_the_given_peers():
    monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    docs = render_chart({**WITH_SECRETS, "networkPolicy": {"enabled": True, "metricsFrom": monitoring}})
    policies = {d["metadata"]["name"]: d for d in _of(docs, "NetworkPolicy")}
    assert set(policies) == {"mge-operator", "mge-operator-executor", "mge-operator-api"}
    for policy in policies.values():
        kubernetes_validate.validate(policy, KUBE_VERSION, strict=True)
        assert policy["spec"]["policyTypes"] == ["Ingress"]
    operator = _one(docs, "Deployment", "mge-operator")["spec"]["template"]["metadata"]["labels"]
    assert policies["mge-operator"]["spec"]["podSelector"]["matchLabels"].items() <= operator.items()
    for pool in ("", "0123456789ab"):  # the default executors and an LLM pool's
        executor = configured_executor_deployment(Settings(), 1, pool)["spec"]["template"]["metadata"][
            "labels"
        ]
        assert (
            policies["mge-operator-executor"]["spec"]["podSelector"]["matchLabels"].items()
            <= executor.items()
        )
    assert policies["mge-operator"]["spec"]["ingress"] == [
        {"ports": [{"port": "metrics"}], "from": monitoring}
    ]
    assert policies["mge-operator-api"]["spec"]["ingress"] == [{"ports": [{"port": "http"}]}]
    assert _of(render_chart(WITH_SECRETS), "NetworkPolicy") == []


def test_every_value_in_the_schema_is_described_and_the_chart_readme_shows_them_all():
    import json

    from tests.support.chart_doc import README, leaves, rendered

    schema = json.loads((REPO / "helm" / "mge-operator" / "values.schema.json").read_text())
    undescribed = [key for key, node in leaves(schema) if not node.get("description")]
    assert undescribed == []
    text = README.read_text()
    assert rendered(text) == text, "helm/mge-operator/README.md is stale: run `make docs`"
    for key, _ in leaves(schema):
        assert f"| `{key}` |" in text


def test_pod_labels_and_annotations_reach_the_created_pods_without_moving_their_selector(monkeypatch):
    from mge.adapters.acceptance_job import job
    from mge.cli import _acceptance
    from mge.controller.executors import deployment_drift

    values = {
        **WITH_SECRETS,
        "podLabels": {"cost-center": "ai", "app.kubernetes.io/name": "spoofed"},
        "podAnnotations": {"sidecar.istio.io/inject": "false"},
    }
    for name, value in _operator_env(values).items():
        if value is not None:
            monkeypatch.setenv(name, value)
    settings = Settings()
    deployment = configured_executor_deployment(settings, 1)
    template = deployment["spec"]["template"]["metadata"]
    assert template["labels"]["cost-center"] == "ai"
    assert (
        template["labels"]["app.kubernetes.io/name"] == "mge-executor"
    )  # ours win: the selector still matches
    assert deployment["spec"]["selector"]["matchLabels"].items() <= template["labels"].items()
    assert template["annotations"]["sidecar.istio.io/inject"] == "false"
    config = _acceptance(settings)
    assert config is not None
    job_template = job("shop-accept-w0-r1-abcde", "team-a", "shop", 0, config, integration=False)["spec"][
        "template"
    ]
    assert job_template["metadata"]["labels"]["cost-center"] == "ai"
    assert job_template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}

    # A Deployment made before the labels were set is patched; one restarted by kubectl is left alone.
    older = copy.deepcopy(deployment)
    del older["spec"]["template"]["metadata"]["labels"]["cost-center"]
    assert (
        deployment_drift(older, deployment)["spec"]["template"]["metadata"]["labels"]["cost-center"] == "ai"
    )
    restarted = copy.deepcopy(deployment)
    restarted["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] = "now"
    assert deployment_drift(restarted, deployment) == {}
