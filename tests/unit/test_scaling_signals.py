"""The scaler's signal health and the ExecutorScaling condition it puts on executing Masterplans."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from mge.concurrency.signals import SignalSource, local_health, prometheus_health
from mge.models.concurrency_api import ScalingSignals
from mge.models.conditions import ConditionStatus, ConditionType, Reason, find_condition
from mge.models.masterplan import MasterplanStatus
from mge.models.progress import Progress, Spend
from mge.plan.execution import decide_execution

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
URL = "http://prometheus.monitoring:9090"


def _signals(health, *, updated_at=NOW) -> ScalingSignals:
    return ScalingSignals(
        source=health.source.value,
        healthy=health.healthy,
        reason=health.reason.value,
        message=health.message,
        since=updated_at,
        updated_at=updated_at,
    )


def _progress(running=2, succeeded=3, total=10) -> Progress:
    return Progress(
        total=total,
        pending=total - running - succeeded,
        ready=0,
        running=running,
        succeeded=succeeded,
        failed=0,
        blocked=0,
        cost_usd=Decimal("0"),
        waves_total=3,
        waves_complete=0,
    )


def _decide(signals, progress=None, observed=None, now=NOW):
    spend = Spend(Decimal(0), Decimal(0), Decimal(200), Decimal(70), Decimal(100), False, None)
    return decide_execution(
        name="shop",
        observed=observed or MasterplanStatus(),
        progress=progress or _progress(),
        spend=spend,
        suspended=False,
        generation=1,
        now=now,
        scaling=signals,
    )


def test_unreachable_prometheus_is_unhealthy_and_names_url_error_and_fix():
    health = prometheus_health(URL, error="connection refused", missing=(), replicas=3)

    assert (health.source, health.healthy, health.reason) == (
        SignalSource.PROMETHEUS,
        False,
        Reason.PROMETHEUS_UNAVAILABLE,
    )
    assert health.message.startswith(f"Holding 3 executors: Prometheus at {URL} cannot be queried")
    assert "(connection refused)" in health.message
    assert "check prometheus.url" in health.message


def test_prometheus_without_data_is_healthy_but_says_which_series_are_missing():
    health = prometheus_health(URL, error=None, missing=("LLM p95", "DB p95"), replicas=0)

    assert (health.healthy, health.reason) == (True, Reason.METRICS_MISSING)
    assert "no data for LLM p95, DB p95" in health.message


def test_answering_prometheus_is_metrics_available():
    health = prometheus_health(URL, error=None, missing=(), replicas=4)

    assert (health.healthy, health.reason) == (True, Reason.METRICS_AVAILABLE)


def test_no_prometheus_means_local_statistics():
    health = local_health()

    assert (health.source, health.healthy, health.reason) == (
        SignalSource.LOCAL,
        True,
        Reason.LOCAL_STATISTICS,
    )


def test_prometheus_outage_is_executor_scaling_false_with_a_warning_event():
    outage = _signals(prometheus_health(URL, error="HTTP 503", missing=(), replicas=3))

    status, events = _decide(outage)

    condition = find_condition(status.conditions, ConditionType.EXECUTOR_SCALING)
    assert (condition.status, condition.reason) == (ConditionStatus.FALSE, "PrometheusUnavailable")
    assert "Holding 3 executors" in condition.message
    assert [(e.type, e.reason) for e in events if e.reason == "PrometheusUnavailable"] == [
        ("Warning", "PrometheusUnavailable")
    ]


def test_same_outage_next_period_posts_no_second_event():
    outage = _signals(prometheus_health(URL, error="HTTP 503", missing=(), replicas=3))
    first, _ = _decide(outage)

    _, events = _decide(outage, observed=first, now=NOW + timedelta(seconds=10))

    assert [e.reason for e in events if e.reason == "PrometheusUnavailable"] == []


def test_recovery_is_executor_scaling_true_and_one_normal_event():
    outage = _signals(prometheus_health(URL, error="HTTP 503", missing=(), replicas=3))
    first, _ = _decide(outage)
    later = NOW + timedelta(seconds=30)

    status, events = _decide(
        _signals(prometheus_health(URL, error=None, missing=(), replicas=3), updated_at=later),
        observed=first,
        now=later,
    )

    condition = find_condition(status.conditions, ConditionType.EXECUTOR_SCALING)
    assert (condition.status, condition.reason, condition.last_transition_time) == (
        ConditionStatus.TRUE,
        "MetricsAvailable",
        later,
    )
    assert [(e.type, e.reason) for e in events] == [("Normal", "MetricsAvailable")]


def test_a_finished_plan_keeps_its_last_executor_scaling_condition():
    outage = _signals(prometheus_health(URL, error="HTTP 503", missing=(), replicas=3))

    status, _ = _decide(outage, progress=_progress(running=0, succeeded=10))

    assert find_condition(status.conditions, ConditionType.EXECUTOR_SCALING) is None


def test_a_scaler_that_stopped_reporting_is_unknown_not_a_stale_verdict():
    old = _signals(local_health(), updated_at=NOW - timedelta(minutes=6))

    status, _ = _decide(old)

    condition = find_condition(status.conditions, ConditionType.EXECUTOR_SCALING)
    assert (condition.status, condition.reason) == (ConditionStatus.UNKNOWN, "ScalerNotReporting")
    assert "MGE_EXECUTOR_IMAGE" in condition.message


def test_without_a_scaler_no_executor_scaling_condition_is_written():
    status, _ = _decide(None)

    assert find_condition(status.conditions, ConditionType.EXECUTOR_SCALING) is None
