"""Precision score: 50% spec (MUST weighted 2x SHOULD) + 30% integration + 20% validation."""

import pytest

from mge.acceptance.gate import RequirementOutcome, TestStatus
from mge.acceptance.requirements import Priority, Requirement
from mge.precision.score import IntegrationCheck, precision_score

MUST = [Requirement(f"MUST-{i}", Priority.MUST, "m", i) for i in (1, 2)]
SHOULD = [Requirement("SHOULD-1", Priority.SHOULD, "s", 9)]
CHECKS = [IntegrationCheck("python-compiles", True, ""), IntegrationCheck("python-imports", False, "x")]


def passed(*ids: str) -> list[RequirementOutcome]:
    by_id = {r.id: r for r in MUST + SHOULD}
    return [RequirementOutcome(i, by_id[i].priority, TestStatus.PASSED) for i in ids]


def test_everything_passing_scores_100() -> None:
    score = precision_score(MUST + SHOULD, passed("MUST-1", "MUST-2", "SHOULD-1"), CHECKS[:1], 4, 4)

    assert (score.score, score.spec, score.integration, score.validation) == (100.0, 100.0, 100.0, 100.0)


def test_must_counts_twice_as_much_as_should() -> None:
    only_should = precision_score(MUST + SHOULD, passed("SHOULD-1"), CHECKS, 4, 4)
    one_must = precision_score(MUST + SHOULD, passed("MUST-1"), CHECKS, 4, 4)

    assert only_should.spec == 20.0  # 1 / (2 + 2 + 1)
    assert one_must.spec == 40.0  # 2 / 5


def test_components_are_weighted_50_30_20() -> None:
    score = precision_score(MUST + SHOULD, passed("MUST-1", "MUST-2"), CHECKS, 5, 4)

    assert (score.spec, score.integration, score.validation) == (80.0, 50.0, 80.0)
    assert score.score == pytest.approx(0.5 * 80 + 0.3 * 50 + 0.2 * 80)


def test_failed_outcomes_do_not_count() -> None:
    outcomes = [RequirementOutcome("MUST-1", Priority.MUST, TestStatus.ERROR)]

    assert precision_score(MUST, outcomes, CHECKS, 1, 1).spec == 0.0


def test_components_without_evidence_score_zero() -> None:
    score = precision_score([], [], [], 0, 0)

    assert (score.score, score.spec, score.integration, score.validation) == (0.0, 0.0, 0.0, 0.0)


def test_more_validated_atoms_than_atoms_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"atoms_validated \(3\) must be between 0 and atoms_total \(2\)"):
        precision_score([], [], [], 2, 3)
