"""Decides what a Masterplan's status and Waves should be after planning (pure; the controller applies it)."""

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Final, Literal, Protocol

from mge.cost.caps import projected_total
from mge.cost.pricing import ModelPrice, UnknownModelPrice, price_for
from mge.models.base import KubeModel
from mge.models.conditions import (
    WARNING_REASONS,
    Condition,
    ConditionStatus,
    ConditionType,
    Reason,
    find_condition,
    set_condition,
)
from mge.models.masterplan import Atom, MasterplanSpec, MasterplanStatus, Phase
from mge.models.progress import WaveProgress
from mge.models.wave import WavePhase, WaveSpec, WaveStatus, WaveTests
from mge.plan.dag import Plan, plan_dag
from mge.plan.errors import PlanError
from mge.plan.estimate import estimate_plan
from mge.plan.files import check_files

MAX_NAME_LENGTH: Final = 253
EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True, slots=True)
class KubeEvent:
    type: EventType
    reason: str
    message: str


@dataclass(slots=True)
class PlanningOutcome:
    """Desired state: the status to write, the Waves that must exist (by name), the Events to post."""

    status: MasterplanStatus
    waves: dict[str, WaveSpec] = field(default_factory=dict)
    events: list[KubeEvent] = field(default_factory=list)
    plan: Plan | None = None


def counted(count: int, noun: str) -> str:
    """ "1 test", "2 tests": messages read as English whatever the count."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def wave_name(masterplan: str, index: int) -> str:
    """Stable child name; long Masterplan names are cut and suffixed with a hash so names stay unique."""
    suffix = f"-wave-{index}"
    if len(masterplan) + len(suffix) <= MAX_NAME_LENGTH:
        return masterplan + suffix
    digest = hashlib.sha256(masterplan.encode()).hexdigest()[:8]
    return f"{masterplan[: MAX_NAME_LENGTH - len(suffix) - 9]}-{digest}{suffix}"


class ConditionLog:
    """Condition setter bound to one status, generation and time."""

    def __init__(self, conditions: list[Condition], generation: int, now: datetime) -> None:
        self.items = conditions
        self.generation = generation
        self.now = now

    def set(self, type_: ConditionType, status: ConditionStatus, reason: Reason, message: str) -> None:
        set_condition(
            self.items,
            type_=type_,
            status=status,
            reason=reason,
            message=message,
            generation=self.generation,
            now=self.now,
        )


def projected_cost(spent_usd: Decimal, finished: int, total: int, estimated_usd: float) -> Decimal:
    """status.cost.projectedUSD, the same for planning and for progress: a re-plan or an operator restart
    that changes nothing writes nothing."""
    finished = min(finished, total)
    per_atom = Decimal(str(estimated_usd)) / total if total else Decimal(0)
    return projected_total(spent_usd, finished, total - finished, per_atom)


def transition_events(before: Sequence[Condition], after: Sequence[Condition]) -> list[KubeEvent]:
    """One Event per condition whose status or reason changed: none on resync, no storms on retries.

    A condition that went to False with a Warning reason and then Failed=True are both Warnings. Two conditions
    that changed for the same reason with the same message (Complete=True and Progressing=False when a run
    ends) are one Event: the same line twice in `kubectl describe`, and an API call per plan for nothing.
    """
    previous = {c.type: (c.status, c.reason) for c in before}
    events: list[KubeEvent] = []
    for condition in after:
        if previous.get(condition.type) == (condition.status, condition.reason):
            continue
        warning = condition.reason in WARNING_REASONS or (
            condition.type == ConditionType.FAILED and condition.status == ConditionStatus.TRUE
        )
        event = KubeEvent("Warning" if warning else "Normal", condition.reason, condition.message)
        if event not in events:
            events.append(event)
    return events


def decide_llm_configured(
    status: MasterplanStatus,
    *,
    pool: str | None,
    problem: tuple[str, str] | None,
    generation: int,
    now: datetime,
) -> None:
    """LLMConfigured on a plan with spec.llm: True once its Secret was read (the key copied for its executor
    pool), else False with the problem's (reason, message). A plan without spec.llm has no such condition."""
    if pool is None:
        status.conditions = [c for c in status.conditions if c.type != ConditionType.LLM_CONFIGURED]
        return
    conditions = ConditionLog(status.conditions, generation, now)
    if problem is None:
        conditions.set(
            ConditionType.LLM_CONFIGURED,
            ConditionStatus.TRUE,
            Reason.CREDENTIALS_READ,
            f"calls go to spec.llm's endpoint with the key from its Secret (executor pool {pool})",
        )
    else:
        reason, message = problem
        conditions.set(ConditionType.LLM_CONFIGURED, ConditionStatus.FALSE, Reason(reason), message)


def decide_planning(
    *,
    name: str,
    spec: MasterplanSpec,
    atoms: Sequence[Atom] | PlanError,
    observed: MasterplanStatus,
    generation: int,
    now: datetime,
    new_trace_id: Callable[[], str],
    count_tokens: Callable[[str], int],
    prices: Mapping[str, ModelPrice],
) -> PlanningOutcome:
    """Plan the atoms and describe the result as status + waves; invalid plans become conditions, not crashes."""
    status = observed.model_copy(deep=True)
    status.trace_id = status.trace_id or new_trace_id()
    status.observed_generation = generation
    status.cost.limit_usd = spec.budget.effective_limit_usd
    conditions = ConditionLog(status.conditions, generation, now)
    outcome = PlanningOutcome(status=status)

    try:
        if isinstance(atoms, PlanError):
            raise atoms
        plan = plan_dag((atom.id, atom.depends_on) for atom in atoms)
        check_files((atom.id, atom.file) for atom in atoms)
        price = price_for(spec.model, prices)
    except (PlanError, UnknownModelPrice) as error:
        reason = error.reason if isinstance(error, PlanError) else Reason.UNKNOWN_MODEL_PRICE
        return _invalid(name, str(error), reason, status, conditions, observed.conditions)

    estimate = estimate_plan(atoms, count_tokens, price)
    outcome.plan = plan
    outcome.waves = {
        wave_name(name, index): WaveSpec(masterplan=name, index=index, atom_ids=list(wave))
        for index, wave in enumerate(plan.waves)
    }
    status.waves.total = len(plan.waves)
    status.atoms.total = len(plan.ids)
    if status.atoms.succeeded + status.atoms.failed + status.atoms.running == 0:
        status.atoms.pending = len(plan.ids)
    status.progress = f"{status.atoms.succeeded}/{status.atoms.total}"
    status.critical_path_length = len(plan.critical_path)
    status.estimated_tokens = estimate.total_tokens
    status.cost.estimated_usd = round(float(estimate.cost_usd), 6)
    finished = status.atoms.succeeded + status.atoms.failed
    projected = projected_cost(
        Decimal(str(status.cost.current_usd)), finished, len(plan.ids), status.cost.estimated_usd
    )
    status.cost.projected_usd = round(float(projected), 6)
    conditions.set(
        ConditionType.PLANNED,
        ConditionStatus.TRUE,
        Reason.PLANNED,
        f"{counted(len(plan.ids), 'atom')} in {counted(len(plan.waves), 'wave')}; "
        f"critical path {counted(len(plan.critical_path), 'atom')}; "
        f"estimated {estimate.total_tokens} tokens, ${estimate.cost_usd:.2f} of ${spec.budget.effective_limit_usd:.2f}.",
    )
    if spec.suspend:
        conditions.set(
            ConditionType.SUSPENDED,
            ConditionStatus.TRUE,
            Reason.SUSPENDED_BY_USER,
            f"No new atoms start. To resume: kubectl patch masterplan {name} --type merge "
            '-p \'{"spec":{"suspend":false}}\'',
        )
    elif (suspended := find_condition(status.conditions, ConditionType.SUSPENDED)) is not None and (
        suspended.reason == Reason.SUSPENDED_BY_USER
    ):
        # Only the user's own suspension is lifted here; a hard-cap suspension ends with an override.
        conditions.set(
            ConditionType.SUSPENDED, ConditionStatus.FALSE, Reason.NOT_SUSPENDED, "Running normally."
        )
    if (
        status.atoms.succeeded + status.atoms.failed < status.atoms.total
        and not _held_by_budget(status)
        and not _progress_known(status, generation)
    ):
        conditions.set(
            ConditionType.PROGRESSING,
            ConditionStatus.FALSE,
            Reason.AWAITING_EXECUTORS,
            f"{counted(len(plan.waves[0]), 'atom')} ready; waiting for an executor to claim them.",
        )
    status.phase = derive_phase(status)
    outcome.events = transition_events(observed.conditions, status.conditions)
    return outcome


def decide_invalid_spec(
    *,
    name: str,
    error: PlanError,
    observed: MasterplanStatus,
    generation: int,
    now: datetime,
    new_trace_id: Callable[[], str],
) -> PlanningOutcome:
    """A spec the operator cannot even read: say so in conditions; never crash-loop."""
    status = observed.model_copy(deep=True)
    status.trace_id = status.trace_id or new_trace_id()
    status.observed_generation = generation
    conditions = ConditionLog(status.conditions, generation, now)
    return _invalid(name, str(error), error.reason, status, conditions, observed.conditions)


def _invalid(
    name: str,
    problem: str,
    reason: Reason,
    status: MasterplanStatus,
    conditions: ConditionLog,
    before: Sequence[Condition],
) -> PlanningOutcome:
    conditions.set(
        ConditionType.PLANNED,
        ConditionStatus.FALSE,
        reason,
        f"Masterplan {name} cannot run: {problem}.",
    )
    conditions.set(
        ConditionType.PROGRESSING,
        ConditionStatus.FALSE,
        Reason.PLAN_INVALID,
        "Nothing runs until the plan is valid; fix the spec and re-apply.",
    )
    status.phase = derive_phase(status)
    return PlanningOutcome(status=status, events=transition_events(before, status.conditions))


def _progress_known(status: MasterplanStatus, generation: int) -> bool:
    """Progressing already describes this generation's run (the progress timer keeps it): a resume after an
    operator restart leaves it alone instead of writing AwaitingExecutors over it."""
    progressing = find_condition(status.conditions, ConditionType.PROGRESSING)
    return (
        progressing is not None
        and progressing.observed_generation == generation
        and progressing.reason != Reason.STORE_UNAVAILABLE
    )


def _held_by_budget(status: MasterplanStatus) -> bool:
    suspended = find_condition(status.conditions, ConditionType.SUSPENDED)
    return (
        suspended is not None and suspended.reason == Reason.HARD_CAP_REACHED and suspended.status == "True"
    )


def derive_phase(status: MasterplanStatus) -> Phase:
    """One word for `kubectl get`, derived from the conditions (never stored independently)."""

    def is_true(type_: ConditionType) -> bool:
        condition = find_condition(status.conditions, type_)
        return condition is not None and condition.status == ConditionStatus.TRUE

    def is_false(type_: ConditionType) -> bool:
        condition = find_condition(status.conditions, type_)
        return condition is not None and condition.status == ConditionStatus.FALSE

    if is_true(ConditionType.FAILED):
        return Phase.FAILED
    if is_true(ConditionType.COMPLETE):
        return Phase.SUCCEEDED
    if is_false(ConditionType.PLANNED):
        return Phase.INVALID
    if is_true(ConditionType.SUSPENDED):
        return Phase.SUSPENDED
    if is_true(ConditionType.PROGRESSING):
        return Phase.RUNNING
    if is_true(ConditionType.PLANNED):
        return Phase.PLANNED
    return Phase.PENDING


def status_patch(observed: Mapping[str, object], desired: KubeModel) -> dict[str, object]:
    """Top-level status keys whose value changes; empty when the reconcile is a no-op."""
    after = desired.to_kube()
    before = observed
    return {key: value for key, value in after.items() if before.get(key) != value}


def decide_wave_status(spec: WaveSpec, observed: WaveStatus, generation: int, now: datetime) -> WaveStatus:
    """A new or resumed Wave: count its atoms and say whether it can start or waits for earlier waves."""
    status = observed.model_copy(deep=True)
    status.observed_generation = generation
    status.atoms.total = len(spec.atom_ids)
    if status.atoms.succeeded + status.atoms.failed + status.atoms.running == 0:
        status.atoms.pending = len(spec.atom_ids)
    if spec.index == 0:
        reason, message = (
            Reason.READY_TO_RUN,
            "No dependencies: atoms start as soon as an executor claims them.",
        )
    else:
        reason, message = (
            Reason.WAITING_FOR_DEPENDENCIES,
            f"Atoms start as their dependencies in waves 0-{spec.index - 1} succeed.",
        )
    progressing = find_condition(status.conditions, ConditionType.PROGRESSING)
    known = progressing is not None and progressing.observed_generation == generation
    # `known`: the progress timer already keeps this generation's condition (an operator restart changes nothing).
    if status.atoms.succeeded + status.atoms.failed < status.atoms.total and not known:
        set_condition(
            status.conditions,
            type_=ConditionType.PROGRESSING,
            status=ConditionStatus.FALSE,
            reason=reason,
            message=message,
            generation=generation,
            now=now,
        )
    return status


def decide_wave_progress(observed: WaveStatus, wave: WaveProgress, now: datetime) -> WaveStatus:
    """A Wave's counts, cost and phase from its atoms' progress."""
    status = observed.model_copy(deep=True)
    status.atoms.total = wave.total
    status.atoms.succeeded = wave.succeeded
    status.atoms.failed = wave.failed
    status.atoms.running = wave.running
    status.atoms.pending = wave.total - wave.succeeded - wave.failed - wave.running
    status.cost_usd = round(float(wave.cost_usd), 6)
    if wave.succeeded == wave.total:
        status.phase = WavePhase.SUCCEEDED
        reason, message = Reason.ALL_ATOMS_SUCCEEDED, f"All {wave.total} atoms succeeded."
    elif wave.succeeded + wave.failed == wave.total:
        status.phase = WavePhase.FAILED
        reason, message = Reason.ATOMS_FAILED, f"{wave.failed} of {wave.total} atoms failed."
    elif wave.running or wave.succeeded or wave.failed:
        status.phase = WavePhase.RUNNING
        reason, message = (
            Reason.ATOMS_RUNNING,
            f"{wave.succeeded}/{wave.total} atoms succeeded, {wave.running} running.",
        )
    else:
        return status
    set_condition(
        status.conditions,
        type_=ConditionType.PROGRESSING,
        status=ConditionStatus.TRUE if status.phase == WavePhase.RUNNING else ConditionStatus.FALSE,
        reason=reason,
        message=message,
        generation=status.observed_generation,
        now=now,
    )
    return status


class TestOutcome(Protocol):
    """mge.acceptance.gate.RequirementOutcome, structurally: priority MUST/SHOULD, status passed/failed/..."""

    @property
    def requirement_id(self) -> str: ...
    @property
    def priority(self) -> str: ...
    @property
    def status(self) -> str: ...


def _rate(passed: int, total: int) -> float | None:
    return round(passed / total * 100, 2) if total else None


def decide_wave_tests(observed: WaveStatus, outcomes: Sequence[TestOutcome]) -> WaveStatus:
    """The Wave's acceptance summary from the latest result of each of its tests."""
    status = observed.model_copy(deep=True)
    must = [o for o in outcomes if o.priority == "MUST"]
    should = [o for o in outcomes if o.priority == "SHOULD"]
    passed = sum(1 for o in outcomes if o.status == "passed")
    status.tests = WaveTests(
        total=len(outcomes),
        passed=passed,
        failed=len(outcomes) - passed,
        must_pass_rate=_rate(sum(1 for o in must if o.status == "passed"), len(must)),
        should_pass_rate=_rate(sum(1 for o in should if o.status == "passed"), len(should)),
    )
    return status
