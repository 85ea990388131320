"""Execution status from store progress: counts, Progressing, Complete, Failed naming atoms and dependents."""

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from mge.cost.caps import check_override, usd
from mge.models.concurrency_api import EndpointOutage
from mge.models.conditions import ConditionStatus, ConditionType, Reason, find_condition
from mge.models.crd import masterplan_crd
from mge.models.masterplan import MasterplanSpec, MasterplanStatus, Phase
from mge.models.progress import Progress, Spend
from mge.plan.execution import decide_execution, decide_store_unavailable
from tests.support.crd_schema import admission_errors, apply_defaults

NOW = datetime(2026, 1, 1, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


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


def _spend(spent="0", reserved="0", exhausted=False, limit="200", override_by=None) -> Spend:
    return Spend(
        spent_usd=Decimal(spent),
        reserved_usd=Decimal(reserved),
        limit_usd=Decimal(limit),
        soft_cap_percent=Decimal(70),
        hard_cap_percent=Decimal(100),
        exhausted=exhausted,
        override_by=override_by,
    )


def _decide(progress, observed=None, suspended=False, now=NOW, spend=None):
    base = observed or MasterplanStatus()
    return decide_execution(
        name="shop",
        observed=base,
        progress=progress,
        spend=spend or _spend(str(progress.cost_usd)),
        suspended=suspended,
        generation=1,
        now=now,
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


def test_a_run_that_ends_posts_its_completion_once_though_two_conditions_change():
    _, events = _decide(_progress(succeeded=10, waves_complete=3))

    assert [e.reason for e in events].count(Reason.ALL_ATOMS_SUCCEEDED) == 1


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


def test_soft_cap_crossing_sets_the_condition_with_spend_and_projection():
    status, events = _decide(_progress(succeeded=5, ready=5), spend=_spend("150"))

    soft = _condition(status, ConditionType.BUDGET_SOFT_CAP_EXCEEDED)
    assert (soft.status, soft.reason) == (ConditionStatus.TRUE, Reason.SOFT_CAP_EXCEEDED)
    assert "Spent $150.00 of $200.00 (75.0%)" in soft.message
    assert status.cost.projected_usd == 300.0  # 150 for 5 atoms, 5 more to go at the same mean
    assert ("Warning", "SoftCapExceeded") in [(e.type, e.reason) for e in events]


def test_soft_cap_event_is_posted_once_per_crossing():
    first, _ = _decide(_progress(succeeded=5, ready=5), spend=_spend("150"))

    _, events = _decide(_progress(succeeded=6, ready=4), observed=first, spend=_spend("160"))

    assert "SoftCapExceeded" not in [e.reason for e in events]


def test_hard_cap_suspends_plan_and_tells_how_to_resume():
    status, events = _decide(_progress(succeeded=9, ready=1), spend=_spend("199.5", exhausted=True))

    suspended = _condition(status, ConditionType.SUSPENDED)
    assert (suspended.status, suspended.reason) == (ConditionStatus.TRUE, Reason.HARD_CAP_REACHED)
    assert "Spent $199.50 of $200.00" in suspended.message
    assert "kubectl patch masterplan shop --type merge" in suspended.message
    assert '"override":{"limitUSD":300' in suspended.message
    assert _condition(status, ConditionType.PROGRESSING).reason == Reason.HARD_CAP_REACHED
    assert status.phase == Phase.SUSPENDED
    assert ("Warning", "HardCapReached") in [(e.type, e.reason) for e in events]


def test_approved_override_lifts_the_hard_cap_suspension():
    held, _ = _decide(_progress(succeeded=9, ready=1), spend=_spend("199.5", exhausted=True))

    resumed, events = _decide(
        _progress(succeeded=9, running=1),
        observed=held,
        spend=_spend("199.5", limit="300", override_by="alice"),
    )

    suspended = _condition(resumed, ConditionType.SUSPENDED)
    assert (suspended.status, suspended.reason) == (ConditionStatus.FALSE, Reason.OVERRIDE_APPROVED)
    assert "by alice" in suspended.message
    assert resumed.cost.limit_usd == 300.0
    assert resumed.phase == Phase.RUNNING
    assert "OverrideApproved" in [e.reason for e in events]


def test_cost_block_carries_reserved_money_and_percent():
    status, _ = _decide(_progress(running=3), spend=_spend("20", reserved="1.5"))

    assert (status.cost.current_usd, status.cost.reserved_usd, status.cost.percent_used) == (20.0, 1.5, 10.0)


def test_cost_avoided_by_the_cache_is_reported_beside_the_spend():
    spend = dataclasses.replace(_spend(spent="1.5"), cache_saved_usd=Decimal("0.734"))

    status, _ = _decide(_progress(total=4, succeeded=2, running=1, ready=1), spend=spend)

    assert status.cost.cache_saved_usd == 0.734
    assert status.cost.current_usd == 1.5
    assert status.to_kube()["cost"]["cacheSavedUSD"] == 0.734


def _merge(target, patch):
    """RFC 7386 JSON merge patch, as `kubectl patch --type merge` applies it."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge(merged.get(key), value)
    return merged


@pytest.mark.parametrize(
    ("limit", "spent", "reserved"),
    [
        ("0.0004", "0.0004", "0"),
        ("0.0004", "0.00039", "0.00001"),
        ("0.03", "0.0291", "0.0009"),
        ("200", "199.5", "0.5"),
        ("999999", "999998", "0"),
    ],
)
def test_the_suggested_override_is_admitted_and_lets_the_run_continue(limit, spent, reserved):
    """The patch in the hard-cap message, applied as written, passes the CRD schema, its rules and the model."""
    status, _ = _decide(
        _progress(succeeded=9, ready=1), spend=_spend(spent, reserved=reserved, exhausted=True, limit=limit)
    )
    message = _condition(status, ConditionType.SUSPENDED).message

    patch = json.loads(re.search(r"-p '(\{.*\})'", message).group(1))
    crd_schema = masterplan_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    document = yaml.safe_load((REPO / "examples" / "hello" / "masterplan.yaml").read_text())
    document["spec"]["budget"] = {"limitUSD": float(limit)}
    patched = _merge(document, patch)
    assert admission_errors(crd_schema, patched) == []
    spec = MasterplanSpec.model_validate(apply_defaults(crd_schema, patched)["spec"])
    new_limit = Decimal(str(spec.budget.effective_limit_usd))
    assert new_limit > Decimal(limit)
    check_override(new_limit, Decimal(spent), Decimal(reserved))
    assert f"Spent {usd(Decimal(spent))} of {usd(Decimal(limit))}" in message
    assert "$0.00 of" not in message


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        ("0", "$0.00"),
        ("0.0004", "$0.0004"),
        ("0.000012345", "$0.000012"),
        ("0.0291", "$0.0291"),
        ("0.5", "$0.5000"),
        ("199.5", "$199.50"),
        ("1234567.891", "$1,234,567.89"),
    ],
)
def test_money_keeps_the_precision_a_small_amount_needs(amount, shown):
    assert usd(Decimal(amount)) == shown


def test_demo_mode_labels_the_plan_as_a_replay_once():
    progress = _progress(succeeded=10, waves_complete=3)
    first, events = decide_execution(
        name="shop",
        observed=MasterplanStatus(),
        progress=progress,
        spend=_spend(),
        suspended=False,
        generation=1,
        now=NOW,
        replay="/opt/mge/examples",
    )
    again, repeated = decide_execution(
        name="shop",
        observed=first,
        progress=progress,
        spend=_spend(),
        suspended=False,
        generation=1,
        now=NOW,
        replay="/opt/mge/examples",
    )
    plain, _ = _decide(progress)

    replay = _condition(first, ConditionType.LLM_REPLAY)
    assert (replay.status, replay.reason) == (ConditionStatus.TRUE, Reason.RECORDED_ANSWERS)
    assert "no LLM is called" in replay.message
    assert "RecordedAnswers" in [e.reason for e in events]
    assert repeated == []
    assert again == first
    assert _condition(plain, ConditionType.LLM_REPLAY) is None


def _decide_with_outages(observed, outages, progress=None):
    return decide_execution(
        name="shop",
        observed=observed,
        progress=progress or _progress(running=2, succeeded=3),
        spend=_spend(),
        suspended=False,
        generation=1,
        now=NOW,
        outages=outages,
    )


def test_an_endpoint_outage_is_a_warning_condition_naming_it_and_recovery_clears_it_once():
    down = EndpointOutage(
        endpoint="OpenAI-compatible endpoint https://llm.example/v1",
        last_error="LLM endpoint still failing after 6 attempts: HTTP 503: overloaded",
        down_since=NOW - timedelta(minutes=2),
        executors=2,
    )
    healthy, _quiet = _decide_with_outages(MasterplanStatus(), [])
    during, events = _decide_with_outages(healthy, [down])
    still, repeated = _decide_with_outages(during, [down])
    after, recovered = _decide_with_outages(still, [])
    later, nothing = _decide_with_outages(after, [])

    assert _condition(healthy, ConditionType.LLM_AVAILABLE) is None  # no news is the normal case
    condition = _condition(during, ConditionType.LLM_AVAILABLE)
    assert (condition.status, condition.reason) == (ConditionStatus.FALSE, Reason.ENDPOINT_DOWN)
    assert "https://llm.example/v1" in condition.message
    assert "HTTP 503: overloaded" in condition.message
    assert "No atom fails for it" in condition.message
    assert [(e.type, e.reason) for e in events] == [("Warning", "EndpointDown")]
    assert repeated == []
    assert still == during
    back = _condition(after, ConditionType.LLM_AVAILABLE)
    assert (back.status, back.reason) == (ConditionStatus.TRUE, Reason.ENDPOINT_AVAILABLE)
    assert [e.reason for e in recovered] == ["EndpointAvailable"]
    assert nothing == []
    assert later == after


def test_a_finished_plan_is_not_told_of_an_outage():
    down = EndpointOutage(endpoint="e", last_error="HTTP 503", down_since=NOW, executors=1)
    status, _ = _decide_with_outages(MasterplanStatus(), [down], _progress(succeeded=10, waves_complete=3))
    assert _condition(status, ConditionType.LLM_AVAILABLE) is None


def test_an_outage_condition_left_when_the_plan_finished_is_cleared():
    down = EndpointOutage(endpoint="e", last_error="HTTP 503", down_since=NOW, executors=1)
    during, _ = _decide_with_outages(MasterplanStatus(), [down])
    finished, _ = _decide_with_outages(during, [down], _progress(succeeded=10, waves_complete=3))
    condition = _condition(finished, ConditionType.LLM_AVAILABLE)
    assert (condition.status, condition.reason) == (ConditionStatus.TRUE, Reason.ENDPOINT_AVAILABLE)
