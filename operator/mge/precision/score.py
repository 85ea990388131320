"""Precision score: 50% spec conformance (MUST weighted 2x), 30% integration checks, 20% atom validation."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from mge.acceptance.gate import RequirementOutcome, TestStatus
from mge.acceptance.requirements import Priority, Requirement

SPEC_WEIGHT: Final = 0.5
INTEGRATION_WEIGHT: Final = 0.3
VALIDATION_WEIGHT: Final = 0.2
PRIORITY_WEIGHT: Final = {Priority.MUST: 2, Priority.SHOULD: 1}


@dataclass(frozen=True)
class IntegrationCheck:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class PrecisionScore:
    score: float  # each value in percent, 0-100
    spec: float
    integration: float
    validation: float


def precision_score(
    requirements: Sequence[Requirement],
    outcomes: Sequence[RequirementOutcome],
    integration: Sequence[IntegrationCheck],
    atoms_total: int,
    atoms_validated: int,
) -> PrecisionScore:
    """A component without evidence (no requirements, no checks, no atoms) scores 0: nothing was shown."""
    if atoms_total < 0 or not 0 <= atoms_validated <= atoms_total:
        raise ValueError(
            f"atoms_validated ({atoms_validated}) must be between 0 and atoms_total ({atoms_total})"
        )
    passed = {o.requirement_id for o in outcomes if o.status is TestStatus.PASSED}
    weight_total = sum(PRIORITY_WEIGHT[r.priority] for r in requirements)
    weight_passed = sum(PRIORITY_WEIGHT[r.priority] for r in requirements if r.id in passed)
    spec = _percent(weight_passed, weight_total)
    integration_rate = _percent(sum(1 for check in integration if check.passed), len(integration))
    validation = _percent(atoms_validated, atoms_total)
    score = SPEC_WEIGHT * spec + INTEGRATION_WEIGHT * integration_rate + VALIDATION_WEIGHT * validation
    return PrecisionScore(round(score, 2), spec, integration_rate, validation)


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0
