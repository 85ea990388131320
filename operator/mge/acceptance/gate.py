"""Gate S: every MUST requirement passes and at least 95% of SHOULD requirements do."""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from mge.acceptance.requirements import Priority, Requirement, RequirementProblem, no_requirements_message

# Percent of SHOULD requirements that may fail; as an integer so 19/20 is exactly 95%.
SHOULD_FAILURE_PERCENT: Final = 5


class TestStatus(StrEnum):
    __test__ = False  # not a pytest test class

    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    TIMEOUT = "timeout"
    NOT_GENERATED = "not_generated"


@dataclass(frozen=True)
class RequirementOutcome:
    requirement_id: str
    priority: Priority
    status: TestStatus


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    must_pass_rate: float | None  # percent; None when there is no MUST requirement
    should_pass_rate: float | None
    failed_must: tuple[str, ...]
    failed_should: tuple[str, ...]
    should_failures_allowed: int
    message: str


def should_failures_allowed(should_total: int) -> int:
    """floor(5% x n): below 20 SHOULD requirements none may fail, 20-39 allow one, and so on."""
    return should_total * SHOULD_FAILURE_PERCENT // 100


def evaluate_gate(
    requirements: Sequence[Requirement],
    outcomes: Sequence[RequirementOutcome],
    problems: Sequence[RequirementProblem] = (),
) -> GateVerdict:
    """A requirement without an outcome counts as not generated, which fails it. No requirement at all fails
    the gate too, naming the parser's `problems`: nothing was shown to work (local runs and the cluster alike)."""
    status_of = {outcome.requirement_id: outcome.status for outcome in outcomes}
    failed: dict[Priority, list[str]] = {Priority.MUST: [], Priority.SHOULD: []}
    totals = dict.fromkeys(Priority, 0)
    details: list[str] = []
    for requirement in requirements:
        totals[requirement.priority] += 1
        status = status_of.get(requirement.id, TestStatus.NOT_GENERATED)
        if status is not TestStatus.PASSED:
            failed[requirement.priority].append(requirement.id)
            details.append(f"{requirement.id} ({status})")
    allowed = should_failures_allowed(totals[Priority.SHOULD])
    passed = bool(requirements) and not failed[Priority.MUST] and len(failed[Priority.SHOULD]) <= allowed
    must_rate = _rate(totals[Priority.MUST], len(failed[Priority.MUST]))
    should_rate = _rate(totals[Priority.SHOULD], len(failed[Priority.SHOULD]))
    summary = (
        f"MUST {totals[Priority.MUST] - len(failed[Priority.MUST])}/{totals[Priority.MUST]}, "
        f"SHOULD {totals[Priority.SHOULD] - len(failed[Priority.SHOULD])}/{totals[Priority.SHOULD]} "
        f"({allowed} SHOULD failure{'s' if allowed != 1 else ''} allowed)"
    )
    if not requirements:
        message = f"Gate S failed: {no_requirements_message(problems)}"
    elif passed:
        message = f"Gate S passed: {summary}" + (f"; not passing: {', '.join(details)}" if details else "")
    else:
        message = f"Gate S failed: {summary}; not passing: {', '.join(details)}"
    return GateVerdict(
        passed=passed,
        must_pass_rate=must_rate,
        should_pass_rate=should_rate,
        failed_must=tuple(failed[Priority.MUST]),
        failed_should=tuple(failed[Priority.SHOULD]),
        should_failures_allowed=allowed,
        message=message,
    )


def _rate(total: int, failures: int) -> float | None:
    if total == 0:
        return None
    return round(100.0 * (total - failures) / total, 2)
