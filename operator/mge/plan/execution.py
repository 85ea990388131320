"""Decides a Masterplan's execution status (Progressing, Complete, Failed, counts, cost) from store progress."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Protocol

from mge.cost.caps import (
    BudgetLimits,
    BudgetState,
    budget_state,
    json_number,
    suggested_limit,
    usd,
)
from mge.deps.status import DependenciesDecision
from mge.models.concurrency_api import EndpointOutage, ScalingSignals
from mge.models.conditions import ConditionStatus, ConditionType, Reason, find_condition
from mge.models.masterplan import DependenciesStatus, GateState, GateStatus, MasterplanStatus, PrecisionStatus
from mge.models.progress import Progress, Spend
from mge.plan.status import ConditionLog, KubeEvent, derive_phase, projected_cost, transition_events

_LISTED = 10
# The scaler records its signals every 30 s; ten missed passes mean it stopped (or was switched off).
SCALER_STALE_AFTER = timedelta(minutes=5)


def _names(ids: tuple[str, ...]) -> str:
    return ", ".join(ids[:_LISTED]) + (f" and {len(ids) - _LISTED} more" if len(ids) > _LISTED else "")


class GateOutcome(Protocol):
    """Gate S as mge.acceptance.gate.GateVerdict reports it (structural, so status stays decoupled)."""

    @property
    def passed(self) -> bool: ...
    @property
    def must_pass_rate(self) -> float | None: ...
    @property
    def should_pass_rate(self) -> float | None: ...
    @property
    def failed_must(self) -> tuple[str, ...]: ...
    @property
    def failed_should(self) -> tuple[str, ...]: ...
    @property
    def message(self) -> str: ...


class PrecisionFigures(Protocol):
    """mge.precision.score.PrecisionScore: percentages 0-100."""

    @property
    def score(self) -> float: ...
    @property
    def spec(self) -> float: ...
    @property
    def integration(self) -> float: ...
    @property
    def validation(self) -> float: ...


class LineProblem(Protocol):
    """mge.acceptance.requirements.RequirementProblem."""

    @property
    def line(self) -> int: ...
    @property
    def message(self) -> str: ...


@dataclass(frozen=True, slots=True)
class AcceptanceState:
    """What is known about a plan's acceptance tests: read from the store and the cluster by the shell."""

    enabled: bool
    requirements: int
    problems: Sequence[LineProblem] = ()
    verdict: GateOutcome | None = None
    score: PrecisionFigures | None = None
    # Waves whose acceptance Job has not reported yet.
    waves_pending: tuple[int, ...] = ()
    # A wave's Job that ended without results (message for the user); the gate cannot be decided then.
    job_failure: str | None = None


def decide_execution(
    *,
    name: str,
    observed: MasterplanStatus,
    progress: Progress,
    spend: Spend,
    suspended: bool,
    generation: int,
    now: datetime,
    acceptance: AcceptanceState | None = None,
    dependencies: tuple[DependenciesDecision, DependenciesStatus] | None = None,
    scaling: ScalingSignals | None = None,
    replay: str = "",
    outages: Sequence[EndpointOutage] = (),
) -> tuple[MasterplanStatus, list[KubeEvent]]:
    """Status after reading progress and spend; only meaningful once the plan is Planned=True.

    `dependencies`: a fresh check of the generated code's imports (once per generation, after the run).

    With `acceptance` (the operator runs acceptance Jobs) a plan whose atoms all succeeded is Complete only
    once Gate S passed; a failed gate is Failed with reason GateSFailed. Without it the gate is not evaluated.
    With `scaling` (the operator sizes the executors) a plan that is still executing carries ExecutorScaling.
    With `replay` (demo mode: the folder of recorded examples) the plan carries LLMReplay=True, so nobody
    takes its code, cost or gate for the work of a real model.
    `outages`: LLM endpoints executors stopped calling; a plan still running says so (LLMAvailable=False).
    """
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
    elif progress.finished and acceptance is not None and acceptance.enabled:
        _apply_gate(name, status, conditions, progress, acceptance, now)
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
    if acceptance is not None:
        _apply_requirements(status, conditions, acceptance)
    if dependencies is not None:
        decision, status.dependencies = dependencies
        conditions.set(decision.type, decision.status, decision.reason, decision.message)
    if scaling is not None and not progress.finished:
        _apply_scaling(conditions, scaling, now)
    # A finished plan is not told of an outage, but one it ended during is cleared.
    _apply_llm_availability(conditions, () if progress.finished else outages)
    if replay:
        conditions.set(
            ConditionType.LLM_REPLAY,
            ConditionStatus.TRUE,
            Reason.RECORDED_ANSWERS,
            f"Demo mode: executors replay the recorded answers of the examples in {replay}; no LLM is called. "
            "Code, costs (counted from the recorded tokens) and Gate S are those of the recording.",
        )
    status.phase = derive_phase(status)
    return status, transition_events(observed.conditions, status.conditions)


def _apply_llm_availability(conditions: ConditionLog, outages: Sequence[EndpointOutage]) -> None:
    """LLMAvailable=False while executors hold back for an endpoint that is down; True again once it answers.
    Never set on a plan that has not seen an outage: no news is the normal case."""
    if outages:
        message = "; ".join(
            f"LLM endpoint {o.endpoint} is failing since {o.down_since:%Y-%m-%d %H:%M:%S} UTC "
            f"(seen by {o.executors} executor(s)); last error: {o.last_error}"
            for o in outages
        )
        conditions.set(
            ConditionType.LLM_AVAILABLE,
            ConditionStatus.FALSE,
            Reason.ENDPOINT_DOWN,
            f"{message}. No atom fails for it: executors hand their atoms back, claim no new ones and send a "
            "trial call with backoff (2 s doubling up to 60 s), resuming by themselves once it answers. "
            "Check the provider's status and the executors' OPENAI_BASE_URL / OPENAI_API_KEY.",
        )
        return
    current = find_condition(conditions.items, ConditionType.LLM_AVAILABLE)
    if current is not None and current.status != ConditionStatus.TRUE:
        conditions.set(
            ConditionType.LLM_AVAILABLE,
            ConditionStatus.TRUE,
            Reason.ENDPOINT_AVAILABLE,
            "No executor reports the LLM endpoint down any more (it answers again, or this run has ended).",
        )


def _apply_scaling(conditions: ConditionLog, scaling: ScalingSignals, now: datetime) -> None:
    """Whether the executors running this plan are sized from live signals; a finished plan keeps its last."""
    if now - scaling.updated_at > SCALER_STALE_AFTER:
        conditions.set(
            ConditionType.EXECUTOR_SCALING,
            ConditionStatus.UNKNOWN,
            Reason.SCALER_NOT_REPORTING,
            f"The operator's executor scaling last reported at {scaling.updated_at:%Y-%m-%d %H:%M:%S} UTC; "
            "executor replicas are not being adjusted. Check the operator's log, and that executor.image "
            "is set (MGE_EXECUTOR_IMAGE), which switches executor scaling on.",
        )
        return
    conditions.set(
        ConditionType.EXECUTOR_SCALING,
        ConditionStatus.TRUE if scaling.healthy else ConditionStatus.FALSE,
        Reason(scaling.reason),
        scaling.message,
    )


_WRITE_REQUIREMENTS: Final = "Write bullets under '## Requirements' / '### MUST' / '### SHOULD' and re-apply."


def _problems(problems: Sequence[LineProblem]) -> str:
    shown = "; ".join(
        p.message if p.message.startswith("line ") else f"line {p.line}: {p.message}"
        for p in problems[:_LISTED]
    )
    more = f"; and {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""
    return f"spec.requirements: {shown}{more}"


def _apply_requirements(
    status: MasterplanStatus, conditions: ConditionLog, acceptance: AcceptanceState
) -> None:
    """GateSPassed before a verdict: disabled, unreadable requirements, or waiting for the tests."""
    if acceptance.verdict is not None:
        return
    if not acceptance.enabled:
        status.gate = GateStatus(status=GateState.DISABLED)
        conditions.set(
            ConditionType.GATE_S_PASSED,
            ConditionStatus.UNKNOWN,
            Reason.ACCEPTANCE_DISABLED,
            "Acceptance Jobs are disabled (Helm value acceptance.enabled=false): Gate S is not evaluated and "
            "Complete follows the atoms alone.",
        )
    elif acceptance.problems and acceptance.requirements == 0:
        conditions.set(
            ConditionType.GATE_S_PASSED,
            ConditionStatus.FALSE,
            Reason.INVALID_REQUIREMENTS,
            f"No requirement could be read: {_problems(acceptance.problems)}. {_WRITE_REQUIREMENTS}",
        )
    elif acceptance.job_failure is not None:
        conditions.set(
            ConditionType.GATE_S_PASSED,
            ConditionStatus.UNKNOWN,
            Reason.ACCEPTANCE_JOB_FAILED,
            acceptance.job_failure,
        )
    else:
        problems = f" Ignored: {_problems(acceptance.problems)}." if acceptance.problems else ""
        conditions.set(
            ConditionType.GATE_S_PASSED,
            ConditionStatus.UNKNOWN,
            Reason.AWAITING_ACCEPTANCE_TESTS,
            f"{acceptance.requirements} requirements; their acceptance tests run after their wave's atoms "
            f"succeed.{problems}",
        )


def _apply_gate(
    name: str,
    status: MasterplanStatus,
    conditions: ConditionLog,
    progress: Progress,
    acceptance: AcceptanceState,
    now: datetime,
) -> None:
    """All atoms succeeded: Complete only if Gate S passed; a failed gate fails the plan, naming requirements."""
    verdict = acceptance.verdict
    atoms = f"All {progress.total} atoms succeeded in {progress.waves_total} waves"
    if verdict is None:
        # A wave's tests are running (again): an earlier gate result no longer describes the plan.
        _clear_terminal(
            conditions,
            Reason.ACCEPTANCE_TESTS_RUNNING,
            "All atoms succeeded; acceptance tests are running again.",
        )
        status.gate = GateStatus(status=GateState.PENDING)
        waves = ", ".join(str(w) for w in acceptance.waves_pending)
        running = f" (waves {waves} pending)" if waves else ""
        conditions.set(
            ConditionType.PROGRESSING,
            ConditionStatus.TRUE,
            Reason.ACCEPTANCE_TESTS_RUNNING,
            f"{atoms}; acceptance tests are running{running}. Gate S is decided when every wave reported.",
        )
        return
    status.completed_at = status.completed_at or now
    status.gate = GateStatus(
        status=GateState.PASSED if verdict.passed else GateState.FAILED,
        must_pass_rate=verdict.must_pass_rate,
        should_pass_rate=verdict.should_pass_rate,
    )
    if acceptance.score is not None:
        status.precision = PrecisionStatus(
            score=acceptance.score.score,
            spec=acceptance.score.spec,
            integration=acceptance.score.integration,
            validation=acceptance.score.validation,
        )
    precision = f" Precision {acceptance.score.score:.1f}%." if acceptance.score is not None else ""
    problems = f" Ignored: {_problems(acceptance.problems)}." if acceptance.problems else ""
    if verdict.passed:
        conditions.set(
            ConditionType.GATE_S_PASSED,
            ConditionStatus.TRUE,
            Reason.ALL_REQUIREMENTS_PASSED,
            f"{verdict.message}{problems}",
        )
        message = f"{atoms}; Gate S passed.{precision}"
        conditions.set(ConditionType.COMPLETE, ConditionStatus.TRUE, Reason.ALL_REQUIREMENTS_PASSED, message)
        conditions.set(
            ConditionType.PROGRESSING, ConditionStatus.FALSE, Reason.ALL_REQUIREMENTS_PASSED, message
        )
        return
    failing = _names(verdict.failed_must + verdict.failed_should)
    reason = Reason.MUST_REQUIREMENT_FAILED if verdict.failed_must else Reason.SHOULD_REQUIREMENTS_FAILED
    message = f"Failing requirements: {failing}. {verdict.message}{problems}"
    if acceptance.requirements == 0:  # the gate's rule: nothing readable to test fails it, as in mge run
        failing, reason = "no readable requirement", Reason.INVALID_REQUIREMENTS
        message = f"No requirement could be read: {_problems(acceptance.problems)}. {_WRITE_REQUIREMENTS}"
    conditions.set(ConditionType.GATE_S_PASSED, ConditionStatus.FALSE, reason, message)
    conditions.set(
        ConditionType.FAILED,
        ConditionStatus.TRUE,
        Reason.GATE_S_FAILED,
        f"{atoms} but Gate S failed on {failing}.{precision} GET /api/v2/testing/results/"
        f"{status.masterplan_id or '<masterplanId>'} shows each test's output; fix the atoms or the "
        f"requirements and re-apply, or re-run a wave's tests with POST /api/v2/testing/run/<masterplanId>:<wave>.",
    )
    conditions.set(
        ConditionType.PROGRESSING, ConditionStatus.FALSE, Reason.GATE_S_FAILED, "The run has ended."
    )


def _apply_spend(
    name: str, status: MasterplanStatus, conditions: ConditionLog, progress: Progress, spend: Spend
) -> None:
    """The cost block, the soft-cap condition and the hard-cap suspension, from the ledger's figures."""
    limits = BudgetLimits(spend.limit_usd, spend.soft_cap_percent, spend.hard_cap_percent)
    status.cost.current_usd = round(float(spend.spent_usd), 6)
    status.cost.reserved_usd = round(float(spend.reserved_usd), 6)
    status.cost.limit_usd = round(float(spend.limit_usd), 6)
    status.cost.cache_saved_usd = round(float(spend.cache_saved_usd), 6)
    status.cost.percent_used = (
        round(float(spend.spent_usd / spend.limit_usd * 100), 2) if spend.limit_usd else 0.0
    )
    finished = progress.succeeded + progress.failed
    projected = projected_cost(spend.spent_usd, finished, progress.total, status.cost.estimated_usd)
    status.cost.projected_usd = round(float(projected), 6)
    state = budget_state(spend.spent_usd, spend.exhausted, limits)
    soft = find_condition(status.conditions, ConditionType.BUDGET_SOFT_CAP_EXCEEDED)
    if spend.spent_usd >= limits.soft_cap_usd:
        conditions.set(
            ConditionType.BUDGET_SOFT_CAP_EXCEEDED,
            ConditionStatus.TRUE,
            Reason.SOFT_CAP_EXCEEDED,
            f"Spent {usd(spend.spent_usd)} of {usd(spend.limit_usd)} ({status.cost.percent_used:.1f}%), past the "
            f"{spend.soft_cap_percent:.0f}% soft cap; projected total {usd(projected)}.",
        )
    elif soft is not None:
        conditions.set(
            ConditionType.BUDGET_SOFT_CAP_EXCEEDED,
            ConditionStatus.FALSE,
            Reason.WITHIN_BUDGET,
            f"Spent {usd(spend.spent_usd)} of {usd(spend.limit_usd)}.",
        )
    suspended = find_condition(status.conditions, ConditionType.SUSPENDED)
    if state == BudgetState.HARD_CAP and spend.exhausted:
        suggested = suggested_limit(spend.limit_usd, projected, spend.spent_usd + spend.reserved_usd)
        override = (
            f'{{"spec":{{"budget":{{"override":{{"limitUSD":{json_number(suggested)},"approvedBy":"<your-username>",'
            f'"reason":"<why>"}}}}}}}}'
        )
        conditions.set(
            ConditionType.SUSPENDED,
            ConditionStatus.TRUE,
            Reason.HARD_CAP_REACHED,
            f"Spent {usd(spend.spent_usd)} of {usd(spend.limit_usd)} (hard cap {spend.hard_cap_percent:.0f}%, "
            f"{usd(spend.reserved_usd)} reserved by calls in flight); no new LLM calls start. Projected total "
            f"{usd(projected)}. To continue, an approver (RBAC verb approve on masterplans/budget) runs: "
            f"kubectl patch masterplan {name} --type merge -p '{override}'",
        )
    elif suspended is not None and suspended.reason == Reason.HARD_CAP_REACHED:
        who = f" by {spend.override_by}" if spend.override_by else ""
        conditions.set(
            ConditionType.SUSPENDED,
            ConditionStatus.FALSE,
            Reason.OVERRIDE_APPROVED,
            f"Budget raised to {usd(spend.limit_usd)}{who}; the run continues.",
        )


def _clear_terminal(
    conditions: ConditionLog,
    reason: Reason = Reason.ATOMS_RUNNING,
    message: str = "The plan is running again.",
) -> None:
    """A re-applied plan (or a re-run of its tests) runs again: an earlier Complete/Failed no longer describes it."""
    for type_ in (ConditionType.COMPLETE, ConditionType.FAILED):
        if (existing := find_condition(conditions.items, type_)) and existing.status == ConditionStatus.TRUE:
            conditions.set(type_, ConditionStatus.FALSE, reason, message)


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
