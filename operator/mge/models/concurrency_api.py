"""Response body of GET /api/v2/concurrency/status."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class ProviderRateLimits(BaseModel):
    """The provider's rate-limit headers as an executor last read them, refilled to the time of its report."""

    remaining_requests: int | None = Field(
        None, description="Requests left (x-ratelimit-remaining-requests)."
    )
    limit_requests: int | None = Field(None, description="Requests per window (x-ratelimit-limit-requests).")
    remaining_tokens: int | None = Field(None, description="Tokens left (x-ratelimit-remaining-tokens).")
    limit_tokens: int | None = Field(None, description="Tokens per window (x-ratelimit-limit-tokens).")
    retry_after_s: float | None = Field(
        None, description="While set, no call starts: the provider's last 429 asked for this pause."
    )


class ExecutorConcurrency(BaseModel):
    executor: str
    limit: int = Field(
        description="Limit on this executor's in-flight LLM calls: its share of the fleet's one estimate when the "
        "executors share one through Redis, else its own adaptive limit (`adjustments` say which)."
    )
    in_flight: int
    queue_size: int = Field(description="Atoms waiting for an LLM slot in this executor.")
    atoms_held: int = Field(0, description="Atoms this executor claimed and has not finished.")
    llm_p95_s: float | None = Field(None, description="p95 of its LLM calls over the last 5 minutes.")
    db_p95_s: float | None = Field(None, description="p95 of its Postgres queries over the last 5 minutes.")
    llm_requests: int = Field(0, description="LLM requests (retries included) in the last 5 minutes.")
    llm_errors: int = Field(0, description="Of those, failed ones (429, 5xx, timeouts, other errors).")
    adjustments: list[dict[str, Any]] = Field(
        description="Recent limit changes with their reasons, newest last."
    )
    llm_endpoint: str | None = Field(None, description="The LLM endpoint this executor calls.")
    llm_pool: str | None = Field(
        None,
        description="The LLM pool it serves (plans whose spec.llm names one endpoint and Secret); null: plans "
        "on the operator's default endpoint.",
    )
    llm_circuit: str = Field(
        "closed",
        description="Its circuit breaker: closed (calls flow), open (the endpoint is down: no new atoms are "
        "claimed until the next trial call), probing (one trial call is out).",
    )
    llm_last_error: str | None = Field(None, description="The endpoint's last failure, while not closed.")
    llm_down_since: datetime | None = Field(None, description="When the circuit opened, while not closed.")
    llm_rate_limits: ProviderRateLimits | None = Field(
        None, description="The provider's rate-limit headers; null when it sends none."
    )
    updated_at: datetime


class EndpointOutage(BaseModel):
    """An LLM endpoint that executors have stopped sending work to."""

    endpoint: str
    last_error: str
    down_since: datetime
    executors: int = Field(description="Executors that see it down.")


class ScalingDecision(BaseModel):
    desired: int
    actual: int
    reason: str
    decided_at: datetime


class ScalingSignals(BaseModel):
    """Where the operator's scaler reads LLM/DB latency and the error rate from, and whether it can."""

    source: str = Field(description="prometheus, or local (the executors' own reports when none is set).")
    healthy: bool = Field(description="False while the scaler holds the replicas because it cannot read.")
    reason: str = Field(
        description="Reason of the Masterplans' ExecutorScaling condition, e.g. MetricsAvailable."
    )
    message: str = Field(
        description="What the scaler does with these signals and, when blind, how to fix it."
    )
    since: datetime = Field(description="When source, health or reason last changed.")
    updated_at: datetime = Field(description="The scaler's latest pass.")


class PlanRampStatus(BaseModel):
    namespace: str
    name: str
    allowance: int = Field(description="Atoms of the plan all executors together may run at once now.")
    running: int = Field(description="Its atoms running now, on any executor.")
    started_at: datetime = Field(description="When the ramp (re)started: new work registered, or resumed.")


class ConcurrencyStatus(BaseModel):
    global_limit: int = Field(description="Sum of the executors' limits.")
    global_in_flight: int
    queue_depth: int = Field(description="Atoms waiting for a slot across executors.")
    executors: list[ExecutorConcurrency] = Field(description="Executors that reported in the last 2 minutes.")
    replicas: ScalingDecision | None = Field(description="The operator's latest executor-replica decision.")
    recent_decisions: list[ScalingDecision]
    signals: ScalingSignals | None = Field(
        None, description="Health of the scaler's latency/error signals; null until the operator scaled once."
    )
    ramps: list[PlanRampStatus] = Field(
        default_factory=list,
        description="Masterplans with work that are still ramping up fleet-wide, oldest ramp first.",
    )
