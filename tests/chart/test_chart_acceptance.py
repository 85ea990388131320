"""The chart's acceptance-test settings: least-privilege RBAC for Jobs, values passed to the operator, schema."""

import helm_python as helm
import pytest

from tests.support.helm import render_chart

WITH_SECRETS = {"database": {"existingSecret": "mge-db"}, "llm": {"existingSecret": "mge-llm"}}


def _operator_role(values):
    (role,) = [
        d for d in render_chart(values) if d["kind"] == "Role" and d["metadata"]["name"] == "mge-operator"
    ]
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _env(values):
    (deployment,) = [
        d
        for d in render_chart(values)
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "mge-operator"
    ]
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_operator_may_create_jobs_their_inputs_and_policies_and_read_pod_logs_but_delete_nothing():
    grants = _operator_role(WITH_SECRETS)

    assert {
        ("batch", "jobs", "create"),
        ("batch", "jobs", "get"),
        ("batch", "jobs", "patch"),
        ("", "configmaps", "create"),
        ("networking.k8s.io", "networkpolicies", "create"),
        ("", "pods", "list"),
        ("", "pods/log", "get"),
    } <= grants
    # The Job's ttlSecondsAfterFinished and ownerReferences clean up; nothing else is needed.
    assert not {
        g for g in grants if g[1] in {"jobs", "configmaps", "networkpolicies", "pods"} and g[2] == "delete"
    }
    assert not {g for g in grants if g[1] in {"pods/exec", "serviceaccounts"}}
    # Secrets only for spec.llm.secretRef (read, nothing else): tests/chart/test_chart.py.
    assert {g for g in grants if g[1] == "secrets"} == {("", "secrets", "get")}


def test_acceptance_disabled_drops_the_job_permissions_and_settings():
    values = {**WITH_SECRETS, "acceptance": {"enabled": False}}

    assert not {g for g in _operator_role(values) if g[1] in {"jobs", "pods/log", "networkpolicies"}}
    assert not {name for name in _env(values) if name.startswith("MGE_ACCEPTANCE_")}


def test_job_image_defaults_to_the_operator_image_and_limits_reach_the_operator():
    env = _env({**WITH_SECRETS, "acceptance": {"activeDeadlineSeconds": 300, "workers": 2}})

    assert env["MGE_ACCEPTANCE_IMAGE"].startswith("ghcr.io/mge/mge-operator:")
    assert (env["MGE_ACCEPTANCE_DEADLINE_SECONDS"], env["MGE_ACCEPTANCE_WORKERS"]) == ("300", "2")
    assert (env["MGE_ACCEPTANCE_CPU_LIMIT"], env["MGE_ACCEPTANCE_MEMORY_LIMIT"]) == ("1", "1Gi")


def test_an_explicit_job_image_is_used():
    env = _env({**WITH_SECRETS, "acceptance": {"image": "registry.local/mge-runner:2"}})

    assert env["MGE_ACCEPTANCE_IMAGE"] == "registry.local/mge-runner:2"


@pytest.mark.parametrize(
    ("acceptance", "field"),
    [
        ({"activeDeadlineSeconds": 5}, "activeDeadlineSeconds"),
        ({"workers": 0}, "workers"),
        ({"workdirSize": "lots"}, "workdirSize"),
        ({"resources": {"limits": {"memory": 1024}}}, "memory"),
    ],
)
def test_values_schema_rejects_bad_acceptance_values_naming_the_field(acceptance, field):
    with pytest.raises(helm.HelmError, match=field):
        render_chart({**WITH_SECRETS, "acceptance": acceptance})
