"""Decides a Masterplan's execution status (Progressing, Complete, Failed, counts, cost) from store progress."""

from datetime import datetime
from decimal import Decimal

from mge.cost.caps import BudgetLimits, BudgetState, budget_state, projected_total
from mge.models.conditions import ConditionStatus, ConditionType, Reason, find_condition
from mge.models.masterplan import MasterplanStatus
from mge.models.progress import Progress, Spend
from mge.plan.status import ConditionLog, KubeEvent, derive_phase, transition_events

_LISTED = 10


def _names(ids: tuple[str, ...]) -> str:
    return ", ".join(ids[:_LISTED]) + (f" and {len(ids) - _LISTED} more" if len(ids) > _LISTED else "")


def decide_execution(
    *,
    name: str,
    observed: MasterplanStatus,
    progress: Progress,
    spend: Spend,
    suspended: bool,
    generation: int,
    now: datetime,
) -> tuple[MasterplanStatus, list[KubeEvent]]:
    """Status after reading progress and spend; only meaningful once the plan is Planned=True."""
    status = observed.model_copy(deep=True)
    conditions = ConditionLog(status.conditions, generation, now)
    _apply_spend(name, status, conditions, progress, spend)
    status.atoms.total = progress.total
    status.atoms.pending = progress.pending + progress.ready
    status.atoms.running = progress.running
    status.atoms.succeeded = progress.succeeded
    status.atoms.failed = progress.failed
    status.waves.total = progress.waves_total
    status.waves.complete = progress.waves_complete
    status.progress = f"{progress.succeeded}/{progress.total}"
    started = progress.running + progress.succeeded + progress.failed > 0
    if started and status.started_at is None:
        status.started_at = now

    if progress.finished and progress.failed:
        status.completed_at = status.completed_at or now
        blocked = f"; blocked dependents: {_names(progress.blocked_atoms)}" if progress.blocked_atoms else ""
        message = (
            f"{progress.failed} atoms failed: {_names(progress.failed_atoms)}{blocked}. "
            f"{progress.succeeded}/{progress.total} succeeded. The executor logs give each atom's last error; "
            "fix the atom descriptions or the model and re-apply to retry them."
        )
        conditions.set(ConditionType.FAILED, ConditionStatus.TRUE, Reason.ATOMS_FAILED, message)
        conditions.set(
            ConditionType.PROGRESSING, ConditionStatus.FALSE, Reason.ATOMS_FAILED, "The run has ended."
        )
    elif progress.finished:
        status.completed_at = status.completed_at or now
        message = f"All {progress.total} atoms succeeded in {progress.waves_total} waves."
        conditions.set(ConditionType.COMPLETE, ConditionStatus.TRUE, Reason.ALL_ATOMS_SUCCEEDED, message)
        conditions.set(ConditionType.PROGRESSING, ConditionStatus.FALSE, Reason.ALL_ATOMS_SUCCEEDED, message)
    elif spend.exhausted:
        conditions.set(
            ConditionType.PROGRESSING,
            ConditionStatus.FALSE,
            Reason.HARD_CAP_REACHED,
            f"Waiting for a budget override with {progress.succeeded}/{progress.total} atoms done.",
        )
    elif suspended:
        conditions.set(
            ConditionType.PROGRESSING,
            ConditionStatus.FALSE,
            Reason.SUSPENDED_BY_USER,
            f"Suspended with {progress.succeeded}/{progress.total} atoms done; {progress.running} finishing.",
        )
    elif started:
        _clear_terminal(conditions)
        conditions.set(
            ConditionType.PROGRESSING,
            ConditionStatus.TRUE,
            Reason.ATOMS_RUNNING,
            f"{progress.succeeded}/{progress.total} atoms succeeded, {progress.running} running, "
            f"{progress.waves_complete}/{progress.waves_total} waves complete.",
        )
    status.phase = derive_phase(status)
    return status, transition_events(observed.conditions, status.conditions)


def _apply_spend(
    name: str, status: MasterplanStatus, conditions: ConditionLog, progress: Progress, spend: Spend
) -> None:
    """The cost block, the soft-cap condition and the hard-cap suspension, from the ledger's figures."""
    limits = BudgetLimits(spend.limit_usd, spend.soft_cap_percent, spend.hard_cap_percent)
    status.cost.current_usd = round(float(spend.spent_usd), 6)
    status.cost.reserved_usd = round(float(spend.reserved_usd), 6)
    status.cost.limit_usd = round(float(spend.limit_usd), 6)
    status.cost.percent_used = (
        round(float(spend.spent_usd / spend.limit_usd * 100), 2) if spend.limit_usd else 0.0
    )
    finished = progress.succeeded + progress.failed
    per_atom = Decimal(str(status.cost.estimated_usd)) / progress.total if progress.total else Decimal(0)
    projected = projected_total(spend.spent_usd, finished, progress.total - finished, per_atom)
    status.cost.projected_usd = round(float(projected), 6)
    state = budget_state(spend.spent_usd, spend.exhausted, limits)
    soft = find_condition(status.conditions, ConditionType.BUDGET_SOFT_CAP_EXCEEDED)
    if spend.spent_usd >= limits.soft_cap_usd:
        conditions.set(
            ConditionType.BUDGET_SOFT_CAP_EXCEEDED,
            ConditionStatus.TRUE,
            Reason.SOFT_CAP_EXCEEDED,
            f"Spent ${spend.spent_usd:.2f} of ${spend.limit_usd:.2f} ({status.cost.percent_used:.1f}%), past the "
            f"{spend.soft_cap_percent:.0f}% soft cap; projected total ${projected:.2f}.",
        )
    elif soft is not None:
        conditions.set(
            ConditionType.BUDGET_SOFT_CAP_EXCEEDED,
            ConditionStatus.FALSE,
            Reason.WITHIN_BUDGET,
            f"Spent ${spend.spent_usd:.2f} of ${spend.limit_usd:.2f}.",
        )
    suspended = find_condition(status.conditions, ConditionType.SUSPENDED)
    if state == BudgetState.HARD_CAP and spend.exhausted:
        suggested = max(spend.limit_usd * Decimal("1.5"), projected * Decimal("1.1")).quantize(Decimal(1))
        override = (
            f'{{"spec":{{"budget":{{"override":{{"limitUSD":{suggested},"approvedBy":"<your-username>",'
            f'"reason":"<why>"}}}}}}}}'
        )
        conditions.set(
            ConditionType.SUSPENDED,
            ConditionStatus.TRUE,
            Reason.HARD_CAP_REACHED,
            f"Spent ${spend.spent_usd:.2f} of ${spend.limit_usd:.2f} (hard cap {spend.hard_cap_percent:.0f}%, "
            f"${spend.reserved_usd:.2f} reserved by calls in flight); no new LLM calls start. Projected total "
            f"${projected:.2f}. To continue, an approver (RBAC verb approve on masterplans/budget) runs: "
            f"kubectl patch masterplan {name} --type merge -p '{override}'",
        )
    elif suspended is not None and suspended.reason == Reason.HARD_CAP_REACHED:
        who = f" by {spend.override_by}" if spend.override_by else ""
        conditions.set(
            ConditionType.SUSPENDED,
            ConditionStatus.FALSE,
            Reason.OVERRIDE_APPROVED,
            f"Budget raised to ${spend.limit_usd:.2f}{who}; the run continues.",
        )


def _clear_terminal(conditions: ConditionLog) -> None:
    """A re-applied plan runs again: an earlier Complete/Failed no longer describes it."""
    for type_ in (ConditionType.COMPLETE, ConditionType.FAILED):
        if (existing := find_condition(conditions.items, type_)) and existing.status == ConditionStatus.TRUE:
            conditions.set(type_, ConditionStatus.FALSE, Reason.ATOMS_RUNNING, "The plan is running again.")


def decide_store_unavailable(
    observed: MasterplanStatus, error: str, generation: int, now: datetime
) -> tuple[MasterplanStatus, list[KubeEvent]]:
    status = observed.model_copy(deep=True)
    conditions = ConditionLog(status.conditions, generation, now)
    conditions.set(
        ConditionType.PROGRESSING,
        ConditionStatus.FALSE,
        Reason.STORE_UNAVAILABLE,
        f"Cannot read progress from Postgres ({error}); retrying with backoff. Check the database "
        "Secret and that Postgres is reachable from the operator.",
    )
    status.phase = derive_phase(status)
    return status, transition_events(observed.conditions, status.conditions)
