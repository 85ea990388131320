"""Prometheus metrics, with the exact names the product promises (v2_*) plus the mge_* series alerts need."""

from collections.abc import Sequence
from typing import Final

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

from mge.acceptance.gate import RequirementOutcome, TestStatus
from mge.plan.execution import GateOutcome, PrecisionFigures

PLAN_LABELS: Final = ("namespace", "masterplan")

BUDGET_LIMIT = Gauge(
    "v2_budget_limit_usd", "Effective budget of the Masterplan (override included).", PLAN_LABELS
)
PREDICTED_REMAINING = Gauge(
    "v2_predicted_remaining_cost_usd", "Projected cost of the atoms not finished yet.", PLAN_LABELS
)
GUARDRAIL_TRIGGERED = Counter(
    "v2_cost_guardrail_triggered_total",
    "Budget guardrail transitions: soft cap crossed, hard cap reached, projection above budget.",
    (*PLAN_LABELS, "kind"),
)
PAUSED_BUDGET = Gauge(
    "v2_masterplan_paused_budget", "1 while the Masterplan is held at its hard cap.", PLAN_LABELS
)
SPENT = Gauge("mge_masterplan_spent_usd", "Settled LLM spend of the Masterplan.", PLAN_LABELS)
SOFT_CAP = Gauge("mge_masterplan_soft_cap_usd", "Soft cap of the Masterplan in USD.", PLAN_LABELS)


def serve_metrics(
    port: int, address: str = "0.0.0.0"
) -> None:  # in a pod, Prometheus scrapes every interface
    """Expose /metrics on `address`:`port` (a daemon thread of prometheus_client)."""
    start_http_server(port, addr=address)


CONCURRENCY_LIMIT = Gauge("v2_concurrency_limit", "Adaptive limit on in-flight LLM calls.", ("executor",))
CONCURRENCY_LIMIT_CHANGES = Counter(
    "v2_concurrency_limit_changes_total", "Changes of the adaptive limit.", ("executor", "direction")
)
QUEUE_SIZE = Gauge("v2_backpressure_queue_size", "Atoms waiting for an LLM slot.", ("executor",))
QUEUE_WAIT = Histogram(
    "v2_backpressure_queue_wait_seconds",
    "Time atoms waited for an LLM slot.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
QUEUE_DROPS = Counter("v2_backpressure_queue_drops_total", "Atoms refused by a full queue.", ("executor",))
QUEUE_TIMEOUTS = Counter("v2_backpressure_queue_timeouts_total", "Atoms that waited too long.", ("executor",))

LLM_LATENCY = Histogram(
    "mge_llm_request_duration_seconds",
    "LLM call latency as the executor saw it (retries included), cache hits excluded.",
    ("model",),
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
)
DB_LATENCY = Histogram(
    "mge_db_query_duration_seconds",
    "Latency of every Postgres query of the operator and executors, by its first keyword (select, with, ...).",
    ("operation",),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
LLM_REQUESTS = Counter(
    "mge_llm_requests_total",
    "LLM calls by outcome (ok, overloaded, rate_limited, error), retries included.",
    ("outcome",),
)

# --- cache ---
# Label `cache` is llm (prompt cache) or rag (retrieval cache); hit rate = hits / (hits + misses).
CACHE_LABELS: Final = ("cache",)
CACHE_HITS = Counter("v2_cache_hits_total", "Lookups answered from the cache.", CACHE_LABELS)
CACHE_MISSES = Counter(
    "v2_cache_misses_total", "Lookups of cacheable calls the cache could not answer.", CACHE_LABELS
)


def cache_lookups(cache: str) -> tuple[int, int]:
    """(hits, misses) this process has counted for `cache` ("llm" or "rag") so far."""
    hits = REGISTRY.get_sample_value("v2_cache_hits_total", {"cache": cache}) or 0.0
    misses = REGISTRY.get_sample_value("v2_cache_misses_total", {"cache": cache}) or 0.0
    return int(hits), int(misses)


CACHE_WRITES = Counter("v2_cache_writes_total", "Entries written to the cache.", CACHE_LABELS)
CACHE_INVALIDATIONS = Counter(
    "v2_cache_invalidations_total",
    "Entries removed by invalidation (masterplan, model or all).",
    CACHE_LABELS,
)
CACHE_ERRORS = Counter(
    "v2_cache_errors_total",
    "Cache failures (Redis down, timeout, corrupt entry); the call went to the LLM instead.",
    (*CACHE_LABELS, "operation"),
)
CACHE_SAVINGS = Counter(
    "v2_cache_cost_savings_usd_total", "LLM cost avoided by cache hits, at the price table.", CACHE_LABELS
)
BATCH_SIZE = Histogram(
    "v2_batch_size", "Atoms per request sent by the request batcher.", buckets=(1, 2, 3, 4, 5, 8, 10, 20)
)
BATCH_REQUESTS = Counter(
    "v2_batch_requests_processed_total",
    "Atom requests through the batcher by outcome: batched, alone (nothing to pair with), fallback (batch unusable).",
    ("outcome",),
)

# --- traceability ---
TRACE_COVERAGE = Gauge(
    "v2_trace_coverage_percentage", "Share of stored rows carrying their Masterplan's trace_id (goal 100)."
)
CORRELATION_STRENGTH = Gauge(
    "v2_correlation_strength",
    "Spearman's rho over recently finished atoms/calls; absent while undefined (too few samples).",
    ("correlation_type",),
)

# Every metric name the product promises (the seed's Monitoring section), for tests and dashboards.
SEED_METRICS: Final = frozenset(
    {
        "v2_acceptance_tests_generated_total",
        "v2_acceptance_test_execution_seconds",
        "v2_acceptance_test_pass_rate",
        "v2_gate_s_status",
        "v2_gate_s_must_pass_rate",
        "v2_gate_s_should_pass_rate",
        "v2_budget_limit_usd",
        "v2_predicted_remaining_cost_usd",
        "v2_cost_guardrail_triggered_total",
        "v2_masterplan_paused_budget",
        "v2_concurrency_limit",
        "v2_concurrency_limit_changes_total",
        "v2_backpressure_queue_size",
        "v2_backpressure_queue_wait_seconds",
        "v2_backpressure_queue_drops_total",
        "v2_backpressure_queue_timeouts_total",
        "v2_cache_hits_total",
        "v2_cache_misses_total",
        "v2_cache_writes_total",
        "v2_cache_invalidations_total",
        "v2_cache_errors_total",
        "v2_cache_cost_savings_usd_total",
        "v2_batch_size",
        "v2_batch_requests_processed_total",
        "v2_precision_score",
        "v2_precision_score_components",
        "v2_trace_coverage_percentage",
        "v2_correlation_strength",
    }
)

# --- acceptance ---
# Acceptance tests, Gate S and the precision score (issue 8). Per-plan gauges are set by whoever computes the
# figure: the operator in the cluster, the local run otherwise.
ACCEPTANCE_TESTS_GENERATED = Counter(
    "v2_acceptance_tests_generated_total",
    "Acceptance tests generated from requirements and stored, by language.",
    ("language",),
)
ACCEPTANCE_TEST_SECONDS = Histogram(
    "v2_acceptance_test_execution_seconds",
    "Duration of one acceptance test run in the sandbox, by outcome.",
    ("status",),
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60),
)
ACCEPTANCE_PASS_RATE = Gauge(
    "v2_acceptance_test_pass_rate",
    "Share of the plan's acceptance tests that passed, in percent.",
    PLAN_LABELS,
)
GATE_S_STATUS = Gauge(
    "v2_gate_s_status", "Gate S of the plan: 1 passed, 0 failed, -1 not decided yet.", PLAN_LABELS
)
GATE_S_MUST_PASS_RATE = Gauge(
    "v2_gate_s_must_pass_rate", "MUST requirements whose test passed, in percent.", PLAN_LABELS
)
GATE_S_SHOULD_PASS_RATE = Gauge(
    "v2_gate_s_should_pass_rate", "SHOULD requirements whose test passed, in percent.", PLAN_LABELS
)
PRECISION_SCORE = Gauge(
    "v2_precision_score", "Precision: 50% spec + 30% integration + 20% validation, in percent.", PLAN_LABELS
)
PRECISION_COMPONENTS = Gauge(
    "v2_precision_score_components",
    "The precision score's parts (component = spec, integration, validation), in percent.",
    (*PLAN_LABELS, "component"),
)


def export_verdict(
    namespace: str, masterplan: str, gate: GateOutcome | None, score: PrecisionFigures | None
) -> None:
    """Gate S and precision gauges of one plan, from its stored verdict (so restarts re-export the same)."""
    labels = (namespace, masterplan)
    GATE_S_STATUS.labels(*labels).set(-1 if gate is None else 1 if gate.passed else 0)
    if gate is not None and gate.must_pass_rate is not None:
        GATE_S_MUST_PASS_RATE.labels(*labels).set(gate.must_pass_rate)
    if gate is not None and gate.should_pass_rate is not None:
        GATE_S_SHOULD_PASS_RATE.labels(*labels).set(gate.should_pass_rate)
    if score is not None:
        PRECISION_SCORE.labels(*labels).set(score.score)
        for component in ("spec", "integration", "validation"):
            PRECISION_COMPONENTS.labels(*labels, component).set(getattr(score, component))


def export_pass_rate(namespace: str, masterplan: str, outcomes: Sequence[RequirementOutcome]) -> None:
    if outcomes:
        passed = sum(1 for o in outcomes if o.status is TestStatus.PASSED)
        ACCEPTANCE_PASS_RATE.labels(namespace, masterplan).set(passed / len(outcomes) * 100)


def initialise_plan_series(namespace: str, masterplan: str) -> None:
    """Counters of a plan exist at 0 from its start, so rate() and alerts see the first increment."""
    for kind in ("soft", "hard", "projected"):
        GUARDRAIL_TRIGGERED.labels(namespace, masterplan, kind)


def initialise_executor_series(executor: str) -> None:
    """An executor's counters exist at 0 from its start (rate() needs a first sample before the increment)."""
    for direction in ("up", "down"):
        CONCURRENCY_LIMIT_CHANGES.labels(executor, direction)
    QUEUE_DROPS.labels(executor)
    QUEUE_TIMEOUTS.labels(executor)
    QUEUE_SIZE.labels(executor)


def initialise_cache_series() -> None:
    for cache in ("llm", "rag"):
        for counter in (CACHE_HITS, CACHE_MISSES, CACHE_WRITES, CACHE_INVALIDATIONS, CACHE_SAVINGS):
            counter.labels(cache)
        for operation in ("get", "set", "delete"):
            CACHE_ERRORS.labels(cache, operation)
    for outcome in ("batched", "alone", "fallback"):
        BATCH_REQUESTS.labels(outcome)
