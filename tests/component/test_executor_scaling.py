"""The operator's executor Deployment on the fake Kubernetes API, sized from a real Postgres queue."""

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web

from mge.adapters.kube import Kube, load_client_configuration
from mge.adapters.prometheus_query import PrometheusQuery
from mge.adapters.store.store import LazyStore, Store
from mge.concurrency.replicas import ReplicaBounds
from mge.concurrency.scaler import ScalerPolicy
from mge.concurrency.statistics import CallSummary
from mge.controller.executors import COMPONENT_LABEL, sync_executors_once
from mge.settings import Settings
from tests.builders import atom, register
from tests.support.operator import eventually, fake_cluster, running_operator

pytestmark = pytest.mark.component

REPO = Path(__file__).resolve().parents[2]

SETTINGS = Settings(
    executor_name="mge-executor",
    executor_image="registry/mge:1",
    executor_min_replicas=0,
    executor_max_replicas=10,
    executor_concurrency=4,
    executor_env_secrets="db,llm",
    executor_service_account="mge-executor",
    executor_prices_config_map="",
    otel_endpoint="",
    executor_env_config_maps="mge-cache",
    llm_replay="",
)


def _policy() -> ScalerPolicy:
    return ScalerPolicy(ReplicaBounds(0, 10, atoms_per_executor=4))


async def _queue(pg: str, atoms: int) -> None:
    store = await Store.connect(pg)
    try:
        await register(store, *[atom(f"a{i}") for i in range(atoms)], name="p")
    finally:
        await store.close()


async def test_deployment_is_created_and_grows_with_the_queue_at_most_double_or_plus_four(pg):
    await _queue(pg, 40)  # 40 ready atoms / 4 per executor = 10 wanted
    async with fake_cluster() as api:
        kube, store, policy = Kube(load_client_configuration(str(api.url))), LazyStore(pg), _policy()
        try:
            first = await sync_executors_once(kube, store, "ops", SETTINGS, policy, now=0)
            second = await sync_executors_once(kube, store, "ops", SETTINGS, policy, now=30)
        finally:
            await store.close()
            kube.close()
        (deployment,) = api.objects_of("deployments", "ops")

    assert (first.replicas, second.replicas) == (4, 8)  # from 0: +4; then x2
    assert deployment["spec"]["replicas"] == 8
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


async def test_unreachable_store_holds_the_current_size(pg):
    await _queue(pg, 40)
    async with fake_cluster() as api:
        kube, policy = Kube(load_client_configuration(str(api.url))), _policy()
        good, bad = LazyStore(pg), LazyStore("postgresql://mge@127.0.0.1:1/mge")
        try:
            await sync_executors_once(kube, good, "ops", SETTINGS, policy, now=0)
            held = await sync_executors_once(kube, bad, "ops", SETTINGS, policy, now=30)
        finally:
            await good.close()
            kube.close()

    assert (held.replicas, held.reason) == (4, "holding: metrics unavailable")


@pytest.fixture
async def prometheus():
    """A stand-in for Prometheus' HTTP query API (no Prometheus server runs in these tests)."""
    answers: dict[str, float | None] = {}

    async def query(request: web.Request) -> web.Response:
        promql = request.query["query"]
        if "down" in answers:  # what Prometheus answers when its storage or a rule evaluation is broken
            return web.json_response(
                {"status": "error", "errorType": "unavailable", "error": "down"}, status=503
            )
        value = next((v for key, v in answers.items() if key in promql), None)
        result = [] if value is None else [{"metric": {}, "value": [0, str(value)]}]
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield PrometheusQuery(f"http://127.0.0.1:{port}"), answers
    await runner.cleanup()


async def test_slow_llm_in_prometheus_stops_scale_up(pg, prometheus):
    query, answers = prometheus
    answers["mge_llm_request_duration_seconds"] = 4.5
    await _queue(pg, 40)
    async with fake_cluster() as api:
        kube, store, policy = Kube(load_client_configuration(str(api.url))), LazyStore(pg), _policy()
        try:
            decision = await sync_executors_once(
                kube, store, "ops", SETTINGS, policy, now=0, prometheus=query
            )
        finally:
            await store.close()
            kube.close()

    assert decision.replicas == 0
    assert "LLM p95" in decision.reason


async def test_unreachable_prometheus_holds(pg):
    await _queue(pg, 40)
    async with fake_cluster() as api:
        kube, store, policy = Kube(load_client_configuration(str(api.url))), LazyStore(pg), _policy()
        try:
            decision = await sync_executors_once(
                kube, store, "ops", SETTINGS, policy, now=0, prometheus=PrometheusQuery("http://127.0.0.1:1")
            )
        finally:
            await store.close()
            kube.close()

    assert (decision.replicas, decision.reason) == (0, "holding: metrics unavailable")


async def test_high_llm_error_rate_stops_scale_up(pg, prometheus):
    query, answers = prometheus
    answers["mge_llm_requests_total"] = 0.3
    await _queue(pg, 40)
    async with fake_cluster() as api:
        kube, store, policy = Kube(load_client_configuration(str(api.url))), LazyStore(pg), _policy()
        try:
            decision = await sync_executors_once(
                kube, store, "ops", SETTINGS, policy, now=0, prometheus=query
            )
        finally:
            await store.close()
            kube.close()

    assert "error rate" in decision.reason


async def test_a_prometheus_outage_is_logged_once(pg, caplog):
    await _queue(pg, 4)
    down = PrometheusQuery("http://127.0.0.1:1")
    async with fake_cluster() as api:
        kube, store, policy = Kube(load_client_configuration(str(api.url))), LazyStore(pg), _policy()
        try:
            for tick in range(3):
                await sync_executors_once(
                    kube, store, "ops", SETTINGS, policy, now=tick * 30, prometheus=down
                )
        finally:
            await store.close()
            kube.close()

    assert sum("until Prometheus answers" in r.getMessage() for r in caplog.records) == 1


async def test_scaling_decisions_are_events_on_the_executor_deployment(pg):
    await _queue(pg, 40)
    async with fake_cluster() as api:
        kube, store, policy = Kube(load_client_configuration(str(api.url))), LazyStore(pg), _policy()
        try:
            await sync_executors_once(kube, store, "ops", SETTINGS, policy, now=0)
            await sync_executors_once(kube, store, "ops", SETTINGS, policy, now=30)
        finally:
            await store.close()
            kube.close()
        events = api.objects_of("events", "ops")

    (event,) = events
    assert (event["reason"], event["involvedObject"]["name"]) == ("ScaledUp", "mge-executor")
    assert event["message"].startswith("4 -> 8 executors: scale up")


async def test_a_prometheus_outage_is_one_warning_event_and_its_end_one_more(pg, prometheus):
    await _queue(pg, 4)
    query, answers = prometheus
    async with fake_cluster() as api:
        kube, store, policy = Kube(load_client_configuration(str(api.url))), LazyStore(pg), _policy()
        try:
            await sync_executors_once(kube, store, "ops", SETTINGS, policy, now=0)  # creates the Deployment
            answers["down"] = None
            for tick in range(1, 4):
                await sync_executors_once(
                    kube, store, "ops", SETTINGS, policy, now=tick * 30, prometheus=query
                )
            del answers["down"]
            await sync_executors_once(kube, store, "ops", SETTINGS, policy, now=120, prometheus=query)
        finally:
            await store.close()
            kube.close()
        events = [e for e in api.objects_of("events", "ops") if e["reason"].startswith("Prometheus")]

    assert sorted((e["reason"], e["type"]) for e in events) == [  # the fake API lists them unordered
        ("PrometheusAvailable", "Normal"),
        ("PrometheusUnavailable", "Warning"),
    ]
    warning = next(e for e in events if e["type"] == "Warning")
    assert "Holding 1 executors" in warning["message"]


async def test_signal_health_is_recorded_and_since_moves_only_on_a_change(pg, prometheus):
    query, answers = prometheus
    await _queue(pg, 4)
    async with fake_cluster() as api:
        kube, store, policy = Kube(load_client_configuration(str(api.url))), LazyStore(pg), _policy()
        try:
            answers["down"] = None
            await sync_executors_once(kube, store, "ops", SETTINGS, policy, now=0, prometheus=query)
            first = await (await store.get()).scaling_signals()
            await sync_executors_once(kube, store, "ops", SETTINGS, policy, now=30, prometheus=query)
            second = await (await store.get()).scaling_signals()
            del answers["down"]
            await sync_executors_once(kube, store, "ops", SETTINGS, policy, now=60, prometheus=query)
            recovered = await (await store.get()).scaling_signals()
        finally:
            await store.close()
            kube.close()

    assert (first.source, first.healthy, first.reason) == ("prometheus", False, "PrometheusUnavailable")
    assert f"Prometheus at {query.base_url} cannot be queried (answered unavailable: down)" in first.message
    assert second.since == first.since
    assert second.updated_at > first.updated_at
    assert (recovered.healthy, recovered.reason) == (True, "MetricsMissing")  # answers, but no series yet
    assert recovered.since > first.since


async def test_prometheus_outage_is_a_condition_on_executing_masterplans_with_one_event(pg):
    body = yaml.safe_load((REPO / "examples" / "hello" / "masterplan.yaml").read_text())
    body["metadata"]["namespace"] = "team-a"
    down = PrometheusQuery("http://127.0.0.1:1")
    async with fake_cluster() as api, httpx.AsyncClient(base_url=str(api.url)) as client:
        created = await client.post(
            "/apis/mge.devmatrix.io/v1alpha1/namespaces/team-a/masterplans", json=body
        )
        assert created.status_code == 201, created.text
        kube, store, policy = Kube(load_client_configuration(str(api.url))), LazyStore(pg), _policy()
        try:
            async with running_operator(api, pg, ["team-a"]):
                await eventually(lambda: _planned(api))
                await sync_executors_once(kube, store, "ops", SETTINGS, policy, now=0, prometheus=down)
                outage = await eventually(lambda: _scaling(api, "False"))
                for tick in range(1, 4):  # the outage goes on over several periods
                    await sync_executors_once(
                        kube, store, "ops", SETTINGS, policy, now=tick * 30, prometheus=down
                    )
                await sync_executors_once(kube, store, "ops", SETTINGS, policy, now=120)  # no Prometheus now
                local = await eventually(lambda: _scaling(api, "True"))
        finally:
            await store.close()
            kube.close()
        events = [e["reason"] for e in api.objects_of("events", "team-a")]

    assert outage["reason"] == "PrometheusUnavailable"
    assert outage["message"].startswith(
        "Holding 0 executors: Prometheus at http://127.0.0.1:1 cannot be queried (ClientConnectorError: "
    )
    assert "check prometheus.url" in outage["message"]
    assert local["reason"] == "LocalStatistics"
    assert (events.count("PrometheusUnavailable"), events.count("LocalStatistics")) == (1, 1)


def _planned(api) -> bool:
    (plan,) = api.objects_of("masterplans", "team-a")
    conditions = (plan.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Planned" and c["status"] == "True" for c in conditions)


def _scaling(api, status: str | None = None):
    (plan,) = api.objects_of("masterplans", "team-a")
    conditions = (plan.get("status") or {}).get("conditions") or []
    found = next((c for c in conditions if c["type"] == "ExecutorScaling"), None)
    return found if found and status in (None, found["status"]) else None


async def _executor_pods(api, client, held: dict[str, int], pg: str) -> None:
    """Pods as the executor ReplicaSet would create them, and the load each executor reported."""
    for name in held:
        pod = {"metadata": {"name": name, "labels": dict(COMPONENT_LABEL)}, "spec": {"containers": []}}
        created = await client.post("/api/v1/namespaces/ops/pods", json=pod)
        assert created.status_code == 201, created.text
    store = await Store.connect(pg)
    try:
        for name, atoms in held.items():
            await store.report_executor(
                name, limit=4, in_flight=min(atoms, 4), queue_size=0, adjustments=[], atoms_held=atoms
            )
    finally:
        await store.close()


async def _resize(client, replicas: int) -> None:
    response = await client.patch(
        "/apis/apps/v1/namespaces/ops/deployments/mge-executor",
        json={"spec": {"replicas": replicas}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 200, response.text


async def _scale_down_from(pg: str, replicas: int, held: dict[str, int]) -> tuple[Any, list, list]:
    """One scaler pass over `replicas` executor pods holding `held` atoms: (decision, pods, deployments)."""
    async with fake_cluster() as api, httpx.AsyncClient(base_url=str(api.url)) as client:
        kube, store = Kube(load_client_configuration(str(api.url))), LazyStore(pg)
        try:
            await sync_executors_once(kube, store, "ops", SETTINGS, _policy(), now=0)  # creates it at 0
            await _resize(client, replicas)
            await _executor_pods(api, client, held, pg)
            decision = await sync_executors_once(kube, store, "ops", SETTINGS, _policy(), now=0)
        finally:
            await store.close()
            kube.close()
        return decision, api.objects_of("pods", "ops"), api.objects_of("deployments", "ops")


async def test_scale_down_removes_only_idle_executors_and_ranks_their_pods_first(pg):
    held = {"mge-executor-a": 2, "mge-executor-b": 0, "mge-executor-c": 0, "mge-executor-d": 1}
    decision, pod_list, (deployment,) = await _scale_down_from(pg, 4, held)
    pods = {p["metadata"]["name"]: p["metadata"]["annotations"] for p in pod_list}

    assert decision.replicas == 3  # 25% of 4; 2 executors are idle
    assert deployment["spec"]["replicas"] == 3
    costs = {name: int(a["controller.kubernetes.io/pod-deletion-cost"]) for name, a in pods.items()}
    assert costs == {"mge-executor-a": 2, "mge-executor-b": 0, "mge-executor-c": 0, "mge-executor-d": 1}


async def test_scale_down_holds_while_every_executor_holds_atoms(pg):
    held = {"mge-executor-a": 2, "mge-executor-b": 1}
    decision, pods, _ = await _scale_down_from(pg, 2, held)

    assert (decision.replicas, decision.reason) == (
        2,
        "holding: would scale down to 1, but no executor is idle",
    )
    assert all("annotations" not in p["metadata"] for p in pods)  # nothing to rank when nothing is removed


async def _report_statistics(pg: str, **summary) -> None:
    store = await Store.connect(pg)
    try:
        await store.report_executor(
            "mge-executor-a",
            limit=4,
            in_flight=4,
            queue_size=0,
            adjustments=[],
            atoms_held=4,
            statistics=CallSummary(
                **{"llm_p95_s": 1.0, "db_p95_s": 0.01, "llm_requests": 100, "llm_errors": 0, **summary}
            ),
        )
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("summary", "strained"),
    [
        ({"llm_p95_s": 4.5}, "LLM p95"),
        ({"db_p95_s": 0.4}, "DB p95"),
        ({"llm_errors": 30}, "error rate"),
    ],
)
async def test_without_prometheus_the_executors_own_reports_stop_scale_up(pg, summary, strained):
    await _queue(pg, 40)
    await _report_statistics(pg, **summary)
    async with fake_cluster() as api:
        kube, store = Kube(load_client_configuration(str(api.url))), LazyStore(pg)
        try:
            decision = await sync_executors_once(kube, store, "ops", SETTINGS, _policy(), now=0)
            signals = await (await store.get()).scaling_signals()
        finally:
            await store.close()
            kube.close()

    assert decision.replicas == 0
    assert decision.reason == f"holding: {strained} over limit"
    assert (signals.source, signals.reason) == ("local", "LocalStatistics")


async def test_without_prometheus_healthy_executor_reports_let_the_queue_scale_up(pg):
    await _queue(pg, 40)
    await _report_statistics(pg)
    async with fake_cluster() as api:
        kube, store = Kube(load_client_configuration(str(api.url))), LazyStore(pg)
        try:
            decision = await sync_executors_once(kube, store, "ops", SETTINGS, _policy(), now=0)
        finally:
            await store.close()
            kube.close()

    assert decision.replicas == 4
