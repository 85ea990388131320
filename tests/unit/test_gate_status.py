"""Gate S and precision in Masterplan/Wave status: Complete only if the gate passes, failures name requirements."""

from dataclasses import dataclass
from datetime import UTC, datetime

from mge.acceptance.requirements import parse_requirements
from mge.models.conditions import ConditionType, find_condition
from mge.models.masterplan import GateState, MasterplanStatus, Phase
from mge.models.wave import WaveStatus
from mge.plan.execution import AcceptanceState, decide_execution
from mge.plan.status import decide_wave_tests
from tests.unit.test_execution_status import _progress, _spend

NOW = datetime(2026, 1, 1, tzinfo=UTC)
FINISHED = _progress(succeeded=10, waves_complete=3)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    must_pass_rate: float | None
    should_pass_rate: float | None
    failed_must: tuple[str, ...] = ()
    failed_should: tuple[str, ...] = ()
    should_failures_allowed: int = 0
    message: str = ""


@dataclass(frozen=True)
class Score:
    score: float
    spec: float
    integration: float
    validation: float


@dataclass(frozen=True)
class Problem:
    line: int
    message: str


@dataclass(frozen=True)
class Outcome:
    requirement_id: str
    priority: str
    status: str


def _decide(acceptance, progress=FINISHED, observed=None):
    return decide_execution(
        name="shop",
        observed=observed or MasterplanStatus(masterplan_id="id-1"),
        progress=progress,
        spend=_spend(),
        suspended=False,
        generation=1,
        now=NOW,
        acceptance=acceptance,
    )


def _cond(status, type_):
    condition = find_condition(status.conditions, type_)
    return (condition.status, condition.reason, condition.message) if condition else None


def test_finished_atoms_wait_for_the_acceptance_tests_before_complete():
    status, _ = _decide(AcceptanceState(enabled=True, requirements=4, waves_pending=(1, 2)))

    assert _cond(status, ConditionType.COMPLETE) is None
    progressing = _cond(status, ConditionType.PROGRESSING)
    assert progressing[:2] == ("True", "AcceptanceTestsRunning")
    assert "waves 1, 2 pending" in progressing[2]
    assert _cond(status, ConditionType.GATE_S_PASSED)[:2] == ("Unknown", "AwaitingAcceptanceTests")
    assert (status.gate.status, status.phase, status.completed_at) == (GateState.PENDING, Phase.RUNNING, None)


def test_passed_gate_completes_the_plan_with_rates_and_precision():
    verdict = Verdict(True, 100.0, 95.0, message="4/4 MUST and 19/20 SHOULD passed")
    score = Score(score=97.5, spec=98.0, integration=100.0, validation=92.0)

    status, events = _decide(AcceptanceState(enabled=True, requirements=24, verdict=verdict, score=score))

    assert _cond(status, ConditionType.COMPLETE)[:2] == ("True", "AllRequirementsPassed")
    assert "Precision 97.5%" in _cond(status, ConditionType.COMPLETE)[2]
    assert _cond(status, ConditionType.GATE_S_PASSED) == (
        "True",
        "AllRequirementsPassed",
        "4/4 MUST and 19/20 SHOULD passed",
    )
    assert (status.gate.status, status.gate.must_pass_rate, status.gate.should_pass_rate) == (
        GateState.PASSED,
        100.0,
        95.0,
    )
    assert status.precision.model_dump() == {
        "score": 97.5,
        "spec": 98.0,
        "integration": 100.0,
        "validation": 92.0,
    }
    assert (status.phase, status.completed_at) == (Phase.SUCCEEDED, NOW)
    assert {e.reason for e in events} >= {"AllRequirementsPassed"}


def test_failed_must_requirement_fails_the_plan_naming_it():
    verdict = Verdict(False, 50.0, 100.0, failed_must=("MUST-2",), message="1/2 MUST passed")

    status, events = _decide(AcceptanceState(enabled=True, requirements=3, verdict=verdict))

    gate = _cond(status, ConditionType.GATE_S_PASSED)
    assert gate[:2] == ("False", "MustRequirementFailed")
    assert "MUST-2" in gate[2]
    failed = _cond(status, ConditionType.FAILED)
    assert failed[:2] == ("True", "GateSFailed")
    assert "MUST-2" in failed[2]
    assert "/api/v2/testing/results/id-1" in failed[2]
    assert _cond(status, ConditionType.COMPLETE) is None
    assert (status.gate.status, status.phase, status.precision) == (GateState.FAILED, Phase.FAILED, None)
    assert {e.type for e in events if e.reason == "GateSFailed"} == {"Warning"}


def test_only_should_failures_have_their_own_reason():
    verdict = Verdict(False, 100.0, 80.0, failed_should=("SHOULD-1", "SHOULD-3"), message="SHOULD 80% < 95%")

    status, _ = _decide(AcceptanceState(enabled=True, requirements=7, verdict=verdict))

    gate = _cond(status, ConditionType.GATE_S_PASSED)
    assert gate[:2] == ("False", "ShouldRequirementsFailed")
    assert "SHOULD-1, SHOULD-3" in gate[2]


def test_unreadable_requirements_point_at_the_line():
    problems = (Problem(7, "line 7: '### MUST' has no bullet items"),)

    status, events = _decide(
        AcceptanceState(enabled=True, requirements=0, problems=problems), progress=_progress(running=1)
    )

    gate = _cond(status, ConditionType.GATE_S_PASSED)
    assert gate[:2] == ("False", "InvalidRequirements")
    assert "line 7: '### MUST' has no bullet items" in gate[2]
    assert [e.type for e in events if e.reason == "InvalidRequirements"] == ["Warning"]


def test_parse_problems_next_to_readable_requirements_are_reported_not_fatal():
    problems = (Problem(12, "nested bullet under no requirement"),)

    status, _ = _decide(
        AcceptanceState(enabled=True, requirements=3, problems=problems), progress=_progress(running=1)
    )

    gate = _cond(status, ConditionType.GATE_S_PASSED)
    assert gate[:2] == ("Unknown", "AwaitingAcceptanceTests")
    assert "line 12: nested bullet under no requirement" in gate[2]


def test_disabled_acceptance_completes_on_atoms_and_says_the_gate_is_not_evaluated():
    status, _ = _decide(AcceptanceState(enabled=False, requirements=3))

    assert _cond(status, ConditionType.COMPLETE)[:2] == ("True", "AllAtomsSucceeded")
    assert _cond(status, ConditionType.GATE_S_PASSED)[:2] == ("Unknown", "AcceptanceDisabled")


def test_failed_job_is_reported_on_the_gate_condition():
    state = AcceptanceState(
        enabled=True, requirements=3, job_failure="Job shop-accept-w0-r0 failed: OOMKilled"
    )

    status, _ = _decide(state)

    assert _cond(status, ConditionType.GATE_S_PASSED) == (
        "Unknown",
        "AcceptanceJobFailed",
        "Job shop-accept-w0-r0 failed: OOMKilled",
    )


def test_repeating_the_decision_changes_nothing():
    verdict = Verdict(False, 50.0, None, failed_must=("MUST-1",), message="m")
    state = AcceptanceState(enabled=True, requirements=2, verdict=verdict)
    first, _ = _decide(state)

    second, events = _decide(state, observed=first)

    assert second == first
    assert events == []


def test_wave_summary_counts_tests_and_rates_per_priority():
    outcomes = [
        Outcome("MUST-1", "MUST", "passed"),
        Outcome("MUST-2", "MUST", "timeout"),
        Outcome("SHOULD-1", "SHOULD", "passed"),
    ]

    tests = decide_wave_tests(WaveStatus(), outcomes).tests

    assert (tests.total, tests.passed, tests.failed) == (3, 2, 1)
    assert (tests.must_pass_rate, tests.should_pass_rate) == (50.0, 100.0)


def test_wave_without_tests_has_no_rates():
    tests = decide_wave_tests(WaveStatus(), []).tests

    assert (tests.total, tests.must_pass_rate, tests.should_pass_rate) == (0, None, None)


def test_rerunning_tests_after_a_failed_gate_reopens_the_plan():
    verdict = Verdict(False, 0.0, None, failed_must=("MUST-1",), message="m")
    failed, _ = _decide(AcceptanceState(enabled=True, requirements=1, verdict=verdict))

    rerun, _ = _decide(AcceptanceState(enabled=True, requirements=1, waves_pending=(0,)), observed=failed)

    assert _cond(rerun, ConditionType.FAILED)[0] == "False"
    assert _cond(rerun, ConditionType.PROGRESSING)[:2] == ("True", "AcceptanceTestsRunning")
    assert rerun.gate.status == GateState.PENDING


def test_an_empty_must_section_from_the_real_parser_is_reported_at_its_line():
    document = parse_requirements("## Requirements\n### MUST\n\n### SHOULD\nsome text\n")
    state = AcceptanceState(enabled=True, requirements=len(document.requirements), problems=document.problems)

    status, _ = _decide(state, progress=_progress(running=1))

    gate = _cond(status, ConditionType.GATE_S_PASSED)
    assert gate[:2] == ("False", "InvalidRequirements")
    assert "line 2: the MUST section has no bullet items" in gate[2]
    assert "line 5:" in gate[2]


def test_disabled_acceptance_shows_gate_disabled_not_pending():
    status, _ = _decide(AcceptanceState(enabled=False, requirements=3))

    assert status.gate.status == GateState.DISABLED
    assert status.to_kube()["gate"]["status"] == "Disabled"


def test_tests_running_again_after_a_passed_gate_do_not_claim_atoms_are_running():
    verdict = Verdict(True, 100.0, 100.0, message="m")
    passed, _ = _decide(AcceptanceState(enabled=True, requirements=1, verdict=verdict))

    rerun, _ = _decide(AcceptanceState(enabled=True, requirements=1, waves_pending=(0,)), observed=passed)

    assert _cond(rerun, ConditionType.COMPLETE)[:2] == ("False", "AcceptanceTestsRunning")


def test_a_gate_decided_on_no_requirement_is_invalid_requirements_not_a_should_failure():
    document = parse_requirements("## Requirements\n- the API lists todos\n")
    verdict = Verdict(False, None, None, message="Gate S failed: no MUST or SHOULD requirement could be read")
    state = AcceptanceState(enabled=True, requirements=0, problems=document.problems, verdict=verdict)

    status, _ = _decide(state)

    gate = _cond(status, ConditionType.GATE_S_PASSED)
    assert gate[:2] == ("False", "InvalidRequirements")
    assert "line 1: no '### MUST' or '### SHOULD' section" in gate[2]
    assert status.phase == Phase.FAILED
