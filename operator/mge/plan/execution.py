"""Decides a Masterplan's execution status (Progressing, Complete, Failed, counts, cost) from store progress."""

from datetime import datetime

from mge.models.conditions import ConditionStatus, ConditionType, Reason, find_condition
from mge.models.masterplan import MasterplanStatus
from mge.models.progress import Progress
from mge.plan.status import ConditionLog, KubeEvent, derive_phase, transition_events

_LISTED = 10


def _names(ids: tuple[str, ...]) -> str:
    return ", ".join(ids[:_LISTED]) + (f" and {len(ids) - _LISTED} more" if len(ids) > _LISTED else "")


def decide_execution(
    *,
    name: str,
    observed: MasterplanStatus,
    progress: Progress,
    suspended: bool,
    generation: int,
    now: datetime,
) -> tuple[MasterplanStatus, list[KubeEvent]]:
    """Status after reading progress; only meaningful once the plan is Planned=True."""
    status = observed.model_copy(deep=True)
    conditions = ConditionLog(status.conditions, generation, now)
    status.atoms.total = progress.total
    status.atoms.pending = progress.pending + progress.ready
    status.atoms.running = progress.running
    status.atoms.succeeded = progress.succeeded
    status.atoms.failed = progress.failed
    status.waves.total = progress.waves_total
    status.waves.complete = progress.waves_complete
    status.progress = f"{progress.succeeded}/{progress.total}"
    status.cost.current_usd = round(float(progress.cost_usd), 6)
    limit = status.cost.limit_usd
    status.cost.percent_used = round(status.cost.current_usd / limit * 100, 2) if limit else 0.0
    started = progress.running + progress.succeeded + progress.failed > 0
    if started and status.started_at is None:
        status.started_at = now

    if progress.finished and progress.failed:
        status.completed_at = status.completed_at or now
        blocked = f"; blocked dependents: {_names(progress.blocked_atoms)}" if progress.blocked_atoms else ""
        message = (
            f"{progress.failed} atoms failed: {_names(progress.failed_atoms)}{blocked}. "
            f"{progress.succeeded}/{progress.total} succeeded. See each atom's last error with "
            f"`mge trace {name}`; fix the atom descriptions or the model and re-apply to retry them."
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
