"""The DependenciesVerified condition decided from a plan check of the generated code."""

from dataclasses import dataclass

from mge.deps.compare import PlanCheck
from mge.models.conditions import ConditionStatus, ConditionType, Reason

# A condition message stays readable in `kubectl describe`; the full list is in `mge deps analyze`.
MAX_LISTED = 5


@dataclass(frozen=True)
class DependenciesDecision:
    type: ConditionType
    status: ConditionStatus
    reason: Reason
    message: str
    # dependsOn to add before a re-run, per atom (sorted): what the imports say the atom needs.
    additions: dict[str, list[str]]


def decide_dependencies(check: PlanCheck) -> DependenciesDecision:
    additions: dict[str, set[str]] = {}
    for edge in check.missing:
        additions.setdefault(edge.atom, set()).add(edge.needs)
    ordered = {atom: sorted(needs) for atom, needs in sorted(additions.items())}
    if not check.missing:
        extra = f"; {len(check.extra)} dependsOn entries have no import behind them" if check.extra else ""
        return DependenciesDecision(
            ConditionType.DEPENDENCIES_VERIFIED,
            ConditionStatus.TRUE,
            Reason.IMPORTS_MATCH_PLAN,
            f"Every import between generated files is ordered by dependsOn{extra}.",
            ordered,
        )
    listed = "; ".join(str(edge) for edge in check.missing[:MAX_LISTED])
    more = f" (and {len(check.missing) - MAX_LISTED} more)" if len(check.missing) > MAX_LISTED else ""
    fix = ", ".join(f"{atom}: [{', '.join(needs)}]" for atom, needs in list(ordered.items())[:MAX_LISTED])
    return DependenciesDecision(
        ConditionType.DEPENDENCIES_VERIFIED,
        ConditionStatus.FALSE,
        Reason.IMPORTS_MISSING_FROM_PLAN,
        f"{len(check.missing)} imports are not ordered by dependsOn: {listed}{more}. "
        f"Those atoms may have been generated before the code they use; add to dependsOn ({fix}) and re-run.",
        ordered,
    )
