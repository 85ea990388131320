"""Gate S arithmetic: every MUST passes; SHOULD failures at most floor(5% x n)."""

import pytest

from mge.acceptance.gate import RequirementOutcome, TestStatus, evaluate_gate, should_failures_allowed
from mge.acceptance.requirements import Priority, Requirement, parse_requirements


def requirements(must: int, should: int) -> list[Requirement]:
    return [Requirement(f"MUST-{i}", Priority.MUST, f"m{i}", i) for i in range(1, must + 1)] + [
        Requirement(f"SHOULD-{i}", Priority.SHOULD, f"s{i}", 100 + i) for i in range(1, should + 1)
    ]


def outcomes(
    reqs: list[Requirement], failing: set[str], status: TestStatus = TestStatus.FAILED
) -> list[RequirementOutcome]:
    return [
        RequirementOutcome(r.id, r.priority, status if r.id in failing else TestStatus.PASSED) for r in reqs
    ]


@pytest.mark.parametrize(
    ("should", "allowed"), [(0, 0), (1, 0), (19, 0), (20, 1), (39, 1), (40, 2), (100, 5)]
)
def test_should_failures_allowed_is_floor_of_five_percent(should: int, allowed: int) -> None:
    assert should_failures_allowed(should) == allowed


def test_all_passing_passes_with_full_rates() -> None:
    reqs = requirements(3, 2)

    verdict = evaluate_gate(reqs, outcomes(reqs, set()))

    assert verdict.passed
    assert verdict.must_pass_rate == 100.0
    assert verdict.should_pass_rate == 100.0
    assert verdict.message == "Gate S passed: MUST 3/3, SHOULD 2/2 (0 SHOULD failures allowed)"


def test_one_failing_must_fails_the_gate_and_is_named() -> None:
    reqs = requirements(4, 0)

    verdict = evaluate_gate(reqs, outcomes(reqs, {"MUST-3"}, TestStatus.TIMEOUT))

    assert not verdict.passed
    assert verdict.failed_must == ("MUST-3",)
    assert verdict.must_pass_rate == 75.0
    assert verdict.should_pass_rate is None
    assert "MUST-3 (timeout)" in verdict.message


def test_with_few_should_requirements_none_may_fail() -> None:
    reqs = requirements(1, 10)

    verdict = evaluate_gate(reqs, outcomes(reqs, {"SHOULD-4"}))

    assert not verdict.passed
    assert verdict.should_failures_allowed == 0
    assert verdict.should_pass_rate == 90.0


def test_nineteen_of_twenty_should_is_exactly_95_percent_and_passes() -> None:
    reqs = requirements(1, 20)

    verdict = evaluate_gate(reqs, outcomes(reqs, {"SHOULD-7"}))

    assert verdict.passed
    assert verdict.should_pass_rate == 95.0
    assert verdict.failed_should == ("SHOULD-7",)
    assert "not passing: SHOULD-7 (failed)" in verdict.message


def test_two_of_twenty_should_failing_fails() -> None:
    reqs = requirements(0, 20)

    assert not evaluate_gate(reqs, outcomes(reqs, {"SHOULD-1", "SHOULD-2"})).passed


def test_requirement_without_outcome_counts_as_not_generated() -> None:
    reqs = requirements(2, 0)

    verdict = evaluate_gate(reqs, outcomes(reqs[:1], set()))

    assert not verdict.passed
    assert verdict.failed_must == ("MUST-2",)
    assert "MUST-2 (not_generated)" in verdict.message


def test_outcomes_of_unknown_requirements_are_ignored() -> None:
    reqs = requirements(1, 0)
    stale = RequirementOutcome("MUST-9", Priority.MUST, TestStatus.FAILED)

    assert evaluate_gate(reqs, [*outcomes(reqs, set()), stale]).passed


def test_no_requirements_fails_naming_the_parsers_problem() -> None:
    document = parse_requirements("## Requirements\n- the API lists todos\n- it deletes them\n")

    verdict = evaluate_gate(document.requirements, [], document.problems)

    assert not verdict.passed
    assert verdict.must_pass_rate is None
    assert verdict.should_pass_rate is None
    assert verdict.message.startswith("Gate S failed: no MUST or SHOULD requirement could be read")
    assert "line 1: no '### MUST' or '### SHOULD' section under '## Requirements'" in verdict.message


def test_an_empty_requirements_text_fails_the_gate_too() -> None:
    document = parse_requirements("")

    assert not evaluate_gate(document.requirements, [], document.problems).passed
