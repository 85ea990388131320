"""All 28 promised metrics, scraped over HTTP from a live local run's /metrics: names, types and labels.

The run is `mge run`'s engine in this process (embedded Postgres and Redis, recorded answers, the real
sandbox for acceptance tests) with prometheus_client's HTTP server in front of the registry, as
`mge run --metrics-port` serves it."""

import asyncio
import shutil
import socket
import tempfile
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from mge.adapters.llm import ReplayLLM
from mge.adapters.manifests import load_plan_input
from mge.adapters.metrics import SEED_METRICS
from mge.cost.pricing import DEFAULT_PRICES
from mge.executor.local_run import LOCAL_NAMESPACE, LocalRun, run_local

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "inventory-api"
PLAN = ("namespace", "masterplan")

# name -> (type, label names), as the seed and docs/observability.md promise them.
EXPECTED = {
    "v2_acceptance_tests_generated_total": ("counter", ("language",)),
    "v2_acceptance_test_execution_seconds": ("histogram", ("status",)),
    "v2_acceptance_test_pass_rate": ("gauge", PLAN),
    "v2_gate_s_status": ("gauge", PLAN),
    "v2_gate_s_must_pass_rate": ("gauge", PLAN),
    "v2_gate_s_should_pass_rate": ("gauge", PLAN),
    "v2_budget_limit_usd": ("gauge", PLAN),
    "v2_predicted_remaining_cost_usd": ("gauge", PLAN),
    "v2_cost_guardrail_triggered_total": ("counter", (*PLAN, "kind")),
    "v2_masterplan_paused_budget": ("gauge", PLAN),
    "v2_concurrency_limit": ("gauge", ("executor",)),
    "v2_concurrency_limit_changes_total": ("counter", ("executor", "direction")),
    "v2_backpressure_queue_size": ("gauge", ("executor",)),
    "v2_backpressure_queue_wait_seconds": ("histogram", ()),
    "v2_backpressure_queue_drops_total": ("counter", ("executor",)),
    "v2_backpressure_queue_timeouts_total": ("counter", ("executor",)),
    "v2_cache_hits_total": ("counter", ("cache",)),
    "v2_cache_misses_total": ("counter", ("cache",)),
    "v2_cache_writes_total": ("counter", ("cache",)),
    "v2_cache_invalidations_total": ("counter", ("cache",)),
    "v2_cache_errors_total": ("counter", ("cache", "operation")),
    "v2_cache_cost_savings_usd_total": ("counter", ("cache",)),
    "v2_batch_size": ("histogram", ()),
    "v2_batch_requests_processed_total": ("counter", ("outcome",)),
    "v2_precision_score": ("gauge", PLAN),
    "v2_precision_score_components": ("gauge", (*PLAN, "component")),
    "v2_trace_coverage_percentage": ("gauge", ()),
    "v2_correlation_strength": ("gauge", ("correlation_type",)),
}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scrape(port: int) -> dict[str, tuple[str, list]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    families = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        families[name] = (family.type, family.samples)
    return families


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    work = tmp_path_factory.mktemp("scrape")
    name, spec, atoms = load_plan_input(EXAMPLE)
    run = LocalRun(
        example=EXAMPLE,
        name=name,
        spec=spec,
        atoms=atoms,
        out=work / "out",
        # Not under tmp_path: Postgres runs as its own user when the tests run as root (see test_local_run).
        state_dir=Path(tempfile.mkdtemp(prefix="mge-scrape-")) / "state",
        resume=False,
        executors=1,
        concurrency=4,
        prices=DEFAULT_PRICES,
        cache_dir=work / "cache",
    )
    port = _free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")
    try:
        result = asyncio.run(run_local(run, ReplayLLM(EXAMPLE / "responses.jsonl"), Console(quiet=True)))
        assert result.succeeded, result.failures
        yield name, _scrape(port)
    finally:
        server.shutdown()
        thread.join(timeout=5)
        shutil.rmtree(run.state_dir.parent, ignore_errors=True)


def test_the_seed_names_exactly_28_metrics_and_the_list_is_the_one_checked_here():
    assert len(SEED_METRICS) == 28
    assert set(EXPECTED) == SEED_METRICS


@pytest.mark.parametrize("metric", sorted(EXPECTED))
def test_metric_is_exported_with_its_type_and_labels(scraped, metric):
    plan, families = scraped
    kind, labels = EXPECTED[metric]

    assert metric in families, f"{metric} is not on /metrics"
    exported_type, samples = families[metric]
    assert exported_type == kind
    values = [s for s in samples if not s.name.endswith("_created")]
    assert values, f"{metric} has no sample"
    for sample in values:
        names = set(sample.labels) - {"le"} if kind == "histogram" else set(sample.labels)
        assert names == set(labels), (metric, sample)
    if labels[:2] == PLAN:
        assert any(
            s.labels["namespace"] == LOCAL_NAMESPACE and s.labels["masterplan"] == plan for s in values
        )


def test_the_run_reports_full_trace_coverage_and_a_passed_gate(scraped):
    plan, families = scraped
    (coverage,) = families["v2_trace_coverage_percentage"][1]
    gate = [s for s in families["v2_gate_s_status"][1] if s.labels["masterplan"] == plan]

    assert coverage.value == 100.0
    assert [s.value for s in gate] == [1.0]
