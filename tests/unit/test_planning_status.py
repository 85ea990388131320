"""The planning decision: status, Waves and Events a Masterplan should have, from plain values."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from mge.cost.pricing import DEFAULT_PRICES
from mge.models.conditions import ConditionStatus, ConditionType, Reason, find_condition
from mge.models.masterplan import MasterplanStatus, Phase
from mge.models.progress import Progress, Spend, WaveProgress
from mge.models.wave import WaveSpec, WaveStatus
from mge.plan.errors import AtomsSourceNotFound, InvalidSpec
from mge.plan.execution import decide_execution
from mge.plan.status import (
    counted,
    decide_invalid_spec,
    decide_planning,
    decide_wave_progress,
    decide_wave_status,
    status_patch,
    wave_name,
)
from tests.builders import atom, spec

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _decide(plan_spec, observed=None, generation=1, now=NOW, atoms=None):
    return decide_planning(
        name="shop",
        spec=plan_spec,
        atoms=plan_spec.atoms if atoms is None else atoms,
        observed=observed or MasterplanStatus(),
        generation=generation,
        now=now,
        new_trace_id=lambda: "trace-1",
        count_tokens=lambda text: len(text.split()),
        prices=DEFAULT_PRICES,
    )


def _condition(status, type_):
    found = find_condition(status.conditions, type_)
    assert found is not None, f"no {type_} condition"
    return found


def test_valid_plan_creates_one_wave_per_level_and_reports_planned():
    outcome = _decide(spec(atom("a"), atom("b", "a"), atom("c", "a")))

    assert {name: w.atom_ids for name, w in outcome.waves.items()} == {
        "shop-wave-0": ["a"],
        "shop-wave-1": ["b", "c"],
    }
    planned = _condition(outcome.status, ConditionType.PLANNED)
    assert planned.status == ConditionStatus.TRUE
    assert "3 atoms in 2 waves" in planned.message
    assert outcome.status.phase == Phase.PLANNED
    assert (outcome.status.waves.total, outcome.status.atoms.total, outcome.status.atoms.pending) == (2, 3, 3)
    assert outcome.status.progress == "0/3"
    assert outcome.status.trace_id == "trace-1"
    assert outcome.status.observed_generation == 1


def test_cycle_sets_planned_false_with_reason_and_atoms_and_creates_no_waves():
    outcome = _decide(spec(atom("a", "b"), atom("b", "a")))

    planned = _condition(outcome.status, ConditionType.PLANNED)
    assert (planned.status, planned.reason) == (ConditionStatus.FALSE, Reason.DEPENDENCY_CYCLE)
    assert "a -> b -> a" in planned.message or "b -> a -> b" in planned.message
    assert outcome.waves == {}
    assert outcome.status.phase == Phase.INVALID
    assert [(e.type, e.reason) for e in outcome.events] == [
        ("Warning", "DependencyCycle"),
        ("Normal", "PlanInvalid"),
    ]


def test_two_atoms_writing_one_file_make_the_plan_invalid_naming_both_and_create_no_waves():
    same_file = atom("b").model_copy(update={"file": atom("a").file})

    outcome = _decide(spec(atom("a"), same_file))

    planned = _condition(outcome.status, ConditionType.PLANNED)
    assert (planned.status, planned.reason) == (ConditionStatus.FALSE, Reason.PLAN_INVALID)
    assert "atoms 'a' and 'b' both write 'src/a.py'" in planned.message
    assert outcome.waves == {}


def test_unknown_model_is_an_invalid_plan_not_a_zero_cost():
    outcome = _decide(spec(atom("a"), model="mystery-model"))

    planned = _condition(outcome.status, ConditionType.PLANNED)
    assert planned.reason == Reason.UNKNOWN_MODEL_PRICE
    assert "mystery-model" in planned.message


def test_missing_atoms_config_map_says_how_to_create_it():
    outcome = _decide(spec(atom("a")), atoms=AtomsSourceNotFound("plan-atoms", "atoms.yaml"))

    planned = _condition(outcome.status, ConditionType.PLANNED)
    assert planned.reason == Reason.ATOMS_SOURCE_NOT_FOUND
    assert "kubectl create configmap" in planned.message


def test_reconciling_the_same_spec_twice_changes_nothing():
    plan_spec = spec(atom("a"), atom("b", "a"))
    first = _decide(plan_spec)

    second = _decide(plan_spec, observed=first.status, now=NOW + timedelta(minutes=5))

    assert status_patch(first.status.to_kube(), second.status) == {}
    assert second.events == []
    assert second.waves == first.waves


def test_trace_id_survives_replanning():
    first = _decide(spec(atom("a")))

    second = _decide(spec(atom("a"), atom("b")), observed=first.status, generation=2)

    assert second.status.trace_id == first.status.trace_id


def test_fixing_a_cycle_flips_planned_and_moves_the_transition_time():
    broken = _decide(spec(atom("a", "b"), atom("b", "a")))
    later = NOW + timedelta(minutes=1)

    fixed = _decide(spec(atom("a"), atom("b", "a")), observed=broken.status, generation=2, now=later)

    planned = _condition(fixed.status, ConditionType.PLANNED)
    assert (planned.status, planned.last_transition_time, planned.observed_generation) == (
        ConditionStatus.TRUE,
        later,
        2,
    )
    assert [e.reason for e in fixed.events] == ["Planned", "AwaitingExecutors"]


def test_suspend_sets_suspended_by_user_with_the_resume_command():
    outcome = _decide(spec(atom("a"), suspend=True))

    suspended = _condition(outcome.status, ConditionType.SUSPENDED)
    assert (suspended.status, suspended.reason) == (ConditionStatus.TRUE, Reason.SUSPENDED_BY_USER)
    assert '"suspend":false' in suspended.message
    assert outcome.status.phase == Phase.SUSPENDED


def test_unsuspending_clears_the_condition():
    suspended = _decide(spec(atom("a"), suspend=True))

    resumed = _decide(spec(atom("a")), observed=suspended.status, generation=2)

    assert _condition(resumed.status, ConditionType.SUSPENDED).status == ConditionStatus.FALSE
    assert resumed.status.phase == Phase.PLANNED


def test_budget_override_becomes_the_effective_limit_in_status():
    plan_spec = spec(
        atom("a"), budget={"limitUSD": 50, "override": {"limitUSD": 80, "approvedBy": "x", "reason": "y"}}
    )

    assert _decide(plan_spec).status.cost.limit_usd == 80


def test_estimate_is_written_as_projected_cost():
    outcome = _decide(spec(atom("a", tokens=1000)))

    assert outcome.status.estimated_tokens > 1000
    assert Decimal(str(outcome.status.cost.projected_usd)) > 0


def test_invalid_spec_is_reported_without_a_crash():
    outcome = decide_invalid_spec(
        name="shop",
        error=InvalidSpec("spec.model: Field required"),
        observed=MasterplanStatus(),
        generation=3,
        now=NOW,
        new_trace_id=lambda: "t",
    )

    planned = _condition(outcome.status, ConditionType.PLANNED)
    assert (planned.reason, planned.observed_generation) == (Reason.INVALID_SPEC, 3)
    assert "spec.model" in planned.message


def test_long_masterplan_names_give_valid_unique_wave_names():
    long_a, long_b = "a" * 250 + "x", "a" * 250 + "y"

    names = {wave_name(long_a, 12), wave_name(long_b, 12)}

    assert len(names) == 2
    assert all(len(n) <= 253 and n.endswith("-wave-12") for n in names)


def test_first_wave_is_ready_and_later_waves_wait_for_dependencies():
    first = decide_wave_status(WaveSpec(masterplan="m", index=0, atom_ids=["a", "b"]), WaveStatus(), 1, NOW)
    later = decide_wave_status(WaveSpec(masterplan="m", index=2, atom_ids=["c"]), WaveStatus(), 1, NOW)

    assert first.atoms.total == 2
    assert _condition(first, ConditionType.PROGRESSING).reason == Reason.READY_TO_RUN
    assert _condition(later, ConditionType.PROGRESSING).reason == Reason.WAITING_FOR_DEPENDENCIES
    assert "waves 0-1" in _condition(later, ConditionType.PROGRESSING).message


def test_messages_count_in_english():
    assert (counted(1, "test"), counted(0, "test"), counted(2, "atom")) == ("1 test", "0 tests", "2 atoms")


def _tick(plan_spec, observed, *, running=0, succeeded=0, spent="0", suspended=False):
    """What the progress timer writes for the plan of `plan_spec` (3 atoms, 2 waves)."""
    total = len(plan_spec.atoms)
    progress = Progress(
        total=total,
        pending=0,
        ready=total - running - succeeded,
        running=running,
        succeeded=succeeded,
        failed=0,
        blocked=0,
        cost_usd=Decimal(spent),
        waves_total=2,
        waves_complete=1 if succeeded else 0,
    )
    spend = Spend(
        spent_usd=Decimal(spent),
        reserved_usd=Decimal(0),
        limit_usd=Decimal(plan_spec.budget.effective_limit_usd),
        soft_cap_percent=Decimal(70),
        hard_cap_percent=Decimal(100),
        exhausted=False,
    )
    status, _ = decide_execution(
        name="shop",
        observed=observed,
        progress=progress,
        spend=spend,
        suspended=suspended,
        generation=1,
        now=NOW,
    )
    return status


def test_a_resume_after_a_restart_writes_nothing_the_progress_timer_wrote():
    for stage in (
        {"running": 1, "succeeded": 1, "spent": "0.000317"},
        {"succeeded": 1, "spent": "0.000317", "suspended": True},
        {"succeeded": 3, "spent": "0.4"},
    ):
        plan_spec = spec(atom("a"), atom("b", "a"), atom("c", "a"))
        if stage.get("suspended"):
            plan_spec = plan_spec.model_copy(update={"suspend": True})
        ticked = _tick(plan_spec, _decide(plan_spec).status, **stage)

        resumed = _decide(plan_spec, observed=ticked)

        assert status_patch(ticked.to_kube(), resumed.status) == {}, stage
        assert resumed.events == []


def test_a_resumed_wave_keeps_the_progress_the_timer_wrote():
    wave = WaveSpec(masterplan="shop", index=1, atom_ids=["b", "c"])
    initial = decide_wave_status(wave, WaveStatus(), 1, NOW)
    running = decide_wave_progress(initial, WaveProgress(1, 2, 1, 0, 1, Decimal("0.1")), NOW)

    resumed = decide_wave_status(wave, running, 1, NOW)

    assert status_patch(running.to_kube(), resumed) == {}
