"""Execution status from store progress: counts, Progressing, Complete, Failed naming atoms and dependents."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from mge.models.conditions import ConditionStatus, ConditionType, Reason, find_condition
from mge.models.masterplan import MasterplanStatus, Phase
from mge.models.progress import Progress
from mge.plan.execution import decide_execution, decide_store_unavailable

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _progress(**counts) -> Progress:
    fields = {
        "total": 10,
        "pending": 0,
        "ready": 0,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "blocked": 0,
        "cost_usd": Decimal("0"),
        "waves_total": 3,
        "waves_complete": 0,
    }
    return Progress(**{**fields, **counts})


def _decide(progress, observed=None, suspended=False, now=NOW):
    base = observed or MasterplanStatus()
    base.cost.limit_usd = 200.0
    return decide_execution(
        name="shop", observed=base, progress=progress, suspended=suspended, generation=1, now=now
    )


def _condition(status, type_):
    return find_condition(status.conditions, type_)


def test_running_plan_reports_counts_cost_and_progressing():
    status, events = _decide(_progress(running=2, succeeded=3, ready=5, cost_usd=Decimal("50")))

    assert (status.atoms.running, status.atoms.succeeded, status.atoms.pending) == (2, 3, 5)
    assert status.progress == "3/10"
    assert (status.cost.current_usd, status.cost.percent_used) == (50.0, 25.0)
    assert _condition(status, ConditionType.PROGRESSING).reason == Reason.ATOMS_RUNNING
    assert status.phase == Phase.RUNNING
    assert status.started_at == NOW
    assert [e.reason for e in events] == ["AtomsRunning"]


def test_all_succeeded_completes_the_plan():
    status, _ = _decide(_progress(succeeded=10, waves_complete=3))

    complete = _condition(status, ConditionType.COMPLETE)
    assert (complete.status, complete.reason) == (ConditionStatus.TRUE, Reason.ALL_ATOMS_SUCCEEDED)
    assert status.phase == Phase.SUCCEEDED
    assert status.completed_at == NOW


def test_failures_name_failed_atoms_and_blocked_dependents():
    progress = _progress(
        succeeded=7, failed=1, pending=2, blocked=2, failed_atoms=("models",), blocked_atoms=("api", "cli")
    )

    status, events = _decide(progress)

    failed = _condition(status, ConditionType.FAILED)
    assert failed.reason == Reason.ATOMS_FAILED
    assert "models" in failed.message
    assert "blocked dependents: api, cli" in failed.message
    assert status.phase == Phase.FAILED
    assert ("Warning", "AtomsFailed") in [(e.type, e.reason) for e in events]


def test_suspended_plan_is_not_progressing():
    status, _ = _decide(_progress(succeeded=2, ready=8), suspended=True)

    assert _condition(status, ConditionType.PROGRESSING).reason == Reason.SUSPENDED_BY_USER


def test_unchanged_progress_posts_no_events_and_keeps_times():
    first, _ = _decide(_progress(running=1))

    second, events = _decide(_progress(running=1), observed=first, now=NOW + timedelta(seconds=10))

    assert events == []
    assert second.started_at == NOW
    assert second.to_kube() == first.to_kube()


def test_store_outage_is_a_warning_condition_with_what_to_check():
    status, events = decide_store_unavailable(MasterplanStatus(), "connection refused", 1, NOW)

    progressing = _condition(status, ConditionType.PROGRESSING)
    assert progressing.reason == Reason.STORE_UNAVAILABLE
    assert "database Secret" in progressing.message
    assert events[0].type == "Warning"
