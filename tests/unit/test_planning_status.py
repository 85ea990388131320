"""The planning decision: status, Waves and Events a Masterplan should have, from plain values."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from mge.cost.pricing import DEFAULT_PRICES
from mge.models.conditions import ConditionStatus, ConditionType, Reason, find_condition
from mge.models.masterplan import MasterplanStatus, Phase
from mge.models.wave import WaveSpec, WaveStatus
from mge.plan.errors import AtomsSourceNotFound, InvalidSpec
from mge.plan.status import decide_invalid_spec, decide_planning, decide_wave_status, status_patch, wave_name
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
