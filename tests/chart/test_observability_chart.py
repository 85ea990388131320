"""Monitoring objects of the chart: scrape targets that select what really runs, a dashboard on real metrics."""

import json
import re
from pathlib import Path

import helm_python as helm
import pytest
from prometheus_client import REGISTRY

from mge.adapters import metrics
from mge.controller.executors import executor_deployment
from tests.support.helm import lint_chart, render_chart

REPO = Path(__file__).resolve().parents[2]
WITH_SECRETS = {"database": {"existingSecret": "mge-db"}, "llm": {"existingSecret": "mge-llm"}}
MONITORING = {
    **WITH_SECRETS,
    "monitoring": {"serviceMonitor": {"enabled": True}, "dashboard": {"enabled": True}},
}
METRIC = re.compile(r"\b((?:v2|mge)_[a-z0-9_]+)")
HISTOGRAM_SERIES = ("_bucket", "_count", "_sum")


def _kinds(docs):
    return {d["kind"] for d in docs}


def _dashboard(docs):
    (config_map,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")
    ]
    return config_map, json.loads(config_map["data"]["mge-overview.json"])


def _exported_names():
    """Every metric family the project registers with prometheus_client (names without _total etc.)."""
    names = {m.name for m in REGISTRY.collect()}
    return names | {f"{n}_total" for n in names}


def _queried_metrics(dashboard):
    names = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for name in METRIC.findall(target["expr"]):
                for suffix in HISTOGRAM_SERIES:
                    name = name.removesuffix(suffix)
                names.add(name)
    for variable in dashboard["templating"]["list"]:
        names |= set(METRIC.findall(json.dumps(variable.get("query", ""))))
    return names


def test_monitoring_objects_are_off_by_default():
    docs = render_chart(WITH_SECRETS)

    assert not {"ServiceMonitor", "PodMonitor"} & _kinds(docs)
    assert not [d for d in docs if d["metadata"]["name"].endswith("-dashboard")]


def test_service_monitor_selects_the_operator_and_api_services_on_ports_they_have():
    docs = render_chart(MONITORING)
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    selector = monitor["spec"]["selector"]
    (components,) = selector["matchExpressions"]

    selected = [
        s
        for s in docs
        if s["kind"] == "Service"
        and selector["matchLabels"].items() <= s["metadata"]["labels"].items()
        and s["metadata"]["labels"].get("app.kubernetes.io/component") in components["values"]
    ]

    assert sorted(s["metadata"]["labels"]["app.kubernetes.io/component"] for s in selected) == [
        "api",
        "operator",
    ]
    endpoint_ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    for service in selected:
        assert endpoint_ports & {p["name"] for p in service["spec"]["ports"]}


def test_pod_monitor_selects_the_executor_pods_the_operator_creates():
    (monitor,) = [d for d in render_chart(MONITORING) if d["kind"] == "PodMonitor"]
    executors = executor_deployment(
        name="mge-executor", image="i", replicas=1, concurrency=4, env_secrets=[], service_account="sa"
    )
    pod = executors["spec"]["template"]

    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports


def test_dashboard_is_a_sidecar_config_map_of_valid_json():
    config_map, dashboard = _dashboard(render_chart(MONITORING))

    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["uid"] == "mge-overview"
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"namespace", "masterplan", "trace_id"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_query_of_the_dashboard_names_a_metric_the_project_exports():
    _, dashboard = _dashboard(render_chart(MONITORING))
    queried = _queried_metrics(dashboard)
    exported = _exported_names() | metrics.SEED_METRICS

    assert queried
    assert sorted(queried - exported) == []
    # The dashboard shows every promised metric.
    assert sorted(metrics.SEED_METRICS - queried) == []


def test_dashboard_shipped_in_the_chart_is_the_file_in_the_repository():
    _, dashboard = _dashboard(render_chart(MONITORING))

    assert dashboard == json.loads((REPO / "helm/mge-operator/dashboards/mge-overview.json").read_text())


def test_otlp_endpoint_reaches_the_operator_and_a_bad_one_is_refused():
    docs = render_chart({**WITH_SECRETS, "tracing": {"otlpEndpoint": "http://otel:4318/v1/traces"}})
    (operator,) = [
        d
        for d in docs
        if d["kind"] == "Deployment"
        and d["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
    ]
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert env["MGE_OTEL_ENDPOINT"] == "http://otel:4318/v1/traces"
    with pytest.raises(helm.HelmError, match="otlpEndpoint"):
        render_chart({**WITH_SECRETS, "tracing": {"otlpEndpoint": "otel:4318"}})


def test_chart_with_monitoring_and_tracing_on_lints_clean():
    assert (
        lint_chart({**MONITORING, "tracing": {"otlpEndpoint": "https://otel.example:4318/v1/traces"}}) == []
    )
