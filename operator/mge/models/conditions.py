"""Condition types, reasons and the setter that keeps lastTransitionTime honest (Kubernetes API conventions)."""

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from mge.models.base import KubeModel


class ConditionType(StrEnum):
    PLANNED = "Planned"
    PROGRESSING = "Progressing"
    BUDGET_SOFT_CAP_EXCEEDED = "BudgetSoftCapExceeded"
    SUSPENDED = "Suspended"
    GATE_S_PASSED = "GateSPassed"
    COMPLETE = "Complete"
    FAILED = "Failed"
    DEPENDENCIES_VERIFIED = "DependenciesVerified"
    EXECUTOR_SCALING = "ExecutorScaling"
    LLM_REPLAY = "LLMReplay"
    LLM_AVAILABLE = "LLMAvailable"
    LLM_CONFIGURED = "LLMConfigured"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(StrEnum):
    """Every reason the operator writes; CamelCase, specific enough to act on."""

    PLANNED = "Planned"
    EMPTY_PLAN = "EmptyPlan"
    DEPENDENCY_CYCLE = "DependencyCycle"
    UNKNOWN_DEPENDENCY = "UnknownDependency"
    SELF_DEPENDENCY = "SelfDependency"
    DUPLICATE_ATOM_ID = "DuplicateAtomId"
    INVALID_SPEC = "InvalidSpec"
    UNKNOWN_MODEL_PRICE = "UnknownModelPrice"
    ATOMS_SOURCE_NOT_FOUND = "AtomsSourceNotFound"
    CONTEXT_SOURCE_NOT_FOUND = "ContextSourceNotFound"
    AWAITING_EXECUTORS = "AwaitingExecutors"
    SUSPENDED_BY_USER = "SuspendedByUser"
    NOT_SUSPENDED = "NotSuspended"
    PLAN_INVALID = "PlanInvalid"
    NO_FAILURES = "NoFailures"
    WAITING_FOR_DEPENDENCIES = "WaitingForDependencies"
    READY_TO_RUN = "ReadyToRun"
    ATOMS_RUNNING = "AtomsRunning"
    ALL_ATOMS_SUCCEEDED = "AllAtomsSucceeded"
    ATOMS_FAILED = "AtomsFailed"
    STORE_UNAVAILABLE = "StoreUnavailable"
    SOFT_CAP_EXCEEDED = "SoftCapExceeded"
    WITHIN_BUDGET = "WithinBudget"
    HARD_CAP_REACHED = "HardCapReached"
    OVERRIDE_APPROVED = "OverrideApproved"
    OVERRIDE_REJECTED = "OverrideRejected"
    IMPORTS_MATCH_PLAN = "ImportsMatchPlan"
    IMPORTS_MISSING_FROM_PLAN = "ImportsMissingFromPlan"
    DEPENDENCY_CHECK_UNAVAILABLE = "DependencyCheckUnavailable"
    AWAITING_ACCEPTANCE_TESTS = "AwaitingAcceptanceTests"
    ACCEPTANCE_TESTS_RUNNING = "AcceptanceTestsRunning"
    ACCEPTANCE_DISABLED = "AcceptanceDisabled"
    ACCEPTANCE_JOB_FAILED = "AcceptanceJobFailed"
    ALL_REQUIREMENTS_PASSED = "AllRequirementsPassed"
    MUST_REQUIREMENT_FAILED = "MustRequirementFailed"
    SHOULD_REQUIREMENTS_FAILED = "ShouldRequirementsFailed"
    GATE_S_FAILED = "GateSFailed"
    INVALID_REQUIREMENTS = "InvalidRequirements"
    METRICS_AVAILABLE = "MetricsAvailable"
    METRICS_MISSING = "MetricsMissing"
    PROMETHEUS_UNAVAILABLE = "PrometheusUnavailable"
    LOCAL_STATISTICS = "LocalStatistics"
    SCALER_NOT_REPORTING = "ScalerNotReporting"
    RECORDED_ANSWERS = "RecordedAnswers"
    ENDPOINT_DOWN = "EndpointDown"
    ENDPOINT_AVAILABLE = "EndpointAvailable"
    CREDENTIALS_READ = "CredentialsRead"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_FORBIDDEN = "SecretForbidden"
    SECRET_KEY_MISSING = "SecretKeyMissing"
    BASE_URL_MISSING = "BaseURLMissing"


# Reasons that mean "blocked or broken": their Events are of type Warning.
WARNING_REASONS: frozenset[str] = frozenset(
    {
        Reason.EMPTY_PLAN,
        Reason.DEPENDENCY_CYCLE,
        Reason.UNKNOWN_DEPENDENCY,
        Reason.SELF_DEPENDENCY,
        Reason.DUPLICATE_ATOM_ID,
        Reason.INVALID_SPEC,
        Reason.UNKNOWN_MODEL_PRICE,
        Reason.ATOMS_SOURCE_NOT_FOUND,
        Reason.CONTEXT_SOURCE_NOT_FOUND,
        Reason.STORE_UNAVAILABLE,
        Reason.SOFT_CAP_EXCEEDED,
        Reason.HARD_CAP_REACHED,
        Reason.OVERRIDE_REJECTED,
        Reason.IMPORTS_MISSING_FROM_PLAN,
        Reason.DEPENDENCY_CHECK_UNAVAILABLE,
        Reason.ACCEPTANCE_JOB_FAILED,
        Reason.MUST_REQUIREMENT_FAILED,
        Reason.SHOULD_REQUIREMENTS_FAILED,
        Reason.GATE_S_FAILED,
        Reason.INVALID_REQUIREMENTS,
        Reason.PROMETHEUS_UNAVAILABLE,
        Reason.ENDPOINT_DOWN,
        Reason.SCALER_NOT_REPORTING,
        Reason.SECRET_NOT_FOUND,
        Reason.SECRET_FORBIDDEN,
        Reason.SECRET_KEY_MISSING,
        Reason.BASE_URL_MISSING,
    }
)


class Condition(KubeModel):
    """One observation about a resource, as `kubectl describe` shows it."""

    type: str = Field(description="Condition type, e.g. Planned, Suspended, GateSPassed.", max_length=316)
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        description="CamelCase reason for the last transition, e.g. DependencyCycle.",
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
    )
    message: str = Field(
        "", description="What happened and, when blocked, how to unblock it.", max_length=32768
    )
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: int = Field(
        0, ge=0, description="metadata.generation this condition was computed from."
    )


def set_condition(
    conditions: list[Condition],
    *,
    type_: ConditionType,
    status: ConditionStatus,
    reason: Reason,
    message: str,
    generation: int,
    now: datetime,
) -> bool:
    """Upsert a condition in place; lastTransitionTime moves only when status flips. Returns True if anything changed."""
    for index, existing in enumerate(conditions):
        if existing.type != type_:
            continue
        updated = existing.model_copy(
            update={
                "status": status,
                "reason": reason.value,
                "message": message,
                "observed_generation": generation,
                "last_transition_time": now if existing.status != status else existing.last_transition_time,
            }
        )
        if updated == existing:
            return False
        conditions[index] = updated
        return True
    conditions.append(
        Condition(
            type=type_.value,
            status=status,
            reason=reason.value,
            message=message,
            last_transition_time=now,
            observed_generation=generation,
        )
    )
    return True


def find_condition(conditions: list[Condition], type_: ConditionType) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
